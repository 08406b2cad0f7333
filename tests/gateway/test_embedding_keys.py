"""The caller's key for a collection's embeddings endpoint, through the gateway: it reaches
the retrieval service (and so the collection's URL, which the caller names beside it), and
the keys meant for LLM providers never do."""

from __future__ import annotations

from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2

from tests.gateway.conftest import ALICE, Stack, StackFactory, create_embedded, fake_provider
from tests.support.fake_openai import FakeOpenAI

EMBEDDING_KEY = "sk-alice-embeddings-0123456789"
LLM_KEY = "sk-alice-llm-provider-9876543210"


async def test_only_the_embedding_key_travels_to_the_embeddings_endpoint(stack: Stack) -> None:
    await create_embedded(stack)  # at the fake's URL: a caller's URL the operator allowed
    props = struct_pb2.Struct()
    props.update({"title": "Dune"})
    metadata = (
        *ALICE,
        ("x-embedding-api-key", EMBEDDING_KEY),
        # The URL the key is meant for: the gateway forwards it to retrieval, which sends
        # the key to the collection's URL only when the two agree.
        ("x-embedding-base-url", stack.fake.base_url),
        ("x-openai-api-key", LLM_KEY),
        ("x-fake-api-key", LLM_KEY),
    )
    await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(
            collection="Embedded", objects=[ret_pb.DataObject(properties=props)]
        ),
        metadata=metadata,
    )
    await stack.retrieval.Search(
        ret_pb.SearchRequest(collection="Embedded", near_text=ret_pb.NearText(text="Dune")),
        metadata=ALICE,
    )
    sent = [r for r in stack.fake.requests if r.path.endswith("/embeddings")]
    assert [r.headers.get("Authorization", "") for r in sent] == [f"Bearer {EMBEDDING_KEY}", ""]
    assert all(LLM_KEY not in str(r.headers) for r in stack.fake.requests)


async def test_the_embedding_and_rerank_keys_never_reach_an_llm_provider(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    """``x-embedding-api-key`` and ``x-rerank-api-key`` are meant for a collection's
    endpoints (the retrieval service): before, the gateway passed them to the generation
    service too, where an LLM provider called ``embedding`` or ``rerank`` took them for its
    own key header and sent them upstream."""
    for name in ("embedding", "rerank"):
        fake.requests.clear()
        stack = await stack_factory(provider=fake_provider(fake, name=name))
        generation = gen_grpc.GenerationServiceStub(stack.channel)  # type: ignore[no-untyped-call]
        await generation.Generate(
            gen_pb.GenerateRequest(messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hi")]),
            metadata=(*ALICE, (f"x-{name}-api-key", EMBEDDING_KEY)),
        )
        [sent] = fake.chat_requests
        assert EMBEDDING_KEY not in str(sent.headers)


async def test_a_vectorizer_base_url_is_called_as_the_allowlist_read_it(stack: Stack) -> None:
    """A vectorizer's address written with a trailing dot passed the allowlist (read
    without it) and was then called as written, which the HTTP client could not connect
    to: every upsert and near_text search of the collection failed UNAVAILABLE. Now the
    URL called is the one checked."""
    collection = ret_pb.Collection(
        name="Dotted",
        properties=[ret_pb.Property(name="title", data_type=ret_pb.DATA_TYPE_TEXT)],
        vectorizer=ret_pb.Vectorizer(
            kind=ret_pb.VECTORIZER_KIND_OPENAI_COMPATIBLE,
            base_url=f"http://127.0.0.1.:{stack.fake.port}/v1",
            model="fake-embedding",
            dimensions=stack.fake.embedding_dim,
        ),
    )
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=collection), metadata=ALICE
    )
    props = struct_pb2.Struct()
    props.update({"title": "Dune"})
    response = await stack.retrieval.UpsertObjects(
        ret_pb.UpsertObjectsRequest(
            collection="Dotted", objects=[ret_pb.DataObject(properties=props)]
        ),
        metadata=ALICE,
        timeout=30,
    )
    assert not response.errors, response.errors
    found = await stack.retrieval.Search(
        ret_pb.SearchRequest(collection="Dotted", near_text=ret_pb.NearText(text="Dune")),
        metadata=ALICE,
        timeout=30,
    )
    assert [h.properties["title"] for h in found.hits] == ["Dune"]
    assert len([r for r in stack.fake.requests if r.path.endswith("/embeddings")]) == 2
