"""Settings (pydantic-settings): one namespace per service, a few shared names.

Each service's class sets ``env_prefix`` to its own namespace, so the memory service's
``port`` is ``GENSEARCH_MEMORY_PORT`` and the gateway's is ``GENSEARCH_GATEWAY_PORT``; no
variable name means two things. Only what is truly the same for every service is read
unprefixed: ``GENSEARCH_HOST``, ``GENSEARCH_DATA_DIR``, ``GENSEARCH_API_KEYS``,
``GENSEARCH_INTERNAL_TOKEN`` and ``GENSEARCH_LOG_LEVEL`` (fields with an explicit
``validation_alias``). Server knobs that a service may need differently (grace period,
message size, connection age) live in each namespace.

``warn_unknown_variables`` names, at start, every ``GENSEARCH_*`` variable that no part of
the running process reads: a typo would otherwise be silently ignored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("gensearch.settings")

PREFIX = "GENSEARCH_"
# Every service's namespace; a variable in one of them belongs to that service alone.
NAMESPACES: dict[str, str] = {
    "gateway": "GENSEARCH_GATEWAY_",
    "memory": "GENSEARCH_MEMORY_",
    "retrieval": "GENSEARCH_RETRIEVAL_",
    "generation": "GENSEARCH_GENERATION_",
}
# Read by the command-line client, the dev-only launchers and the test suite, never by a
# service (docs/operations.md lists them).
TOOL_VARIABLES = frozenset(
    {
        "GENSEARCH_ADDRESS",  # gensearch CLI: the gateway
        "GENSEARCH_API_KEY",  # gensearch CLI: its own key (the services read API_KEYS)
        "GENSEARCH_STATE_DIR",  # gensearch CLI: the last conversation
        "GENSEARCH_DEBUG",  # gensearch CLI: tracebacks
        "GENSEARCH_DEMO_LIMIT",  # gensearch up --demo
        "GENSEARCH_DEMO_MAX_TOKENS",  # gensearch up --demo
        "GENSEARCH_REDIS_SERVER",  # dev launcher: which Redis-protocol binary to start
        "GENSEARCH_ALLOW_SKIP_KUBECTL",  # test suite: deploy tests may skip without kubectl
    }
)


class CommonSettings(BaseSettings):
    """The base of every service's settings.

    A service class sets ``model_config = SettingsConfigDict(env_prefix=NAMESPACES[...])``;
    fields are then read from its namespace, except the shared ones below, whose
    ``validation_alias`` is their unprefixed variable. Fields may also be passed by name
    (``MemorySettings(port=0)``).
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    # --- shared by every service (unprefixed) ---
    # Bind address of gRPC and metrics servers; 0.0.0.0 in containers.
    host: str = Field(default="127.0.0.1", validation_alias="GENSEARCH_HOST")
    data_dir: Path = Field(default=Path("data"), validation_alias="GENSEARCH_DATA_DIR")
    # "alice:key1,bob:key2". Empty: every caller is the user "anonymous".
    api_keys: SecretStr = Field(default=SecretStr(""), validation_alias="GENSEARCH_API_KEYS")
    # Shared secret that lets a trusted peer (the gateway) assert the caller's identity
    # with the x-gensearch-user header. Empty: forwarded identities are not accepted.
    internal_token: SecretStr = Field(
        default=SecretStr(""), validation_alias="GENSEARCH_INTERNAL_TOKEN"
    )
    log_level: str = Field(default="INFO", validation_alias="GENSEARCH_LOG_LEVEL")

    # --- per service (in the service's namespace) ---
    # Seconds in-flight calls get to finish on SIGTERM.
    grace_period: float = Field(default=10.0, ge=0)
    # Largest gRPC message accepted, in bytes.
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Seconds after which the server asks a client to reconnect (HTTP/2 GOAWAY; calls in
    # flight finish first). 0 = never. Clients that balance over DNS (dns:/// targets with
    # round_robin) resolve again on reconnect, so this is how they find new replicas.
    max_connection_age: float = Field(default=0.0, ge=0)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    def api_key_map(self) -> dict[str, str]:
        """API key -> user, parsed from ``api_keys``."""
        keys: dict[str, str] = {}
        raw = self.api_keys.get_secret_value()
        for pair in filter(None, (p.strip() for p in raw.split(","))):
            user, sep, key = pair.partition(":")
            if not sep or not user.strip() or not key.strip():
                # Never echo the pair itself: it holds a key.
                raise ValueError("GENSEARCH_API_KEYS must be comma-separated user:key pairs")
            keys[key.strip()] = user.strip()
        return keys

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Environment variable -> field, for every field of this class."""
        prefix = str(cls.model_config.get("env_prefix", ""))
        names: dict[str, str] = {}
        for field, info in cls.model_fields.items():
            alias = info.validation_alias
            names[(alias if isinstance(alias, str) else prefix + field).upper()] = field
        return names

    @classmethod
    def namespace(cls) -> str:
        return str(cls.model_config.get("env_prefix", "")).upper()

    def reads(self, name: str) -> bool:
        """Whether this service reads the variable ``name`` (upper case)."""
        return name in self.env_names()


def unknown_variables(
    *settings: CommonSettings, environ: Mapping[str, str] | None = None
) -> list[str]:
    """``GENSEARCH_*`` variables that none of ``settings`` reads (sorted).

    A variable in the namespace of a service that is not among ``settings`` belongs to
    that service, not to a typo; the tools' variables are known too.
    """
    env = os.environ if environ is None else environ
    ours = {s.namespace() for s in settings}
    others = tuple(ns for ns in NAMESPACES.values() if ns not in ours)
    unknown = []
    for raw in env:
        name = raw.upper()
        if not name.startswith(PREFIX) or name in TOOL_VARIABLES or name.startswith(others):
            continue
        if not any(s.reads(name) for s in settings):
            unknown.append(raw)
    return sorted(unknown)


def warn_unknown_variables(*settings: CommonSettings) -> list[str]:
    """Logs (names only, never values) the variables ``unknown_variables`` finds."""
    unknown = unknown_variables(*settings)
    if unknown:
        log.warning(
            "unknown GENSEARCH_ variables ignored (a typo? see docs/operations.md): %s",
            ", ".join(unknown),
            extra={"variables": unknown},
        )
    return unknown
