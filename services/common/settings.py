"""Settings shared by every service (pydantic-settings, env prefix ``GENSEARCH_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """What every service reads from the environment.

    Each service subclasses this with its own port fields, e.g. ``GENSEARCH_MEMORY_PORT``.
    """

    model_config = SettingsConfigDict(env_prefix="GENSEARCH_", extra="ignore")

    # Bind address of gRPC and metrics servers; 0.0.0.0 in containers.
    host: str = "127.0.0.1"
    data_dir: Path = Path("data")
    # "alice:key1,bob:key2". Empty: every caller is the user "anonymous".
    api_keys: SecretStr = SecretStr("")
    # Shared secret that lets a trusted peer (the gateway) assert the caller's identity
    # with the x-gensearch-user header. Empty: forwarded identities are not accepted.
    internal_token: SecretStr = SecretStr("")
    log_level: str = "INFO"
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
