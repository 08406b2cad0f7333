"""`gensearch status` against a gateway with API keys, when the CLI has none (no stack)."""

from __future__ import annotations

import asyncio

import grpc
from gensearch.client import GensearchError

from services.cli.admin import _timed


def test_a_part_refused_for_want_of_a_key_says_which_flag_sends_one() -> None:
    # Before: "missing credentials: send metadata 'authorization: Bearer <api …", cut by the
    # table before saying anything a CLI user can act on.
    async def probe() -> str:
        raise GensearchError(
            "missing credentials: send metadata 'authorization: Bearer <api key>'",
            code=grpc.StatusCode.UNAUTHENTICATED,
            reason="MISSING_CREDENTIALS",
        )

    part = asyncio.run(_timed("memory", "via 127.0.0.1:50050", probe))
    assert part.status == "UNAUTHENTICATED"
    assert part.detail == "no API key: --api-key KEY or GENSEARCH_API_KEY"

    async def wrong() -> str:
        raise GensearchError(
            "invalid API key", code=grpc.StatusCode.UNAUTHENTICATED, reason="INVALID_API_KEY"
        )

    part = asyncio.run(_timed("memory", "via 127.0.0.1:50050", wrong))
    assert part.detail == "invalid API key: check --api-key or GENSEARCH_API_KEY"
