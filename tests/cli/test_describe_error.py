"""The one error line of the CLI names every field at fault, once."""

from __future__ import annotations

import grpc
from gensearch.client import GensearchError
from gensearch.client.errors import FieldViolation

from services.cli.client import describe_error


def test_fields_from_violations_and_error_info_once() -> None:
    err = GensearchError(
        "bad  request\n",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        metadata={"field": "limit"},
        field_violations=[FieldViolation("limit", "too big"), FieldViolation("offset", "< 0")],
    )
    assert describe_error(err) == "INVALID_ARGUMENT: bad request (field limit, offset)"


def test_no_field_no_suffix() -> None:
    err = GensearchError("", code=grpc.StatusCode.NOT_FOUND)
    assert describe_error(err) == "NOT_FOUND: NOT_FOUND"
