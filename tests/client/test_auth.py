"""API keys as the services read them (services/common/auth.py): ``authorization: Bearer``.

A real memory service with keys configured, on the real Redis; the client talks to it
directly, as the README's "memory API on its own" does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gensearch.client import AsyncGensearch, errors

from services.devlaunch.redis_server import RedisProcess
from services.memory.__main__ import build_server
from services.memory.settings import MemorySettings
from tests.retrieval.conftest import MakeRetrieval
from tests.support.redis_patience import PATIENT_REDIS


@pytest.fixture
async def memory_address(redis_server: RedisProcess) -> AsyncIterator[str]:
    settings = MemorySettings(
        redis_url=redis_server.url,
        metrics_port=None,
        api_keys="alice:ka,bob:kb",
        **PATIENT_REDIS,  # not a Redis outage test: a reply late on a loaded machine is no error
    )
    server = await build_server(settings, port=0)
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop(0)


async def test_the_key_decides_who_you_are(memory_address: str) -> None:
    async with AsyncGensearch(memory_address, api_key="ka") as alice:
        mine = await alice.conversations.create("Trip to Lisbon")
        assert mine.user == "alice"
        await alice.conversations.add_interaction(
            mine.id, "Best time to visit?", "Spring.", additional_info={"hits": ["doc-12"]}
        )
        (turn,) = await alice.conversations.interactions(mine.id)
        assert turn.additional_info == {"hits": ["doc-12"]}
    async with AsyncGensearch(memory_address, api_key="kb") as bob:
        with pytest.raises(errors.ConversationNotFoundError):  # another user's: not found
            await bob.conversations.get(mine.id)
        # Nor can another user write to it.
        with pytest.raises(errors.ConversationNotFoundError):
            await bob.conversations.update(mine.id, name="mine now")
        with pytest.raises(errors.ConversationNotFoundError):
            await bob.conversations.update_summary(mine.id, "x", through_interaction_id=turn.id)
        with pytest.raises(errors.InteractionNotFoundError):
            await bob.conversations.update_interaction(turn.id, {"hits": []})
    async with AsyncGensearch(memory_address, api_key="ka") as alice:
        assert (await alice.conversations.get(mine.id)).name == "Trip to Lisbon"
        (turn,) = await alice.conversations.interactions(mine.id)
        assert turn.additional_info == {"hits": ["doc-12"]} and turn.update_time is None
    async with AsyncGensearch(memory_address, api_key="wrong") as stranger:
        with pytest.raises(errors.InvalidApiKeyError) as caught:
            await stranger.conversations.list()
        assert isinstance(caught.value, errors.UnauthenticatedError)
    async with AsyncGensearch(memory_address, api_key="") as nobody:
        with pytest.raises(errors.MissingCredentialsError):
            await nobody.conversations.list()


async def test_a_role_too_low_raises_role_required(make_retrieval: MakeRetrieval) -> None:
    """docs/python-client.md#errors: a call the key's role may not make raises
    ``RoleRequiredError``, also a ``PermissionDeniedError``, saying the role it needs."""
    retrieval = await make_retrieval(api_keys="rita@acme/reader:kr,ann@acme/admin:ka")
    address = f"127.0.0.1:{retrieval.server.port}"
    async with AsyncGensearch(address, api_key="ka") as admin:
        books = await admin.collections.create("RoleBooks", {"title": "text"})
        await books.data.insert({"title": "Dune"})
    async with AsyncGensearch(address, api_key="kr") as reader:
        assert await reader.collections.get("RoleBooks").count() == 1  # a read: allowed
        with pytest.raises(errors.RoleRequiredError) as caught:
            await reader.collections.delete("RoleBooks")
        assert isinstance(caught.value, errors.PermissionDeniedError)
        assert caught.value.metadata == {"required_role": "admin", "role": "reader"}
        with pytest.raises(errors.RoleRequiredError) as caught:
            await reader.collections.get("RoleBooks").data.insert({"title": "Emma"})
        assert caught.value.metadata["required_role"] == "writer"
