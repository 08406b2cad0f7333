"""How SDK clients are built and shared: per endpoint and timeouts (never per key), bounded,
one transport; the key per request; no Authorization header without a key."""

from __future__ import annotations

from services.common.openai_api import NO_KEY, OpenAIClients, authorized
from tests.support.fake_openai import FakeOpenAI


async def test_clients_are_cached_per_endpoint_and_timeouts_and_bounded() -> None:
    clients = OpenAIClients(max_clients=2)
    try:
        a = clients.get("http://127.0.0.1:1/v1", connect_timeout=5, read_timeout=60)
        assert clients.get("http://127.0.0.1:1/v1", connect_timeout=5, read_timeout=60) is a
        assert clients.get("http://127.0.0.1:1/v1", connect_timeout=5, read_timeout=30) is not a
        assert a.max_retries == 0  # the one retry policy is ours
        clients.get("http://127.0.0.1:2/v1", connect_timeout=5, read_timeout=60)
        # A third endpoint evicts the least recently used one.
        assert clients.get("http://127.0.0.1:1/v1", connect_timeout=5, read_timeout=60) is not a
    finally:
        await clients.close()


async def test_the_key_travels_per_request_and_a_missing_key_sends_no_header() -> None:
    clients = OpenAIClients()
    try:
        async with FakeOpenAI() as fake:
            base = clients.get(fake.base_url, connect_timeout=5, read_timeout=60)
            for key in ("sk-first-key-0123456789", None, "sk-second-key-9876543210"):
                client, headers = authorized(base, key)
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
                )
                sent = fake.chat_requests[-1].headers
                if key is None:
                    assert "Authorization" not in sent
                else:
                    assert sent["Authorization"] == f"Bearer {key}"
                assert NO_KEY not in str(sent)
            # One cached client for all three calls: keys never key the cache.
            assert clients.get(fake.base_url, connect_timeout=5, read_timeout=60) is base
            assert base.api_key == NO_KEY
    finally:
        await clients.close()


async def test_the_operators_org_and_project_ids_never_travel(monkeypatch) -> None:
    # The SDK reads these from the environment; they must not reach an endpoint a
    # collection or a request names.
    monkeypatch.setenv("OPENAI_ORG_ID", "org-operator-secret")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-operator-secret")
    clients = OpenAIClients()
    try:
        async with FakeOpenAI() as fake:
            client, headers = authorized(
                clients.get(fake.base_url, connect_timeout=5, read_timeout=60), "sk-caller-key-1234"
            )
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
            )
            sent = {k.lower(): v for k, v in fake.chat_requests[-1].headers.items()}
            assert "openai-organization" not in sent
            assert "openai-project" not in sent
            assert "operator-secret" not in str(sent)
    finally:
        await clients.close()
