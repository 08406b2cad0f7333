"""Where a collection's OpenAI-compatible vectorizer may send texts, and with whose key.

Two kinds of endpoint:

* **the operator's**: a base URL the operator paired with a key variable in
  ``GENSEARCH_RETRIEVAL_EMBEDDING_KEY_URLS`` (by default ``OPENAI_API_KEY`` and
  ``OPENAI_APIKEY`` with ``https://api.openai.com/v1``). A collection naming that base URL
  may name that variable as ``api_key_env``: the operator's key goes to the URL the
  operator configured it with, and nowhere else. Reached through the operator's HTTP
  client, without the allowlist (the operator chose it).
* **a caller's**: any other base URL. It must pass the operator's allowlist
  (``GENSEARCH_RETRIEVAL_ALLOWED_HOSTS``, empty by default: no caller URL at all), checked
  here and again on every connection (``services.common.egress``). It gets no key of the
  operator's: only the key the caller sends with the request (``x-embedding-api-key``).

A caller's own key goes where that caller chose, or where the operator did: to the
operator's endpoints, and to a caller's URL only when the caller names that URL beside the
key (``x-embedding-base-url``; ``caller_key_for``). A collection's URL is chosen by whoever
set its vectorizer (a tenant admin): without the caller's confirmation, another user's key
sent with a search or an insert would go to a server that admin controls.

Every refusal is PERMISSION_DENIED naming the field, with reason ``URL_NOT_ALLOWED``,
``KEY_NOT_ALLOWED`` or ``KEY_DESTINATION_UNCONFIRMED``, and echoes at most a short prefix of
what was refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.egress import (
    EMBEDDING_KEY_HEADER,
    MAX_URL,
    EgressPolicy,
    UrlRefused,
    canonical_url,
    echo,
    echo_url,
    url_not_allowed,
)
from services.common.errors import PermissionDenied
from services.common.values import check_chars

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
KEY_NOT_ALLOWED = "KEY_NOT_ALLOWED"
KEY_DESTINATION_UNCONFIRMED = "KEY_DESTINATION_UNCONFIRMED"
ALLOWLIST_SETTING = "GENSEARCH_RETRIEVAL_ALLOWED_HOSTS"
MAX_URL_SETTING = "GENSEARCH_RETRIEVAL_MAX_URL_CHARS"
KEY_URLS_SETTING = "GENSEARCH_RETRIEVAL_EMBEDDING_KEY_URLS"
OPENAI_BASE_URL = "https://api.openai.com/v1"
# The operator's default pairs: an OpenAI key goes to OpenAI.
DEFAULT_KEY_URLS = {"OPENAI_API_KEY": OPENAI_BASE_URL, "OPENAI_APIKEY": OPENAI_BASE_URL}


@dataclass(frozen=True)
class Endpoint:
    """A vectorizer's endpoint once the policy has accepted it."""

    base_url: str
    # The operator configured this base URL (its HTTP client, no allowlist).
    operator: bool
    # The operator's key variable to send there ("" for none).
    key_env: str


@dataclass(frozen=True)
class EmbeddingPolicy:
    """The operator's allowlist for callers' URLs, and which key variable goes where."""

    egress: EgressPolicy = field(default_factory=EgressPolicy)
    # key variable -> the canonical base URL (``canonical_url``) its value may be sent to.
    key_urls: Mapping[str, str] = field(default_factory=dict)
    # GENSEARCH_RETRIEVAL_MAX_URL_CHARS: the longest base_url a caller may name.
    max_url_chars: int = MAX_URL

    def endpoint(self, vec: pb.Vectorizer, where: str, *, stored: bool = False) -> Endpoint:
        """The endpoint of ``vec`` if the operator allows it; PERMISSION_DENIED otherwise.
        ``where`` is the vectorizer's field path (``collection.vectorizer``). ``stored``:
        a collection's vectorizer at use, whose URL was held to MAX_URL_CHARS when it was
        set; a bound lowered since does not refuse the collection's every later call (it
        bounds what a caller sends), while the allowlist, which may have tightened, is
        read again."""
        if not stored:
            check_chars(vec.base_url, f"{where}.base_url", self.max_url_chars, MAX_URL_SETTING)
        try:
            canonical = canonical_url(vec.base_url)
        except UrlRefused:
            canonical = ""
        operator = bool(canonical) and canonical in self.key_urls.values()
        if not operator:
            try:
                self.egress.check_url(vec.base_url)
            except UrlRefused as err:
                raise url_not_allowed(f"{where}.base_url", err.why, ALLOWLIST_SETTING) from None
        if vec.api_key_env and self.key_urls.get(vec.api_key_env) != canonical:
            raise PermissionDenied(
                f"{where}.api_key_env: the operator's key {echo(vec.api_key_env)} is sent "
                f"only to the base URL the operator paired it with ({KEY_URLS_SETTING}); "
                f"send your own key for this endpoint in the {EMBEDDING_KEY_HEADER} metadata",
                field=f"{where}.api_key_env",
                reason=KEY_NOT_ALLOWED,
            )
        # Called as checked (canonical): the vectorizer's own spelling ("127.0.0.1.",
        # "HTTP://") passed the allowlist, and the HTTP client then failed to connect to it.
        return Endpoint(base_url=canonical, operator=operator, key_env=vec.api_key_env)


def _same_url(a: str, b: str) -> bool:
    try:
        return canonical_url(a) == canonical_url(b)
    except UrlRefused:
        return False


def caller_key_for(
    key: str,
    named: str,
    base_url: str,
    *,
    where: str,
    key_header: str,
    url_header: str,
    collection: str,
) -> str:
    """``key`` (the caller's, from ``key_header``) if it may go to ``base_url``, a caller's
    URL set on collection ``collection`` (field ``where``) by whoever set it: only when the
    caller named the same base URL in ``url_header`` (``named``). PERMISSION_DENIED naming
    ``url_header`` otherwise, before anything is sent. No key: nothing to protect."""
    if not key or _same_url(named, base_url):
        return key
    said = (
        f"your {url_header} names another URL ({echo_url(named)})"
        if named
        else f"name it in the {url_header} metadata"
    )
    raise PermissionDenied(
        f"{where}: collection {collection!r} sends to {echo_url(base_url)}, a URL its admin "
        f"set, not one of the operator's; your {key_header} goes there only if you confirm "
        f"that URL: {said} (exactly {where}, see GetCollection), or send no key",
        field=url_header,
        reason=KEY_DESTINATION_UNCONFIRMED,
        metadata={"collection": collection, "base_url_field": where},
    )
