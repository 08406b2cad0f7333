"""Keys travel as gRPC metadata, which must be printable ASCII: a key that is not is refused
where it is given, with a message naming the argument and never the key, instead of
grpc core's ``ExecuteBatchError`` (a list of cygrpc objects) at the first call."""

from __future__ import annotations

import pytest
from gensearch.client import AsyncGensearch, Gensearch

SECRET = "sk-caf\u00e9-secret"  # a pasted key with a non-ASCII character


async def test_an_api_key_that_is_no_metadata_value_is_refused_at_once() -> None:
    for bad in (SECRET, "sk-two\nlines", "sk-\u2026"):
        with pytest.raises(ValueError, match="api_key must be printable ASCII") as caught:
            AsyncGensearch("127.0.0.1:1", api_key=bad)
        assert bad not in str(caught.value)


async def test_an_llm_key_that_is_no_metadata_value_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="llm_keys\\['openai'\\] must be printable") as caught:
        AsyncGensearch("127.0.0.1:1", llm_keys={"openai": SECRET})
    assert SECRET not in str(caught.value)
    # The provider becomes the header name x-<provider>-api-key: it must be one.
    with pytest.raises(ValueError, match="llm_keys: 'Open AI' is no provider name"):
        AsyncGensearch("127.0.0.1:1", llm_keys={"Open AI": "sk-1"})
    with pytest.raises(ValueError, match="llm_keys: 'openai' names a provider twice"):
        AsyncGensearch("127.0.0.1:1", llm_keys={"OpenAI": "sk-1", "openai": "sk-2"})


def test_the_blocking_client_refuses_them_too() -> None:
    with pytest.raises(ValueError, match="api_key must be printable ASCII"):
        Gensearch("127.0.0.1:1", api_key=SECRET)


async def test_printable_keys_still_go_as_metadata() -> None:
    async with AsyncGensearch(
        "127.0.0.1:1", api_key="k ey~1", llm_keys={"OpenAI": "sk-x", "my_llm": "k"}
    ) as client:
        assert client._t.metadata == (
            ("authorization", "Bearer k ey~1"),
            ("x-openai-api-key", "sk-x"),
            ("x-my_llm-api-key", "k"),
        )


async def test_key_urls_go_as_the_headers_retrieval_reads() -> None:
    """The URL a caller's embedding / rerank key is meant for (docs/retrieval.md): without
    it, retrieval refuses to send the key to a URL a collection's admin set."""
    async with AsyncGensearch(
        "127.0.0.1:1",
        llm_keys={"embedding": "sk-e"},
        key_urls={"rerank": "https://r.example/v1", "embedding": "https://e.example/v1"},
    ) as client:
        assert client._t.metadata == (
            ("x-embedding-api-key", "sk-e"),
            ("x-embedding-base-url", "https://e.example/v1"),
            ("x-rerank-base-url", "https://r.example/v1"),
        )
    with pytest.raises(ValueError, match="key_urls: 'openai' must be 'embedding' or 'rerank'"):
        AsyncGensearch("127.0.0.1:1", key_urls={"openai": "https://x.example"})


async def test_an_address_that_is_a_url_is_refused_at_once() -> None:
    """Before: every call failed UNAVAILABLE "errors resolving http://localhost:50050:
    … Misformatted domain name" (a Connect client's baseUrl is such a URL)."""
    with pytest.raises(ValueError, match="not a URL: 'localhost:50050' rather than"):
        AsyncGensearch("http://localhost:50050")
    with pytest.raises(ValueError, match=r"^address 'localhost' has no port"):
        AsyncGensearch("localhost")
    async with AsyncGensearch("dns:///localhost:50050") as client:  # a target, still taken
        assert client.address == "dns:///localhost:50050"


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        (
            "HTTPS://gw.example.com/",
            r"^GENSEARCH_ADDRESS must be host:port \(a gRPC target\), not a URL: "
            r"'gw\.example\.com' rather than",
        ),
        # No port: gRPC tried 443 and every call failed UNAVAILABLE (the gensearch command
        # refused it already).
        (
            "gw.example.com",
            r"^GENSEARCH_ADDRESS 'gw\.example\.com' has no port \(gRPC would try 443\): "
            r"give host:port, e.g. 'gw\.example\.com:50050'$",
        ),
    ],
)
def test_a_gensearch_address_that_is_no_target_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch, address: str, refusal: str
) -> None:
    """Named as docs/clients.md says: the variable, not an argument the program never
    passed."""
    monkeypatch.setenv("GENSEARCH_ADDRESS", address)
    with pytest.raises(ValueError, match=refusal):
        Gensearch()
