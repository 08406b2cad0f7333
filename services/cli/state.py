"""What the CLI remembers between runs: the last conversation, per gateway address and
caller.

``gensearch ask`` continues it by default. The file is ``<state dir>/last_conversation``,
a small JSON object ``{gateway address: conversation id}`` (a conversation only exists on
the server that created it, and only its owner sees it). With an API key the entry's name
is the address and a digest of the key, ``"127.0.0.1:50050 key:1f2e…"`` (never the key):
keyed by address alone, one user's ``ask`` continued another's conversation (NOT_FOUND,
"gone") and the first user's own was forgotten.

One state location for every command (``up --demo`` writes it, ``ask`` reads it):
``--state-dir``, else ``$GENSEARCH_STATE_DIR``, else ``~/.gensearch``. Not the data dir:
that belongs to the server ``up`` runs (``--data-dir``, ``GENSEARCH_DATA_DIR``), which a
client command neither knows nor needs; mixing the two once made ``ask`` after
``up --demo`` start a new conversation. Addresses are normalised (``localhost`` is
``127.0.0.1``), so ``--address localhost:50050`` finds what the demo remembered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

FILE_NAME = "last_conversation"


def state_dir(explicit: str | None = None) -> Path:
    chosen = explicit or os.environ.get("GENSEARCH_STATE_DIR") or str(Path.home() / ".gensearch")
    return Path(chosen).expanduser()


def address_key(address: str) -> str:
    """``address`` as the CLI compares gateway addresses: the loopback spellings are one."""
    host, sep, port = address.rpartition(":")
    if sep and host.lower() in ("localhost", "[::1]", "0.0.0.0"):
        return f"127.0.0.1:{port}"
    return address


def caller_key(address: str, api_key: str = "") -> str:
    """The entry of ``address`` for the caller holding ``api_key`` ("": the address alone,
    as with no keys configured)."""
    if not api_key:
        return address_key(address)
    digest = hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]
    return f"{address_key(address)} key:{digest}"


class LastConversation:
    def __init__(self, directory: str | None, address: str, api_key: str = "") -> None:
        self.path = state_dir(directory) / FILE_NAME
        self.address = caller_key(address, api_key)

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}

    def get(self) -> str:
        return self._load().get(self.address, "")

    def set(self, conversation_id: str) -> None:
        data = self._load()
        data[self.address] = conversation_id
        self._save(data)

    def clear(self, conversation_id: str | None = None) -> None:
        """Forget the remembered conversation (only if it is ``conversation_id``, when given)."""
        data = self._load()
        if self.address in data and conversation_id in (None, data[self.address]):
            del data[self.address]
            self._save(data)

    def _save(self, data: dict[str, str]) -> None:
        # Remembering is a convenience: a read-only home must not fail the command.
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            tmp.replace(self.path)
