"""Every Redis key prefix setting keeps the Redis Cluster hash tags intact: a brace in a
prefix would make the first ``{...}`` of a key the prefix's, not the tenant's or user's,
so one call's keys could land in different slots (CROSSSLOT) or every tenant's in one."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from services.memory.settings import MemorySettings

PREFIXES = [
    (MemorySettings, "key_prefix"),
    (GatewaySettings, "quota_key_prefix"),
    (GenerationSettings, "limits_key_prefix"),
]


@pytest.mark.parametrize(("settings", "field"), PREFIXES)
@pytest.mark.parametrize("bad", ["gs{", "gs}", "{t}", "a b", "", "x" * 65])
def test_a_prefix_that_could_break_a_hash_tag_stops_the_service(
    settings: type[BaseSettings], field: str, bad: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        settings(**{field: bad})


@pytest.mark.parametrize(("settings", "field"), PREFIXES)
def test_a_plain_prefix_is_kept(settings: type[BaseSettings], field: str) -> None:
    assert getattr(settings(**{field: "prod-eu.gs:v2"}), field) == "prod-eu.gs:v2"
