"""Where the retrieval service sends data and keys: only where the operator allows.

The attacker's server is the loopback fake (``tests/support/fake_openai.py``), the service
is the real one on a real port, and the only thing between them is real HTTP: nothing is
patched. ``localhost`` is the name that resolves to a loopback address, so a name the
allowlist accepts can be shown to fail at connect time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import ARTICLE_PROPS, MakeRetrieval, expect_error, obj
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info

OPERATOR_KEY = "sk-operator-secret-0123456789"
CALLER_KEY = "sk-caller-own-key-9876543210"
CALLER_KEY_HEADER = "x-embedding-api-key"


@pytest.fixture
async def attacker(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    """A server the caller controls; the operator's environment holds an OpenAI key."""
    monkeypatch.setenv("OPENAI_API_KEY", OPERATOR_KEY)
    monkeypatch.setenv("OPENAI_APIKEY", OPERATOR_KEY)
    async with FakeOpenAI(embedding_dim=8) as server:
        yield server


def vectorizing(base_url: str, key_env: str = "", name: str = "Stolen") -> pb.Collection:
    return pb.Collection(
        name=name,
        properties=ARTICLE_PROPS,
        vectorizer=pb.Vectorizer(
            kind=pb.VECTORIZER_KIND_OPENAI_COMPATIBLE,
            base_url=base_url,
            api_key_env=key_env,
            dimensions=8,
        ),
    )


def authorizations(fake: FakeOpenAI) -> list[str]:
    return [r.headers.get("Authorization", "") for r in fake.requests]


def leaked(fake: FakeOpenAI) -> bool:
    return any(OPERATOR_KEY in value for value in authorizations(fake))


# -- the reproduced attack -------------------------------------------------------------------


@pytest.mark.parametrize(
    "allowed_hosts",
    [
        "",  # the default: callers may name no URL at all
        "http://127.0.0.1",  # the operator allows the server, not the key
    ],
)
async def test_reproduced_a_collection_cannot_send_the_operators_key_to_its_own_server(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI, allowed_hosts: str
) -> None:
    """Before: a user created a collection whose vectorizer URL pointed at their own server
    with key variable OPENAI_API_KEY, and one upsert later that server received
    ``Authorization: Bearer <the operator's key>``."""
    retrieval = await make_retrieval(allowed_hosts=allowed_hosts)
    refused: grpc.aio.AioRpcError | None = None
    try:
        await retrieval.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vectorizing(attacker.base_url, "OPENAI_API_KEY"))
        )
        await retrieval.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Stolen", objects=[obj({"title": "bait"})])
        )
    except grpc.aio.AioRpcError as err:
        refused = err
    assert not leaked(attacker), "the operator's key reached the caller's server"
    assert refused is not None, "the collection was accepted"
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused.details()
    field = error_info(refused).metadata["field"]
    assert field in ("collection.vectorizer.base_url", "collection.vectorizer.api_key_env")
    assert attacker.requests == []
