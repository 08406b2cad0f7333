"""Outbound URLs named by callers: the operator's allowlist, checked when a URL is given and
again on every connection.

A caller may name a URL the service then calls (a collection's vectorizer endpoint; later a
per-request LLM base URL). The service would otherwise carry data, and perhaps keys, to any
host a caller likes, including the cloud metadata endpoint and every private service next
to it. So a caller's URL must match an entry of the operator's allowlist, and the check is
made twice:

* ``EgressPolicy.check_url`` when the URL is given (and again before each use): scheme,
  host and port must match an entry; an IP literal in a special range must be allowed by an
  explicit network entry.
* ``EgressResolver`` and ``EgressPolicy.guarded_socket`` when each connection is made: the
  name aiohttp resolves must match an entry, and every address it resolves to (and every
  address a socket is opened to) must be public, or covered by an explicit network entry.
  A name that passed the first check and then resolves to a private address (DNS
  rebinding, or simply ``localhost``) is refused here, before any byte is sent.

Entries (comma or whitespace separated; case does not matter):

* ``api.example.com`` — that host; ``api.example.com:8443`` — that host on that port only;
* ``*.example.com`` — any subdomain (any depth), not ``example.com`` itself;
* ``*`` — any host name or address (special addresses still need a network entry);
* ``10.0.0.5``, ``[fd00::5]:8080``, ``10.0.0.0/8``, ``fd00::/8`` — addresses and networks.
  These are the only entries that unlock special addresses: loopback, private (RFC 1918,
  ULA), shared (RFC 6598), link-local, site-local, unspecified, multicast, reserved,
  documentation, IETF protocol assignments (``192.0.0.0/24``).
  Cloud metadata addresses (``169.254.169.254``, ``fd00:ec2::254`` ...) are unlocked only by
  an entry naming that single address, never by a network around it; metadata host names
  (``metadata.google.internal`` ...) only by an entry naming that host exactly.
* ``http://`` before an entry also allows plain http to it; without it only https is.

An entry without a port matches every port. The empty list allows nothing.

Redirects are not followed on connections for callers' URLs (``services.common.openai_api``):
a redirect would name a host nobody checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from services.common.errors import PermissionDenied
from services.common.hostport import join_host_port

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# gRPC metadata carrying the caller's own key for an embeddings endpoint the caller named.
EMBEDDING_KEY_HEADER = "x-embedding-api-key"
# The caller's key for a /v1/rerank endpoint the caller named (Rerank.base_url).
RERANK_KEY_HEADER = "x-rerank-api-key"
# Beside a caller's key, the base URL the caller means it for: a key goes to a URL someone
# else chose (a collection's vectorizer or default rerank block, set by its admin) only
# when the caller names that URL here (services/retrieval/endpoints.py, caller_key_for).
EMBEDDING_URL_HEADER = "x-embedding-base-url"
RERANK_URL_HEADER = "x-rerank-base-url"
# ErrorInfo reason of every refusal.
URL_NOT_ALLOWED = "URL_NOT_ALLOWED"
# ErrorInfo reason when an endpoint answers with a redirect, which no client follows.
UPSTREAM_REDIRECT = "UPSTREAM_REDIRECT"


def is_redirect(err: BaseException) -> int | None:
    """The HTTP status of an SDK error that is a redirect (3xx), else None."""
    status = getattr(err, "status_code", None)
    return status if isinstance(status, int) and 300 <= status < 400 else None


def url_not_allowed(
    field: str, why: str, setting: str, *, then: str = "", metadata: dict[str, str] | None = None
) -> PermissionDenied:
    """The refusal of the URL in ``field``: ``why`` (``UrlRefused.why``), the allowlist
    ``setting`` that decides, and ``then`` (what it means for the call, "; nothing was
    sent")."""
    return PermissionDenied(
        f"{field}: {why} ({setting}){then}",
        field=field,
        reason=URL_NOT_ALLOWED,
        metadata=metadata,
    )


DEFAULT_PORTS = {"https": 443, "http": 80}
# The default of each service's MAX_URL_CHARS setting (GENSEARCH_GATEWAY_MAX_URL_CHARS,
# _GENERATION_, _RETRIEVAL_: characters of a URL a caller sends, held by
# ``values.check_chars`` before the allowlist, which once refused a long one as "not a
# plain URL"),
# and the upper bound of those settings, which is also the longest URL ``split_url``
# reads at all (an operator's own URLs included).
MAX_URL = 2048
MAX_URL_BOUND = 65_536
# Characters of a refused host or URL echoed in a message.
ECHO = 64

# Cloud instance metadata: reached only through an entry naming exactly this address.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS VPC DNS
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
# ... and their names: reached only through an entry naming exactly this host.
METADATA_NAMES = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
    }
)
# IPv6 prefixes that embed an IPv4 address in their low 32 bits (NAT64, RFC 6052/8215).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Not globally reachable (IANA's special-purpose address registries), which the ipaddress
# module of Python releases before the CVE-2024-4032 fix (3.11.7 among them) calls global:
# IETF protocol assignments (but for the PCP and TURN anycast addresses in it), the
# deprecated IPv6 site-local range (still routed inside some networks) and the 2024 IPv6
# documentation prefix. Listed here so the check does not depend on the Python patch level.
_NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "fec0::/10", "3fff::/20"))
_GLOBAL_INSIDE = frozenset(ipaddress.ip_address(a) for a in ("192.0.0.9", "192.0.0.10"))
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
# A top-level label starts with a letter: "127.1", "0x7f000001" or "2130706433" are numeric
# spellings of an address that some resolvers accept, and are refused as names.
_TOP_LABEL = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")


class UrlRefused(OSError):
    """A URL, host or address the operator has not allowed. An ``OSError``, so that raised
    from a resolver or a socket factory it fails the connection like a refused one, and the
    HTTP client's error carries it in its ``__cause__`` chain (see ``refusal``)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def refusal(err: BaseException | None) -> UrlRefused | None:
    """The ``UrlRefused`` behind an HTTP client's error (aiohttp → httpx → openai each
    chain the error they wrap), if a refusal caused it."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UrlRefused):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def echo(text: str) -> str:
    """A refused value as it may appear in a message: a short prefix, quoted."""
    return repr(text[:ECHO] + ("…" if len(text) > ECHO else ""))


def echo_url(url: str) -> str:
    """A refused URL as it may appear in a message, without what may carry a secret: any
    user info (everything up to the last ``@``, however the URL is spelled) and the query
    or fragment. Quoted, a short prefix."""
    shown = url
    if "@" in shown:
        scheme = _SCHEME.match(shown)
        shown = f"{scheme.group(0) if scheme else ''}***@{shown.rpartition('@')[2]}"
    for mark in "?#":
        if mark in shown:
            shown = shown.split(mark, 1)[0] + mark + "…"
    return echo(shown)


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, rest) of a plain http(s) base URL: no credentials, escapes,
    query (a client appends its API path to a base URL), fragment, spaces or backslashes
    (spellings that URL parsers disagree on), nor a character that is not printable (DEL,
    C1 controls, zero-width and other invisible ones, as the operator's own base URLs,
    ``settings.http_url_problem``): DEL in the path passed here and the HTTP client then
    refused the URL with an error nobody expected, and the call failed INTERNAL. ``host``
    is in lower case without brackets or trailing dot; ``port`` is the default one when
    not given; ``rest`` is the path (trailing slashes dropped)."""
    if len(url) > MAX_URL_BOUND or any(
        c.isspace() or c == "\\" or not c.isprintable() for c in url
    ):
        raise UrlRefused(f"{echo_url(url)} is not a plain URL")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. an unbalanced "[" in the host
        raise UrlRefused(f"{echo_url(url)} is not a plain URL") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlRefused(f"{echo_url(url)} is not an https URL")
    if "@" in parts.netloc or "%" in parts.netloc or parts.fragment or "#" in url:
        raise UrlRefused(f"{echo_url(url)}: credentials, escapes and fragments are not allowed")
    if "?" in url:
        # Every URL split here is a base URL a client appends its API path to, after the
        # query: "/v1?key=k" became "/v1/?key=kchat/completions", failing every call (and
        # httpx logs that URL, the query's secret in it, at INFO). An empty "?" too: it
        # used to vanish here, so "<the operator's URL>?" passed as the operator's own
        # endpoint, skipping the allowlist and its query check.
        raise UrlRefused(
            f"{echo_url(url)}: a base URL has no query (the API path is appended to it)"
        )
    host = (hostname or "").rstrip(".")
    try:
        port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise UrlRefused(f"{echo_url(url)} has an invalid port")
    if _address(host) is None and not _valid_name(host):
        raise UrlRefused(f"host {echo(host)} is not a host name or address")
    return scheme, host, port, parts.path.rstrip("/")


def canonical_url(url: str) -> str:
    """``url`` compared as a base URL: scheme and host in lower case, the port always
    written, trailing slashes dropped. Two base URLs are the same endpoint iff these are
    equal. ``UrlRefused`` for a URL that is not plain (see ``split_url``)."""
    scheme, host, port, rest = split_url(url)
    return f"{scheme}://{join_host_port(host, port)}{rest}"


def is_special(address: IPAddress) -> bool:
    """Not a public unicast address: loopback, private, link-local, shared, unspecified,
    multicast, reserved, documentation ... (and IPv6 forms that embed such an IPv4)."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        # ::ffff:a.b.c.d, 6to4 and NAT64 (DNS64 answers for public hosts in IPv6-only
        # clusters) reach the IPv4 address inside: that one decides.
        return is_special(embedded)
    return (
        not address.is_global
        or (any(address in net for net in _NOT_GLOBAL) and address not in _GLOBAL_INSIDE)
        or address.is_multicast
        or address.is_reserved
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
    )


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Entry:
    """One allowlist entry (see the module docstring)."""

    http: bool = False
    port: int | None = None
    host: str | None = None  # an exact host name
    suffix: str | None = None  # "*.example.com" -> ".example.com"
    anything: bool = False  # "*"
    network: IPNetwork | None = None

    @classmethod
    def parse(cls, text: str) -> Entry:
        raw = text.strip().lower()
        http = raw.startswith("http://")
        rest = raw.removeprefix("http://").removeprefix("https://").rstrip("/")
        if "/" in rest or rest.startswith("["):
            return cls._parse_address(rest, http, text)
        host, port = rest, None
        if rest.count(":") == 1:
            host, _, port_text = rest.partition(":")
            port = _port(port_text, text)
        elif ":" in rest:  # a bare IPv6 address
            return cls._parse_address(rest, http, text)
        if host == "*":
            return cls(http=http, port=port, anything=True)
        if _address(host) is not None:
            return cls(http=http, port=port, network=ipaddress.ip_network(host))
        if host.startswith("*."):
            _check_name(host[2:], text)
            # Hosts are compared without their trailing dot (split_url, host_allowed).
            return cls(http=http, port=port, suffix=host[1:].rstrip("."))
        _check_name(host, text)
        return cls(http=http, port=port, host=host.rstrip("."))

    @classmethod
    def _parse_address(cls, rest: str, http: bool, text: str) -> Entry:
        port = None
        if rest.startswith("["):
            inside, bracket, after = rest[1:].partition("]")
            if not bracket:
                raise ValueError(
                    f"allowlist entry {echo_url(text)}: expected [address] or [address]:port"
                )
            rest = inside
            if after:
                if not after.startswith(":"):
                    raise ValueError(f"allowlist entry {echo_url(text)}: expected [address]:port")
                port = _port(after[1:], text)
        try:
            network = ipaddress.ip_network(rest, strict=False)
        except ValueError:
            raise ValueError(
                f"allowlist entry {echo_url(text)} is not a host[:port], address or network "
                "(entries name hosts, not URLs with paths)"
            ) from None
        return cls(http=http, port=port, network=network)

    def allows_port(self, port: int) -> bool:
        return self.port is None or self.port == port

    def names(self, host: str) -> bool:
        """Whether the entry matches the host name (not an address) ``host``."""
        if self.anything:
            return host not in METADATA_NAMES
        if self.host is not None:
            return self.host == host
        if self.suffix is not None:
            return host.endswith(self.suffix) and host not in METADATA_NAMES
        return False

    def covers(self, address: IPAddress, *, special: bool) -> bool:
        """Whether the entry allows connecting to ``address`` (a special address needs a
        network entry around it; a metadata address one naming exactly it)."""
        if self.network is None:
            return self.anything and not special
        candidates = [address]
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
        # A metadata address, however it is spelled (NAT64, 6to4, IPv4-mapped), only by an
        # entry naming exactly that one address.
        metadata = any(c in METADATA_ADDRESSES for c in candidates)
        if metadata and self.network.num_addresses != 1:
            return False
        return any(c.version == self.network.version and c in self.network for c in candidates)


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"allowlist entry {echo_url(entry)}: the port must be 1..65535")
    return int(text)


def _check_name(host: str, entry: str) -> None:
    if not _valid_name(host):
        raise ValueError(
            f"allowlist entry {echo_url(entry)} is not a host name, address or network"
        )


def _valid_name(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return (
        len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and bool(_TOP_LABEL.fullmatch(labels[-1]))
    )


class EgressPolicy:
    """The operator's allowlist for URLs callers name."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries = tuple(entries)

    @classmethod
    def parse(cls, text: str) -> EgressPolicy:
        """Entries separated by commas or whitespace; ``ValueError`` names a bad entry."""
        return cls(Entry.parse(part) for part in re.split(r"[\s,]+", text) if part)

    def check_url(self, url: str) -> None:
        """Refuse ``url`` unless its scheme, host and port match an entry (and, for an IP
        literal, its address is allowed). The message echoes at most a short prefix."""
        if not self.entries:
            raise UrlRefused("the operator allows no URL here (the allowlist is empty)")
        scheme, host, port, _ = split_url(url)  # refuses a query, as in every base URL
        address = _address(host)
        matching = [
            e for e in self.entries if e.allows_port(port) and (scheme == "https" or e.http)
        ]
        if address is not None:
            if not any(e.covers(address, special=is_special(address)) for e in matching):
                raise UrlRefused(self._not_listed(scheme, host, port))
        elif not any(e.names(host) for e in matching):
            raise UrlRefused(self._not_listed(scheme, host, port))

    def _not_listed(self, scheme: str, host: str, port: int) -> str:
        plain = " over plain http" if scheme == "http" else ""
        return f"host {echo(host)} port {port}{plain} is not in the operator's allowlist"

    def host_allowed(self, host: str, port: int) -> bool:
        """At connect time: the name being resolved matches an entry (any scheme: the URL's
        was checked by ``check_url``, and redirects are not followed)."""
        name = host.lower().rstrip(".")
        return any(e.allows_port(port) and e.names(name) for e in self.entries)

    def address_allowed(self, address: IPAddress, port: int) -> bool:
        """At connect time: a public address, or one an explicit entry allows."""
        special = is_special(address)
        if not special:
            return True
        return any(e.allows_port(port) and e.covers(address, special=True) for e in self.entries)

    def guarded_socket(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's ``socket_factory``: the last check, on the very address a socket is
        opened to (it also sees IP literals, which aiohttp connects to without resolving)."""
        family, kind, proto, _, sockaddr = addr_info
        address, port = _address(str(sockaddr[0]).partition("%")[0]), int(sockaddr[1])
        if address is None or not self.address_allowed(address, port):
            raise UrlRefused(f"address {echo(str(sockaddr[0]))} is not allowed")
        return socket.socket(family=family, type=kind, proto=proto)


class EgressResolver(AbstractResolver):
    """Resolves through ``inner`` (aiohttp's default resolver unless given) and keeps only
    the addresses the policy allows; a name the policy does not list is never looked up."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner
        self._owns_inner = inner is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not self.policy.host_allowed(host, port):
            raise UrlRefused(f"host {echo(host)} port {port} is not in the operator's allowlist")
        if self._inner is None:
            self._inner = aiohttp.DefaultResolver()  # needs the running loop: made here
        kept = []
        for result in await self._inner.resolve(host, port, family):
            address = _address(result["host"].partition("%")[0])
            if address is not None and self.policy.address_allowed(address, result["port"]):
                kept.append(result)
        if not kept:
            raise UrlRefused(
                f"host {echo(host)} resolves to an address the operator has not allowed "
                "(loopback, private, link-local and metadata addresses need an explicit "
                "address or network entry)"
            )
        return kept

    async def close(self) -> None:
        if self._inner is not None and self._owns_inner:
            await self._inner.close()


def guarded_connector(
    resolver: EgressResolver, *, ssl: SSLContext | bool = True
) -> aiohttp.TCPConnector:
    """An aiohttp connector on which every connection passes ``resolver.policy``: names
    through the resolver, every socket through ``guarded_socket``. Build it inside the
    event loop; it does not close the resolver (its owner does)."""
    return aiohttp.TCPConnector(
        resolver=resolver, socket_factory=resolver.policy.guarded_socket, ssl=ssl
    )


def header_value(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str:
    """The stripped value of gRPC metadata ``name`` (lower case), or ``""``."""
    for key, value in metadata or ():
        if key.lower() == name and isinstance(value, str) and value.strip():
            return value.strip()
    return ""
