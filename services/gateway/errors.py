"""Failures scoped to one hit (or to the grouped call) instead of the whole search."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from services.common.errors import ServiceError

log = logging.getLogger("gensearch.gateway")


@dataclass(frozen=True)
class HitError:
    code: grpc.StatusCode
    message: str
    reason: str

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
        if isinstance(err, ServiceError):
            return cls(err.code, err.message, err.reason)
        if isinstance(err, TimeoutError | asyncio.TimeoutError):
            return deadline_exceeded()
        log.error("unexpected error in a generation call", exc_info=err)
        return cls(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL")


def deadline_exceeded() -> HitError:
    return HitError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "generation did not finish within the timeout",
        "DEADLINE_EXCEEDED",
    )
