"""A bound in seconds is named in full, in the message and in the ErrorInfo's
``max_seconds``: a client reads it back to trim its request. Written with ``:g`` it had
six digits: a 30-day GENSEARCH_GATEWAY_CACHE_MAX_TTL was "2.592e+06", and an Ask timeout
bound of 1234.5678 s was "1234.57", below what it allows."""

from __future__ import annotations

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb

from services.common.errors import InvalidArgument
from services.common.stream_idle import IdleLimit
from services.common.well_known import duration
from services.gateway.ask_request import budget
from services.gateway.generation_cache import check_block
from services.gateway.settings import GatewaySettings

THIRTY_DAYS = 30 * 86400


def test_a_cache_ttl_past_a_long_bound_names_it_in_full() -> None:
    settings = GatewaySettings(cache_max_ttl=THIRTY_DAYS)
    with pytest.raises(InvalidArgument) as refused:
        check_block(0, duration(THIRTY_DAYS + 1), settings, field="generate.cache")
    assert refused.value.metadata["max_seconds"] == "2592000"
    assert "at most 2592000 s" in refused.value.message


def test_an_ask_timeout_past_a_fractional_bound_names_it_in_full() -> None:
    settings = GatewaySettings(max_ask_timeout=1234.5678, ask_timeout=30)
    request = gw_pb.AskRequest(timeout=duration(1300))
    with pytest.raises(InvalidArgument) as refused:
        budget(request, settings, None)
    assert refused.value.metadata["max_seconds"] == "1234.5678"
    assert "(0, 1234.5678]" in refused.value.message


def test_stream_bounds_are_named_in_full() -> None:
    """The stream idle, stalled and too-long refusals name their bounds as the others do
    (they still used ``:g``: a client stream lasting 30 days at most read "2.592e+06")."""
    limit = IdleLimit(
        1234.5678, "IDLE", send_seconds=THIRTY_DAYS, send_setting="SEND",
        max_seconds=THIRTY_DAYS, max_setting="MAX",
    )  # fmt: skip
    assert limit.error().metadata["timeout_seconds"] == "1234.5678"
    assert "within 1234.5678 s" in limit.error().message
    assert limit.stalled().metadata["timeout_seconds"] == "2592000"
    assert limit.too_long().metadata["max_seconds"] == "2592000"
    assert "lasted its 2592000 s" in limit.too_long().message
