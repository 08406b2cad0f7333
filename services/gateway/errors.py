"""Failures scoped to one hit (or to the grouped call) instead of the whole search."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from services.common.errors import ServiceError

log = logging.getLogger("gensearch.gateway")


@dataclass(frozen=True)
class HitError:
    code: grpc.StatusCode
    message: str
    reason: str
    # The ErrorInfo metadata of the failed call (attempts, wait_ms, provider, ...).
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def status(self) -> str:
        return self.code.name

    @property
    def number(self) -> int:
        return int(self.code.value[0])

    @classmethod
    def of(cls, err: BaseException) -> HitError:
        """What a caller may see of ``err``: a ServiceError as it is, a timeout as
        DEADLINE_EXCEEDED, anything else as a generic INTERNAL (details go to the log)."""
        known = _known(err)
        if known is not None:
            return known
        log.error("unexpected error in a generation call", exc_info=err)
        return cls(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL")

    @staticmethod
    def outcome(err: BaseException) -> str:
        """The status name a trace records for ``err`` (CANCELLED when the fan-out stopped
        the call: its budget ran out or its caller left)."""
        if isinstance(err, asyncio.CancelledError):
            return "CANCELLED"
        known = _known(err)
        return "INTERNAL" if known is None else known.status


def _known(err: BaseException) -> HitError | None:
    if isinstance(err, ServiceError):
        return HitError(err.code, err.message, err.reason, dict(err.metadata))
    if isinstance(err, TimeoutError | asyncio.TimeoutError):
        return deadline_exceeded()
    return None


def deadline_exceeded(field: str | None = None) -> HitError:
    """A hit cut off when the generation phase's budget ran out. ``field``: the request
    field that set that budget (``generate.timeout``), named in the message and metadata
    as any error about a client's field; None when the call's own deadline set it."""
    if field is None:
        return HitError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "generation did not finish within the timeout",
            "DEADLINE_EXCEEDED",
        )
    return HitError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"generation did not finish within {field}: a longer one leaves the model time",
        "DEADLINE_EXCEEDED",
        {"field": field},
    )
