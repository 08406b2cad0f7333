"""Opaque, signed page tokens for keyset pagination.

A token carries which list it belongs to (conversations, or the interactions of one
conversation), whom it was issued to (a digest of tenant and user: a token handed to alice
is refused for bob, and for alice of another tenant) and the cursor: the sort key of the
last item returned. The next page starts strictly after it, so items created in between
never shift the pages (no skip, no repeat), unlike an offset. The HMAC stops clients from
forging cursors; the version lets the format change later without misreading old tokens.

The cursor is also sealed (version 3): a page of one of two owners sharing a list (the
legacy owners of one tag, docs/memory.md#legacy-owners) may end on the other's member,
"<update_ms>:<conversation_id>", which the next page goes on from. In the clear, anyone
decoding the token read the other tenant's conversation id and when it was last updated.
It is encrypted with AES-GCM (the ``cryptography`` package) under a key of its own
derived from the secret and a fresh random nonce, then MACed with the rest. Version 2
tokens (cursor in the clear) are still read, so paging under way goes on across the
upgrade.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import InvalidArgument

VERSION = 3
# Still read: the cursor in the clear.
_PLAIN_VERSION = 2
_NONCE_BYTES = 12
# Not a setting: it bounds no caller's data, only how much of a text we never issued is
# read before refusing it (every token ``encode`` writes is far shorter).
MAX_TOKEN_CHARS = 512
_MAC_BYTES = 16
NOT_ISSUED = "page_token is not a token this service issued"
# What ``encode`` writes: URL-safe base64 without padding.
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


class PageTokens:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("page token secret must be at least 16 bytes")
        self._secret = secret
        # Another key for sealing cursors than for MACs, from the one secret.
        self._cipher = AESGCM(hmac.new(secret, b"page-token-cursor", hashlib.sha256).digest())

    def _seal(self, cursor: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher.encrypt(nonce, cursor.encode(), None)
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()

    def _unseal(self, sealed: str) -> str | None:
        """The cursor ``_seal`` sealed (the MAC already checked); None: not one."""
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            plain = self._cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], None)
            return plain.decode()
        except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
            return None

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def _holder(self, owner: str) -> str:
        # A digest, so the token does not carry the user's name in the clear.
        return hashlib.sha256(owner.encode()).hexdigest()[:16]

    def encode(self, kind: str, scope: str, cursor: str, owner: str) -> str:
        fields = [VERSION, kind, scope, self._holder(owner), self._seal(cursor)]
        payload = json.dumps(fields, separators=(",", ":")).encode()
        raw = payload + self._mac(payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def decode(self, token: str, kind: str, scope: str, owner: str) -> str:
        """The cursor in ``token``; INVALID_ARGUMENT unless it was made by us for this list
        and this ``owner``."""
        return self.open(unwrap(token), kind, scope, owner)

    def open(self, raw: bytes, kind: str, scope: str, owner: str) -> str:
        """The cursor in a token's bytes (from ``unwrap``): the checks that need the key."""
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise _invalid(NOT_ISSUED)
        try:
            fields = json.loads(payload)
        except (ValueError, TypeError):
            raise _invalid(NOT_ISSUED) from None
        if not isinstance(fields, list) or not fields or fields[0] not in (VERSION, _PLAIN_VERSION):
            raise _invalid("page_token is from an incompatible version; start from page one")
        try:
            _, token_kind, token_scope, holder, cursor = fields
        except ValueError:
            raise _invalid(NOT_ISSUED) from None
        if holder != self._holder(owner):
            # Answered as a token we never issued, word for word: another caller's token
            # is another tenant's (or user's) thing, and says nothing more than a missing
            # one would (not even that it is genuine).
            raise _invalid(NOT_ISSUED)
        if token_kind != kind or token_scope != scope or not isinstance(cursor, str):
            raise _invalid("page_token belongs to a different list")
        if fields[0] == _PLAIN_VERSION:
            return cursor
        unsealed = self._unseal(cursor)
        if unsealed is None:  # MACed by us, so never; as a token we did not issue
            raise _invalid(NOT_ISSUED)
        return unsealed


def unwrap(token: str) -> bytes:
    """A token's bytes, checked for the form ``encode`` writes. Needs no key: the caller
    checks this first, so a malformed token is INVALID_ARGUMENT even when the key (kept in
    Redis unless configured) cannot be had."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid("page_token is too long")
    # Only the text issued: base64 decoding skips characters outside its alphabet
    # and ignores padding and a last character's unused bits, so one token would
    # otherwise be many texts (a space, a '!' or '==' added, spare bits set).
    if not _TOKEN_CHARS.fullmatch(token):
        raise _invalid(NOT_ISSUED)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _invalid(NOT_ISSUED) from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        raise _invalid(NOT_ISSUED)
    return raw


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, field="page_token", reason="INVALID_PAGE_TOKEN")
