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
from pydantic import ValidationError

from services.retrieval.settings import RetrievalSettings
from tests.retrieval.conftest import ARTICLE_PROPS, MakeRetrieval, expect_error, obj
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info

OPERATOR_KEY = "sk-operator-secret-0123456789"
CALLER_KEY = "sk-caller-own-key-9876543210"
CALLER_KEY_HEADER = "x-embedding-api-key"
URL_HEADER = "x-embedding-base-url"


def own_key(url: str) -> tuple[tuple[str, str], ...]:
    """The caller's key and the URL it names for it (test_key_destinations.py)."""
    return ((CALLER_KEY_HEADER, CALLER_KEY), (URL_HEADER, url))


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


# -- the allowlist ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1",
        "https://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://localhost:8080/v1",
        "http://127.0.0.1:8080/v1",
        "http://[::1]:8080/v1",
        "http://10.0.0.5:8080/v1",
    ],
)
async def test_by_default_callers_may_name_no_url(make_retrieval: MakeRetrieval, url: str) -> None:
    retrieval = await make_retrieval()
    err = await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=vectorizing(url))),
        grpc.StatusCode.PERMISSION_DENIED,
        "collection.vectorizer.base_url",
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"
    assert "GENSEARCH_RETRIEVAL_ALLOWED_HOSTS" in (err.details() or "")


@pytest.mark.parametrize(
    ("allowed_hosts", "url"),
    [
        ("*", "http://{fake}/v1"),  # any public host: loopback is not one
        ("*.example.com, http://*.example.com", "http://{fake}/v1"),
        ("127.0.0.1", "http://{fake}/v1"),  # https only
        ("http://127.0.0.1:1", "http://{fake}/v1"),  # another port
        ("http://10.0.0.0/8", "http://{fake}/v1"),
        ("http://169.254.0.0/16", "http://169.254.169.254/latest"),  # metadata: exactly
    ],
)
async def test_urls_outside_the_allowlist_are_refused(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI, allowed_hosts: str, url: str
) -> None:
    retrieval = await make_retrieval(allowed_hosts=allowed_hosts)
    url = url.format(fake=f"127.0.0.1:{attacker.port}")
    err = await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=vectorizing(url))),
        grpc.StatusCode.PERMISSION_DENIED,
        "collection.vectorizer.base_url",
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"


async def test_a_refusal_echoes_only_a_short_prefix_of_the_url(
    make_retrieval: MakeRetrieval,
) -> None:
    retrieval = await make_retrieval(allowed_hosts="api.example.com")
    host = "x" * 60 + ".evil.example"
    # Under GENSEARCH_RETRIEVAL_MAX_URL_CHARS (2048): longer is FIELD_TOO_LARGE first.
    url = f"https://{host}/v1/" + "p" * 1900
    err = await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=vectorizing(url))),
        grpc.StatusCode.PERMISSION_DENIED,
        "collection.vectorizer.base_url",
    )
    details = err.details() or ""
    assert host not in details and "p" * 100 not in details
    assert len(details) < 400


async def test_an_allowed_url_gets_only_the_key_its_caller_sent(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI
) -> None:
    retrieval = await make_retrieval(allowed_hosts="http://127.0.0.1")
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vectorizing(attacker.base_url))
    )
    upsert = pb.UpsertObjectsRequest(collection="Stolen", objects=[obj({"title": "mine"})])
    await retrieval.stub.UpsertObjects(upsert)
    await retrieval.stub.UpsertObjects(upsert, metadata=own_key(attacker.base_url))
    search = pb.SearchRequest(collection="Stolen", near_text=pb.NearText(text="mine"))
    hits = await retrieval.stub.Search(search, metadata=own_key(attacker.base_url))
    assert hits.hits[0].properties["title"] == "mine"
    # No key at all without one from the caller; the caller's own key when sent.
    assert authorizations(attacker) == ["", f"Bearer {CALLER_KEY}", f"Bearer {CALLER_KEY}"]
    assert not leaked(attacker)


async def test_the_operators_key_goes_to_the_url_it_is_paired_with_and_no_other(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI
) -> None:
    """The operator pairs its key with its own endpoint (here a second fake); a collection
    may use it there, never on a look-alike URL, even one the allowlist accepts."""
    async with FakeOpenAI(embedding_dim=8, api_key=OPERATOR_KEY) as operator:
        retrieval = await make_retrieval(
            allowed_hosts="http://127.0.0.1, http://localhost",  # every look-alike passes
            embedding_key_urls={"OPENAI_API_KEY": operator.base_url},
        )
        own = vectorizing(operator.base_url + "/", "OPENAI_API_KEY", name="Operator")
        await retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=own))
        await retrieval.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Operator", objects=[obj({"title": "fine"})])
        )
        assert [r.headers["Authorization"] for r in operator.requests] == [f"Bearer {OPERATOR_KEY}"]
        look_alikes = [
            attacker.base_url,
            operator.base_url + "/embeddings/..",
            operator.base_url.replace("/v1", "/v2"),
            operator.base_url.replace("127.0.0.1", "localhost"),
        ]
        for url in look_alikes:
            err = await expect_error(
                retrieval.stub.CreateCollection(
                    pb.CreateCollectionRequest(collection=vectorizing(url, "OPENAI_API_KEY"))
                ),
                grpc.StatusCode.PERMISSION_DENIED,
                "collection.vectorizer.api_key_env",
            )
            assert error_info(err).reason == "KEY_NOT_ALLOWED"
    assert attacker.requests == []


async def test_the_operators_endpoint_needs_no_allowlist_entry(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI
) -> None:
    # The operator configured it (here on loopback): it is not a caller's URL.
    retrieval = await make_retrieval(embedding_key_urls={"OPENAI_API_KEY": attacker.base_url})
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vectorizing(attacker.base_url, "OPENAI_API_KEY"))
    )
    await retrieval.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Stolen", objects=[obj({"title": "ok"})])
    )
    assert authorizations(attacker) == [f"Bearer {OPERATOR_KEY}"]


# -- at connect time ----------------------------------------------------------------------


async def test_a_name_that_resolves_to_loopback_is_refused_when_connecting(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI
) -> None:
    """DNS rebinding, reduced to its core: the allowlist names a host, the host resolves
    to an address the allowlist does not name. ``localhost`` passes the name check when
    the collection is created; the connection is refused, nothing is sent."""
    url = attacker.base_url.replace("127.0.0.1", "localhost")
    retrieval = await make_retrieval(allowed_hosts="http://localhost")
    await retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=vectorizing(url)))
    err = await expect_error(
        retrieval.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Stolen", objects=[obj({"title": "x"})]),
            metadata=own_key(url),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "collection.vectorizer.base_url",
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"
    assert error_info(err).metadata["collection"] == "Stolen"
    assert "resolves to an address" in (err.details() or "")
    assert attacker.requests == []
    count = await retrieval.stub.CountObjects(pb.CountObjectsRequest(collection="Stolen"))
    assert count.count == 0

    # Once the operator names the loopback address itself, the same collection works.
    allowed = await make_retrieval(
        allowed_hosts="http://localhost, 127.0.0.1",
        data_dir=retrieval.settings.data_dir.parent / "other",
    )
    await allowed.stub.CreateCollection(pb.CreateCollectionRequest(collection=vectorizing(url)))
    await allowed.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Stolen", objects=[obj({"title": "x"})])
    )
    assert len(attacker.requests) == 1


async def test_a_collection_is_checked_again_when_used(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI
) -> None:
    """A collection made under a wider allowlist stops working when the operator narrows
    it: the URL is checked on every use, not only when the collection is created."""
    before = await make_retrieval(allowed_hosts="http://127.0.0.1")
    await before.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vectorizing(attacker.base_url))
    )
    data_dir = before.settings.data_dir
    await before.stop()
    after = await make_retrieval(data_dir=data_dir)
    err = await expect_error(
        after.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection="Stolen", objects=[obj({"title": "x"})])
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "collection.vectorizer.base_url",
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"
    assert attacker.requests == []


async def test_a_collections_url_outlives_a_lowered_max_url_chars(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI
) -> None:
    """GENSEARCH_RETRIEVAL_MAX_URL_CHARS bounds the URLs callers send: lowered below the
    vectorizer URL a collection stored (held to the bound of its day), it refused every
    later insert and search of that collection. The URL keeps working; a new collection
    naming it is refused, and the allowlist is read again at every use (the test above)."""
    before = await make_retrieval(allowed_hosts="http://127.0.0.1")
    await before.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vectorizing(attacker.base_url))
    )
    await before.stop()
    assert len(attacker.base_url) > 16
    after = await make_retrieval(
        data_dir=before.settings.data_dir, allowed_hosts="http://127.0.0.1", max_url_chars=16
    )
    upsert = pb.UpsertObjectsRequest(collection="Stolen", objects=[obj({"title": "mine"})])
    await after.stub.UpsertObjects(upsert, metadata=own_key(attacker.base_url))
    search = pb.SearchRequest(collection="Stolen", near_text=pb.NearText(text="mine"))
    hits = await after.stub.Search(search, metadata=own_key(attacker.base_url))
    assert hits.hits[0].properties["title"] == "mine"
    assert authorizations(attacker) == [f"Bearer {CALLER_KEY}"] * 2
    err = await expect_error(
        after.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vectorizing(attacker.base_url, name="New"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "collection.vectorizer.base_url",
    )
    assert error_info(err).reason == "FIELD_TOO_LARGE"


# -- the operator's settings ----------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_ALLOWED_HOSTS", "*.example.com, http://10.0.0.0/8")
    monkeypatch.setenv(
        "GENSEARCH_RETRIEVAL_EMBEDDING_KEY_URLS", '{"TEI_KEY": "http://TEI.internal:8080/v1/"}'
    )
    policy = RetrievalSettings().embedding_policy()
    assert len(policy.egress.entries) == 2
    assert policy.key_urls == {"TEI_KEY": "http://tei.internal:8080/v1"}


def test_a_bad_allowlist_stops_the_service_and_names_the_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_ALLOWED_HOSTS", "api.example.com, https://x.test/v1")
    with pytest.raises(ValidationError) as err:
        RetrievalSettings()
    assert "'https://x.test/v1'" in str(err.value)


@pytest.mark.parametrize("query", ["?key=S3cretQ", "?"])
async def test_a_callers_url_with_a_query_is_refused_wherever_it_is_named(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI, query: str
) -> None:
    """Every URL a caller names here (a vectorizer's, a collection's default rerank and a
    search's rerank endpoint) is a base URL the client appends its path to, after the
    query: refused as the generation service refuses one, even on an allowed host. Before,
    the operator's key URL followed by an empty "?" passed as the operator's endpoint
    (the "?" vanished when comparing), skipping the allowlist, and was stored."""
    retrieval = await make_retrieval(allowed_hosts="http://127.0.0.1")
    url = attacker.base_url + query
    calls = [
        (
            retrieval.stub.CreateCollection(
                pb.CreateCollectionRequest(collection=vectorizing(url))
            ),
            "collection.vectorizer.base_url",
        ),
        (
            retrieval.stub.CreateCollection(
                pb.CreateCollectionRequest(
                    collection=vectorizing(
                        "https://api.openai.com/v1" + query, key_env="OPENAI_API_KEY"
                    )
                )
            ),
            "collection.vectorizer.base_url",
        ),
    ]
    ranked = pb.Collection(
        name="Ranked",
        properties=ARTICLE_PROPS,
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=8),
        rerank=pb.Rerank(base_url=url),
    )
    calls.append(
        (
            retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=ranked)),
            "collection.rerank.base_url",
        )
    )
    for call, field in calls:
        err = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, field)
        assert error_info(err).reason == "URL_NOT_ALLOWED"
        assert "query" in (err.details() or "") and "S3cretQ" not in (err.details() or "")
    ranked.ClearField("rerank")
    await retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=ranked))
    err = await expect_error(
        retrieval.stub.Search(
            pb.SearchRequest(
                collection="Ranked",
                keyword=pb.Keyword(text="anything"),
                rerank=pb.Rerank(base_url=url),
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "rerank.base_url",
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"
    assert attacker.requests == [] and attacker.rerank_requests == []


@pytest.mark.parametrize("query", ["?key=S3cretQ", "?"])
def test_an_operators_url_with_a_query_stops_the_service(query: str) -> None:
    """The operator's embeddings and rerank URLs are base URLs too."""
    for settings in (
        {"embedding_key_urls": {"TEI_KEY": "http://tei:8080/v1" + query}},
        {"rerank_providers": {"tei": {"base_url": "http://tei:8080/v1" + query}}},
    ):
        with pytest.raises(ValidationError) as err:
            RetrievalSettings(**settings)
        # What the service prints at start (load_settings): the message, not the input.
        (message,) = [e["msg"] for e in err.value.errors()]
        assert "no query" in message and "S3cretQ" not in message


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_names_the_base_url(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI, status: int
) -> None:
    """An allowed endpoint answering with a redirect to a host off the allowlist: nothing
    goes there (not the texts, not the caller's key), and the caller is told the base URL
    must name the final address instead of a bare UNAVAILABLE."""
    async with FakeOpenAI(embedding_dim=8, host="127.0.0.2") as elsewhere:
        retrieval = await make_retrieval(allowed_hosts="http://127.0.0.1")
        await retrieval.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vectorizing(attacker.base_url))
        )
        attacker.enqueue(
            Behaviour.error(status, headers={"Location": f"{elsewhere.base_url}/embeddings"})
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await retrieval.stub.UpsertObjects(
                pb.UpsertObjectsRequest(collection="Stolen", objects=[obj({"title": "t"})]),
                metadata=own_key(attacker.base_url),
            )
        assert elsewhere.requests == []
        assert len(attacker.requests) == 1  # not retried: it would redirect again
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
        info = error_info(caught.value)
        assert info.reason == "UPSTREAM_REDIRECT"
        assert info.metadata["field"] == "collection.vectorizer.base_url"
        assert f"HTTP {status}" in (caught.value.details() or "")
        assert "base_url" in (caught.value.details() or "")
        assert "127.0.0.2" not in (caught.value.details() or "")
        # A write says so (the embedder's own message does not: it serves Search too).
        assert (caught.value.details() or "").endswith("; nothing was written")


async def test_a_callers_url_holding_an_unprintable_character_is_refused(
    make_retrieval: MakeRetrieval, attacker: FakeOpenAI
) -> None:
    """DEL in a base URL's path passed the allowlist and was stored; the HTTP client then
    refused the URL with an exception of its own, and every embedding or rerank call failed
    INTERNAL. Refused where it is named, as a URL with a query is."""
    retrieval = await make_retrieval(allowed_hosts="http://127.0.0.1")
    url = attacker.base_url + "\x7f"
    err = await expect_error(
        retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=vectorizing(url))),
        grpc.StatusCode.PERMISSION_DENIED,
        "collection.vectorizer.base_url",
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"
    plain = pb.Collection(
        name="Ranked",
        properties=ARTICLE_PROPS,
        vectorizer=pb.Vectorizer(kind=pb.VECTORIZER_KIND_NONE, dimensions=8),
    )
    await retrieval.stub.CreateCollection(pb.CreateCollectionRequest(collection=plain))
    err = await expect_error(
        retrieval.stub.Search(
            pb.SearchRequest(
                collection="Ranked",
                keyword=pb.Keyword(text="title"),
                rerank=pb.Rerank(base_url=url),
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "rerank.base_url",
    )
    assert error_info(err).reason == "URL_NOT_ALLOWED"
    assert attacker.requests == [] and attacker.rerank_requests == []
