"""The CLI's one connection: the Python client (gensearch.client) with the caller's credentials.

The gateway serves GatewayService, and forwards MemoryService, RetrievalService and
GenerationService with the caller's identity, so one address and one key reach everything.
Credentials travel as metadata on every call: ``authorization: Bearer <key>`` and, per
provider, ``x-<provider>-api-key``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from gensearch.client import DEFAULT_ADDRESS, AsyncGensearch, GensearchError

from services.cli.output import KEY_HINTS, MISSING_LLM_KEY, key_hint

_PROVIDER_KEY = "[a-z0-9][a-z0-9_-]*"


class CliError(Exception):
    """A failure worth one line on stderr (no traceback)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CliError):
    """A flag or argument the command cannot use: exit code 2, as argparse's own."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def int32(text: str) -> int:
    """argparse type of a count that goes into an int32 field: past it, the protobuf
    library's "ValueError: Value out of range" came out of the first call."""
    return _integer(text, INT32_MIN, INT32_MAX)


def int64(text: str) -> int:
    """argparse type of a value that goes into an int64 field (``--seed``), as ``int32``."""
    return _integer(text, INT64_MIN, INT64_MAX)


def _integer(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} is not an integer from {low} to {high}")
    return value


def seconds(text: str) -> float:
    """argparse type of --timeout: a positive, finite number of seconds (0, a negative or
    NaN made every call fail DEADLINE_EXCEEDED "took longer than its deadline")."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


@dataclass
class Connection:
    """Where the gateway is and who we are."""

    address: str = DEFAULT_ADDRESS
    api_key: str = ""
    # provider name -> API key, sent as x-<provider>-api-key.
    llm_keys: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None

    @classmethod
    def from_env(
        cls,
        address: str | None = None,
        api_key: str | None = None,
        llm_keys: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Connection:
        if api_key is None:
            api_key, flag = os.environ.get("GENSEARCH_API_KEY", ""), "--api-key (GENSEARCH_API_KEY)"
        else:
            flag = "--api-key"
        if address:
            where = "--address"
        else:
            address = os.environ.get("GENSEARCH_ADDRESS") or DEFAULT_ADDRESS
            where = "--address (GENSEARCH_ADDRESS)"
        return cls(
            address=_target(address, where),
            api_key=_sendable(api_key, flag),
            llm_keys=parse_llm_keys(llm_keys),
            timeout=timeout,
        )


def _target(address: str, flag: str) -> str:
    """HOST:PORT (or any gRPC target: ``dns:///…``, ``unix:…``). A URL, as the TypeScript
    client's GENSEARCH_URL takes, reached gRPC's resolver as a host name ("errors resolving
    http://localhost:50050: … Misformatted domain name"), and a host without a port was
    "cannot reach the gateway" (gRPC tried port 443): both are usage mistakes, said so."""
    scheme = re.match(r"(?i)(https?)://", address)
    if scheme:
        host_port = address[scheme.end() :].split("/", 1)[0]
        if ":" not in host_port:
            host_port = f"{host_port or 'HOST'}:PORT"
        raise UsageError(f"{flag} takes HOST:PORT, not a URL: {host_port} rather than {address}")
    if address and ":" not in address:
        raise UsageError(f"{flag} {address!r} has no port: give HOST:PORT, e.g. {address}:50050")
    return address


def _sendable(key: str, flag: str) -> str:
    """A key goes as gRPC metadata, which must be printable ASCII (else grpc core fails the
    first call with an ExecuteBatchError): a usage mistake, naming the flag, not the key."""
    if not all(" " <= char <= "~" for char in key):
        raise UsageError(
            f"{flag}: the key must be printable ASCII (it travels as gRPC metadata); "
            "check for a pasted character such as '\u2026' or a line break"
        )
    return key


def parse_llm_keys(values: Sequence[str]) -> dict[str, str]:
    """``["openai=sk-...", ...]`` -> ``{"openai": "sk-..."}`` (the key is never echoed)."""
    keys: dict[str, str] = {}
    for value in values:
        provider, sep, key = value.partition("=")
        provider = provider.strip().lower()
        if not sep or not key.strip() or not re.fullmatch(_PROVIDER_KEY, provider):
            # A usage mistake (exit 2); the value is not echoed: it may be the key alone.
            raise UsageError("--llm-key must look like PROVIDER=KEY, e.g. openai=sk-...")
        keys[provider] = _sendable(key.strip(), f"--llm-key {provider}=")
    return keys


class Client(AsyncGensearch):
    """The Python client (gensearch.client) on the CLI's connection; use as
    ``async with Client(conn) as client``."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(
            conn.address,
            api_key=conn.api_key,
            llm_keys=conn.llm_keys,
            # Per command (``timeout(default)``); None: no deadline unless --timeout.
            timeout=conn.timeout,
        )
        self.conn = conn

    def timeout(self, default: float | None) -> float | None:
        return self.conn.timeout if self.conn.timeout is not None else default


async def check_health(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The grpc.health.v1 status name of ``service`` at ``address`` (UNKNOWN_SERVICE when it
    is not registered there); other failures raise ``GensearchError``."""
    # No credentials and no retries: a probe reports what it sees at once.
    async with AsyncGensearch(address, api_key="", retry=None, timeout=timeout) as probe:
        try:
            return await probe.health(service)
        except GensearchError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return "UNKNOWN_SERVICE"
            raise


def describe_error(err: GensearchError, address: str = "", what: str = "the gateway") -> str:
    """One line: ``NOT_FOUND: conversation not found (field conversation_id)``."""
    code = err.code
    message = err.message.strip() or code.name
    if is_unreachable(err):
        where = f" at {address}" if address else ""
        hint = (
            " (is `gensearch up` running? set --address or GENSEARCH_ADDRESS)"
            if what == "the gateway"
            else ""
        )
        return f"UNAVAILABLE: cannot reach {what}{where}{hint}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and message.lower() == "deadline exceeded":
        message = "the call took longer than its deadline (raise it with --timeout)"
    fields = [v.field for v in err.field_violations if v.field]
    if err.metadata.get("field"):
        fields.append(err.metadata["field"])
    fields = list(dict.fromkeys(fields))
    # A key's field is a header (`authorization`, `x-openai-api-key`), which a CLI user
    # never writes: the hint names the flag that sends it instead.
    named = fields and err.reason not in KEY_HINTS and err.reason != MISSING_LLM_KEY
    message = " ".join(message.split())
    for name in fields:  # "name: … (field name)" names it once, in the suffix
        if message.startswith(f"{name}: "):
            message = message[len(name) + 2 :]
            break
    # "generate.top_p must be …" names its field already (the services word a message
    # so when it begins with the field): no suffix repeating it.
    suffixed = [name for name in fields if not message.startswith(f"{name} ")]
    suffix = f" (field {', '.join(suffixed)})" if named and suffixed else ""
    hint = key_hint(err.reason, err.metadata.get("provider", ""), message)
    return f"{code.name}: {message}{suffix}{hint}"


def is_unreachable(err: GensearchError) -> bool:
    """Nothing answered at the address (refused, unresolvable, no route), as opposed to
    a server that answered UNAVAILABLE."""
    return err.code == grpc.StatusCode.UNAVAILABLE and _is_connect_failure(err.message)


def _is_connect_failure(message: str) -> bool:
    lowered = message.lower()
    return any(
        hint in lowered
        for hint in ("failed to connect", "connection refused", "dns resolution", "unreachable")
    )
