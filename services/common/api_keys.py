"""API keys → identities, from ``GENSEARCH_API_KEYS`` and ``GENSEARCH_API_KEYS_FILE``.

The variable is a comma-separated list of ``<who>:<key>`` (the key is everything after the
first ``:``). ``<who>`` is either

* ``user`` — the historical form: a user alone in a tenant of the same name, role admin;
* ``user@tenant/role`` — the extended form, recognised when it ends in ``/admin``,
  ``/writer`` or ``/reader`` (``user@tenant/<anything else>`` is refused: a mistyped
  role would otherwise make an admin); the tenant is what follows the *last* ``@``, so a user name
  may itself contain ``@`` (``ann@example.com@acme/reader:k1``).

The file is YAML::

    keys:
      - {key: "…", user: alice, tenant: acme, role: admin}
      - {key: "…", user: bob, tenant: acme, role: reader}

Both may be set; a key may appear once in all. Spaces around a key are trimmed in the
variable (as from a client's ``Bearer``), refused in the file (a YAML string holds them on
purpose; trimmed, the key served would not be the one written; kept, it could never
match). Errors name the entry and the field at fault, never a key: they reach logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from services.common.auth import (
    DEFAULT_TENANT,
    Identity,
    Role,
    check_tenant,
    check_user,
    parse_role,
)

_FIELDS = ("key", "user", "tenant", "role")
MAX_KEYS = 100_000


class ApiKeyError(ValueError):
    """A malformed key configuration (the message holds no key)."""


def header_value_problem(value: str) -> str | None:
    """Why ``value`` (a key or token) can never arrive in a gRPC header, or None. gRPC
    sends a text header's value only if every character is printable ASCII: a key with a
    control character, a newline (a Secret made from a file ending in one) or a
    non-ASCII letter was accepted at start and then matched no call, and a gateway whose
    internal token held one failed every call it passed on. Names no character: the
    message may reach logs and the value is a secret."""
    if not all(" " <= c <= "~" for c in value):
        return "must be printable ASCII (no control characters, newlines or non-ASCII letters)"
    return None


# One configured key: where it is written (for errors), the key, whom it identifies.
_Entry = tuple[str, str, Identity]


def _env_entries(raw: str) -> list[_Entry]:
    """The ``GENSEARCH_API_KEYS`` syntax above, entry by entry."""
    entries: list[_Entry] = []
    for n, pair in enumerate(filter(None, (p.strip() for p in raw.split(",")))):
        who, sep, key = pair.partition(":")
        key = key.strip()
        where = f"GENSEARCH_API_KEYS entry {n}"
        if not sep or not who.strip() or not key:
            # Never echo the pair itself: it holds a key.
            raise ApiKeyError(
                f"{where}: entries must be user:key or user@tenant/role:key, comma-separated"
            )
        problem = header_value_problem(key)
        if problem:
            raise ApiKeyError(f"{where}: the key {problem}")
        entries.append((where, key, _parse_who(who.strip(), where)))
    return entries


def _parse_who(who: str, where: str) -> Identity:
    head, slash, role_name = who.rpartition("/")
    role = parse_role(role_name) if slash else None
    if role is None:
        if slash and "@" in head:
            # user@tenant/<not a role>: a mistyped role, which the historical form would
            # silently take as an admin named after the whole of it.
            raise ApiKeyError(
                f"{where}: the role after '/' must be admin, writer or reader "
                "(the extended form is user@tenant/role:key)"
            )
        # The historical form: the user is alone in a tenant named after it.
        return _identity(who, who, Role.ADMIN, where)
    user, at, tenant = head.rpartition("@")
    if not at:
        raise ApiKeyError(f"{where}: the extended form is user@tenant/role:key")
    return _identity(user, tenant, role, where)


def _identity(user: str, tenant: str, role: Role, where: str) -> Identity:
    for problem in (check_user(user), check_tenant(tenant)):
        if problem is not None:
            raise ApiKeyError(f"{where}: {problem}")
    return Identity(user, tenant, role, client_key=True)


def _collect(entries: Iterable[_Entry]) -> dict[str, Identity]:
    """Key -> identity; a key given twice names both entries (not the key), so that an
    operator with many keys finds the two lines that clash."""
    keys: dict[str, Identity] = {}
    places: dict[str, str] = {}
    for where, key, identity in entries:
        if key in places:
            raise ApiKeyError(f"{where}: this key is already given to {places[key]}")
        if len(keys) >= MAX_KEYS:
            raise ApiKeyError(f"{where}: more than {MAX_KEYS} keys")
        keys[key] = identity
        places[key] = where
    return keys


def _file_entries(path: Path) -> list[_Entry]:
    """The YAML keys file, entry by entry (strict: every field, nothing else)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ApiKeyError(
            f"GENSEARCH_API_KEYS_FILE {str(path)!r} cannot be read ({type(err).__name__})"
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        # The parser's message may quote the offending line (a key): name only where.
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ApiKeyError(f"GENSEARCH_API_KEYS_FILE is not valid YAML{line}") from None
    if not isinstance(document, dict) or set(document) != {"keys"}:
        raise ApiKeyError("GENSEARCH_API_KEYS_FILE must be a mapping with one field, 'keys'")
    listed = document["keys"]
    if listed is None:
        return []
    if not isinstance(listed, list):
        raise ApiKeyError("GENSEARCH_API_KEYS_FILE: 'keys' must be a list")
    entries: list[_Entry] = []
    for n, entry in enumerate(listed):
        where = f"GENSEARCH_API_KEYS_FILE keys[{n}]"
        entries.append((where, *_file_entry(entry, where)))
    return entries


def _file_entry(entry: Any, where: str) -> tuple[str, Identity]:
    if not isinstance(entry, dict):
        raise ApiKeyError(f"{where}: must be a mapping with {', '.join(_FIELDS)}")
    unknown = sorted(str(k)[:40] for k in entry if k not in _FIELDS)
    if unknown:
        raise ApiKeyError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for field in _FIELDS:
        if not isinstance(entry.get(field), str) or not entry[field]:
            raise ApiKeyError(f"{where}: '{field}' must be a non-empty string")
    role = parse_role(entry["role"])
    if role is None:
        raise ApiKeyError(f"{where}: 'role' must be one of {', '.join(r.value for r in Role)}")
    key = entry["key"]
    if key != key.strip() or "," in key:
        raise ApiKeyError(f"{where}: 'key' must not hold spaces around it or commas")
    problem = header_value_problem(key)
    if problem:
        raise ApiKeyError(f"{where}: 'key' {problem}")
    return key, _identity(entry["user"], entry["tenant"], role, where)


def load_keys(raw_env: str, path: Path | None) -> dict[str, Identity]:
    """Key -> identity of every configured key: the variable's, then the file's (a key
    may appear once); ``path`` None: no file. The one way keys are read (the settings'
    ``api_key_map``), so every source is checked alike."""
    entries = _env_entries(raw_env)
    if path is not None:
        entries += _file_entries(path)
    keys = _collect(entries)
    _check_legacy_owners(keys.values())
    return keys


def _check_legacy_owners(identities: Iterable[Identity]) -> None:
    # Conversations of the tenant "default" and of a user alone in a tenant of its own
    # name keep their pre-tenant keys (services/memory/store.py, Owner.digest): one user
    # name in both shares one key tag. Each conversation records its tenant, so neither
    # sees the other's, but they share one storage quota and only one of them owns the
    # conversations stored before tenants were recorded (docs/memory.md#legacy-owners):
    # refused within one key list, where it is most likely a mistake. The user "default"
    # of the tenant "default" is in both at once: one place, one owner.
    pairs = {(i.tenant, i.user) for i in identities}
    for tenant, user in sorted(pairs):
        if tenant == DEFAULT_TENANT and user != DEFAULT_TENANT and (user, user) in pairs:
            raise ApiKeyError(
                f"the user {user[:64]!r} is in the tenant {DEFAULT_TENANT!r} and in the tenant "
                f"{user[:64]!r}: give it one of them (they would share one memory storage quota)"
            )
