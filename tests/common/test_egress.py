"""The operator's allowlist for URLs callers name (services/common/egress.py), and the HTTP
client for such URLs (services/common/openai_api.py) against real servers on loopback.

Name resolution in the client tests is real: ``localhost`` is a name that resolves to a
loopback address, and where a test needs a name of its own, a real aiohttp resolver maps
it (``MappedResolver``) — the HTTP client itself is never patched.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from services.common.egress import (
    EgressPolicy,
    EgressResolver,
    Entry,
    UrlRefused,
    canonical_url,
    is_special,
    refusal,
)
from services.common.openai_api import OpenAIClients
from services.common.upstream_retry import is_transient
from tests.support.fake_openai import Behaviour, FakeOpenAI


def allowed(allowlist: str, url: str) -> bool:
    try:
        EgressPolicy.parse(allowlist).check_url(url)
    except UrlRefused:
        return False
    return True


@pytest.mark.parametrize(
    ("allowlist", "url", "expected"),
    [
        # host names; no port in the entry = any port; https only unless http:// is given
        ("api.example.com", "https://api.example.com/v1", True),
        ("api.example.com", "https://API.Example.com./v1", True),
        ("api.example.com", "https://api.example.com:8443/v1", True),
        ("api.example.com", "http://api.example.com/v1", False),
        ("api.example.com", "https://api.example.com.evil.test/v1", False),
        ("api.example.com", "https://evil.test/api.example.com", False),
        ("http://api.example.com", "http://api.example.com/v1", True),
        ("http://api.example.com", "https://api.example.com/v1", True),
        # ports
        ("api.example.com:8443", "https://api.example.com:8443/v1", True),
        ("api.example.com:8443", "https://api.example.com/v1", False),
        ("api.example.com:443", "https://api.example.com/v1", True),
        ("http://api.example.com:80", "http://api.example.com/v1", True),
        # wildcard subdomains, any depth, never the parent itself
        ("*.example.com", "https://a.example.com/v1", True),
        ("*.example.com", "https://a.b.example.com/v1", True),
        ("*.example.com", "https://example.com/v1", False),
        ("*.example.com", "https://evilexample.com/v1", False),
        ("*.example.com", "https://example.com.evil.test/v1", False),
        ("*.example.com:8443", "https://a.example.com/v1", False),
        # a fully qualified entry (trailing dot) is the same name (QA: "*.example.com."
        # was accepted and then matched no host at all)
        ("*.example.com.", "https://a.example.com/v1", True),
        ("*.example.com.", "https://example.com/v1", False),
        ("api.example.com.", "https://api.example.com/v1", True),
        # any public host
        ("*", "https://anything.test/v1", True),
        ("*", "https://8.8.8.8/v1", True),
        ("*", "https://[2606:4700::1]/v1", True),
        ("*", "http://anything.test/v1", False),
        # addresses and networks
        ("10.0.0.0/8", "https://10.1.2.3/v1", True),
        ("10.0.0.0/8", "https://11.0.0.1/v1", False),
        ("10.0.0.0/8", "https://internal.test/v1", False),
        ("10.0.0.5", "https://10.0.0.5/v1", True),
        ("10.0.0.5", "https://10.0.0.6/v1", False),
        ("http://10.0.0.0/8", "http://10.1.2.3:8080/v1", True),
        ("[fd00::5]:8080", "https://[fd00::5]:8080/v1", True),
        ("[fd00::5]:8080", "https://[fd00::5]/v1", False),
        ("fd00::/8", "https://[fd12::1]/v1", True),
        ("127.0.0.1", "https://[::ffff:127.0.0.1]/v1", True),
        # special addresses need an explicit address or network entry ...
        ("*", "https://127.0.0.1/v1", False),
        ("*", "https://10.0.0.1/v1", False),
        ("*", "https://192.168.1.1/v1", False),
        ("*", "https://172.16.0.1/v1", False),
        ("*", "https://100.64.0.1/v1", False),
        ("*", "https://169.254.1.1/v1", False),
        ("*", "https://0.0.0.0/v1", False),
        ("*", "https://224.0.0.1/v1", False),
        ("*", "https://240.0.0.1/v1", False),
        ("*", "https://[::1]/v1", False),
        ("*", "https://[::]/v1", False),
        ("*", "https://[fe80::1]/v1", False),
        ("*", "https://[fd12::1]/v1", False),
        ("*", "https://[ff02::1]/v1", False),
        ("*", "https://[::ffff:127.0.0.1]/v1", False),
        ("*", "https://[64:ff9b::7f00:1]/v1", False),
        ("*", "https://192.0.0.100/v1", False),
        ("*", "https://[fec0::1]/v1", False),
        ("fec0::/10", "https://[fec0::1]/v1", True),
        # ... and metadata endpoints one naming exactly them
        ("*", "https://169.254.169.254/latest", False),
        ("169.254.0.0/16", "https://169.254.169.254/latest", False),
        ("169.254.169.254", "https://169.254.169.254/latest", True),
        ("fd00::/8", "https://[fd00:ec2::254]/latest", False),
        ("*", "https://metadata.google.internal/v1", False),
        ("*.google.internal", "https://metadata.google.internal/v1", False),
        ("metadata.google.internal", "https://metadata.google.internal/v1", True),
        # spellings parsers disagree on, other schemes, numeric host names
        ("api.example.com", "https://user@api.example.com/v1", False),
        ("api.example.com", "https://api.example.com\\@evil.test/v1", False),
        ("api.example.com", "https://evil.test#@api.example.com/v1", False),
        ("api.example.com", "https://api.example.com /v1", False),
        # characters no URL holds: DEL passed and failed the call INTERNAL in the client
        ("api.example.com", "https://api.example.com/v1\x7f", False),
        ("api.example.com", "https://api.example.com/v1/\x9b", False),
        ("api.example.com", "https://api.example.com/v1/\u200b", False),
        ("api.example.com", "https://api.example.com/v1/\u202e", False),
        ("api.example.com", "ftp://api.example.com/v1", False),
        ("api.example.com", "https://api.example.com:0/v1", False),
        ("api.example.com", "https://api.example.com:99999/v1", False),
        ("api.example.com", "api.example.com/v1", False),
        ("*", "https://127.1/v1", False),
        ("*", "https://0x7f000001/v1", False),
        ("*", "https://2130706433/v1", False),
        ("*", "https://%6c%6fcalhost/v1", False),
        # malformed hosts are refused, never an exception of the URL parser
        ("*", "https://[::1/v1", False),
        ("*", "https://a]b.com/v1", False),
        ("*", "https://[zz]/v1", False),
        # the default: nothing at all
        ("", "https://api.openai.com/v1", False),
        ("", "http://127.0.0.1:8080/v1", False),
    ],
)
def test_allowlist_matching(allowlist: str, url: str, expected: bool) -> None:
    assert allowed(allowlist, url) is expected


@pytest.mark.parametrize(
    "entry",
    ["api.example.com:0", "api.example.com:99999", "https://api.example.com/v1", "a..b", "*.",
     "10.0.0.0/33", "[fd00::1", "bad_host:x", "-x.example.com", "127.1"],
)  # fmt: skip
def test_a_bad_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError) as err:
        EgressPolicy.parse(f"api.example.com, {entry}")
    assert repr(entry) in str(err.value)


def test_entries_split_on_commas_and_whitespace() -> None:
    policy = EgressPolicy.parse(" a.example.com,b.example.com\n  10.0.0.0/8 ,, ")
    assert len(policy.entries) == 3
    assert policy.entries[2] == Entry(network=ipaddress.ip_network("10.0.0.0/8"))


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "100.64.0.1", "169.254.169.254",
     "0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1", "192.0.2.1", "198.18.0.1", "::1",
     "::", "fe80::1", "fd00:ec2::254", "fc00::1", "ff02::1", "2001:db8::1", "::ffff:10.0.0.1",
     "64:ff9b::a00:1", "2002:7f00:1::",
     # Not globally reachable (IANA special-purpose registries), yet "global" to the
     # ipaddress module of Python releases before the CVE-2024-4032 fix (3.11.7 here):
     # IETF protocol assignments, deprecated site-local, the 2024 documentation prefix.
     "192.0.0.8", "192.0.0.100", "::ffff:192.0.0.100", "fec0::1", "feff::1", "3fff::1"],
)  # fmt: skip
def test_special_addresses(address: str) -> None:
    assert is_special(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
     # globally reachable anycast inside 192.0.0.0/24 (PCP, TURN)
     "192.0.0.9", "192.0.0.10"],
)  # fmt: skip
def test_public_addresses(address: str) -> None:
    assert not is_special(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("entry", "address"),
    [("64:ff9b::/96", "64:ff9b::a9fe:a9fe"), ("2002::/16", "2002:a9fe:a9fe::"),
     ("::ffff:0:0/96", "::ffff:169.254.169.254"), ("169.254.0.0/16", "169.254.169.254")],
)  # fmt: skip
def test_a_metadata_address_in_any_spelling_needs_its_own_entry(entry: str, address: str) -> None:
    # A network entry around the metadata address (NAT64, 6to4, IPv4-mapped) is not enough.
    ip = ipaddress.ip_address(address)
    assert not EgressPolicy.parse(entry).address_allowed(ip, 443)
    assert EgressPolicy.parse(f"{entry}, 169.254.169.254, {address}").address_allowed(ip, 443)


def test_a_refusal_echoes_only_a_short_prefix() -> None:
    host = "a" * 60 + "." + "b" * 60 + ".example"
    with pytest.raises(UrlRefused) as err:
        EgressPolicy.parse("api.example.com").check_url(f"https://{host}/v1?" + "x" * 5000)
    assert len(err.value.why) < 160
    assert host not in err.value.why


@pytest.mark.parametrize(
    "url",
    [
        "http://svc:S3cretPw@127.0.0.2:1/v1",
        "http://S3cretPw@api.example.com/v1",
        "https://other.example.org/v1?api_key=S3cretPw",
        "https://api.example.com/v1#S3cretPw",
        "ftp://svc:S3cretPw@api.example.com/v1",
        "http://svc:S3cretPw@api.example.com:99999/v1",
        "http://svc:S3cretPw@exa mple.com/v1",
        "svc:S3cretPw@api.example.com/v1",
        "https:\\\\svc:S3cretPw@api.example.com/v1",
        "http://svc:p?S3cretPw@api.example.com/v1",
    ],
)
def test_a_refusal_never_echoes_credentials_or_a_query(url: str) -> None:
    """An outside check found a base_url's password in the error message."""
    with pytest.raises(UrlRefused) as err:
        EgressPolicy.parse("api.example.com").check_url(url)
    assert "S3cretPw" not in err.value.why
    assert any(host in err.value.why for host in ("example", "exa mple", "127.0.0.2"))


def test_canonical_url_compares_base_urls() -> None:
    assert canonical_url("HTTPS://API.OpenAI.com:443/v1/") == canonical_url(
        "https://api.openai.com/v1"
    )
    assert canonical_url("https://api.openai.com:8443/v1") != canonical_url(
        "https://api.openai.com/v1"
    )
    assert canonical_url("https://api.openai.com/v1/..") != canonical_url("https://api.openai.com")
    with pytest.raises(UrlRefused):
        canonical_url("https://me@api.openai.com/v1")
    # A base URL has no query, not even an empty one (it vanished here, and the URL then
    # compared equal to the operator's own).
    for url in ("https://api.openai.com/v1?", "https://api.openai.com/v1?k=v"):
        with pytest.raises(UrlRefused, match="no query"):
            canonical_url(url)


# -- at connect time ----------------------------------------------------------------------


class MappedResolver(AbstractResolver):
    """A real aiohttp resolver answering from a table that a test may change between two
    lookups (what a DNS server under an attacker's control can do)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table.get(host, [])
        ]

    async def close(self) -> None:
        pass


async def test_each_lookup_is_checked_so_a_rebound_name_is_refused() -> None:
    table = {"embeddings.test": ["127.0.0.1"]}
    inner = MappedResolver(table)
    resolver = EgressResolver(EgressPolicy.parse("embeddings.test, 127.0.0.1"), inner)
    first = await resolver.resolve("embeddings.test", 443)
    assert [r["host"] for r in first] == ["127.0.0.1"]
    table["embeddings.test"] = ["169.254.169.254"]  # the name is rebound
    with pytest.raises(UrlRefused, match="resolves to an address"):
        await resolver.resolve("embeddings.test", 443)
    table["embeddings.test"] = ["8.8.8.8", "10.0.0.1", "127.0.0.1"]
    kept = await resolver.resolve("embeddings.test", 443)
    assert [r["host"] for r in kept] == ["8.8.8.8", "127.0.0.1"]  # never 10.0.0.1


async def test_a_name_not_listed_is_never_looked_up() -> None:
    inner = MappedResolver({"evil.test": ["8.8.8.8"]})
    resolver = EgressResolver(EgressPolicy.parse("embeddings.test"), inner)
    with pytest.raises(UrlRefused):
        await resolver.resolve("evil.test", 443)
    with pytest.raises(UrlRefused):
        await resolver.resolve("embeddings.test", 443, socket.AF_INET)  # resolves to nothing
    assert inner.lookups == ["embeddings.test"]


def test_the_socket_factory_refuses_special_addresses() -> None:
    policy = EgressPolicy.parse("*, 10.0.0.5:8080")
    info = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
    for address in (("127.0.0.1", 80), ("169.254.169.254", 80), ("10.0.0.5", 9090)):
        with pytest.raises(UrlRefused):
            policy.guarded_socket((*info, address))
    for address in (("10.0.0.5", 8080), ("8.8.8.8", 443)):
        policy.guarded_socket((*info, address)).close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(embedding_dim=4) as server:
        yield server


async def embed(clients: OpenAIClients, base_url: str) -> object:
    client = clients.get(base_url, connect_timeout=5, read_timeout=5)
    return await client.embeddings.create(model="m", input=["x"], encoding_format="float")


async def test_a_name_allowed_by_the_list_but_resolving_to_loopback_is_refused_on_connect(
    fake: FakeOpenAI,
) -> None:
    """``localhost`` passes the name check; the addresses it resolves to are loopback,
    which the list does not name, so no connection is made."""
    url = fake.base_url.replace("127.0.0.1", "localhost")
    clients = OpenAIClients(egress=EgressPolicy.parse("http://localhost"))
    try:
        with pytest.raises(openai.APIConnectionError) as err:
            await embed(clients, url)
    finally:
        await clients.close()
    refused = refusal(err.value)
    assert refused is not None and "resolves to an address" in refused.why
    assert not is_transient(err.value)  # never retried
    assert fake.requests == []

    clients = OpenAIClients(egress=EgressPolicy.parse("http://localhost, 127.0.0.1"))
    try:
        await embed(clients, url)
    finally:
        await clients.close()
    assert len(fake.requests) == 1


async def test_a_name_of_the_tests_own_reaches_the_address_it_maps_to(fake: FakeOpenAI) -> None:
    resolver = MappedResolver({"embeddings.test": ["127.0.0.1"]})
    url = fake.base_url.replace("127.0.0.1", "embeddings.test")
    clients = OpenAIClients(
        egress=EgressPolicy.parse("http://embeddings.test, 127.0.0.1"), resolver=resolver
    )
    try:
        await embed(clients, url)
        resolver.table["embeddings.test"] = ["10.0.0.1"]  # rebound, and the pool is cold
        await clients.close()
        clients = OpenAIClients(
            egress=EgressPolicy.parse("http://embeddings.test, 127.0.0.1"), resolver=resolver
        )
        with pytest.raises(openai.APIConnectionError) as err:
            await embed(clients, url)
    finally:
        await clients.close()
    assert refusal(err.value) is not None
    assert [r.headers["Host"] for r in fake.requests] == [f"embeddings.test:{fake.port}"]


async def test_redirects_are_not_followed(fake: FakeOpenAI) -> None:
    async with FakeOpenAI(embedding_dim=4, host="127.0.0.2") as elsewhere:
        fake.enqueue(Behaviour.error(307, headers={"Location": f"{elsewhere.base_url}/embeddings"}))
        clients = OpenAIClients(egress=EgressPolicy.parse("http://127.0.0.0/8"))
        try:
            with pytest.raises(openai.APIStatusError) as err:
                await embed(clients, fake.base_url)
        finally:
            await clients.close()
        assert err.value.status_code == 307
        assert elsewhere.requests == []
