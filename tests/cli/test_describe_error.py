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


def test_a_field_the_message_starts_with_is_named_once() -> None:
    # Before: "NOT_FOUND: name: collection 'Nope' not found (field name)".
    err = GensearchError(
        "name: collection 'Nope' not found",
        code=grpc.StatusCode.NOT_FOUND,
        metadata={"field": "name"},
    )
    assert describe_error(err) == "NOT_FOUND: collection 'Nope' not found (field name)"
    # A prefix that is not the field at fault stays: it is part of the message.
    other = GensearchError(
        "limit: too big", code=grpc.StatusCode.INVALID_ARGUMENT, metadata={"field": "offset"}
    )
    assert describe_error(other) == "INVALID_ARGUMENT: limit: too big (field offset)"


def test_a_message_worded_from_its_field_has_no_suffix_repeating_it() -> None:
    # The services word "generate.top_p must be …" when a message begins with its field;
    # before, the line read "… must be in (0, 1] (field generate.top_p)".
    err = GensearchError(
        "generate.top_p must be in (0, 1]",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        metadata={"field": "generate.top_p"},
        field_violations=[FieldViolation("generate.stop", "too many")],
    )
    assert describe_error(err) == (
        "INVALID_ARGUMENT: generate.top_p must be in (0, 1] (field generate.stop)"
    )


def test_a_missing_llm_key_says_how_the_cli_sends_one() -> None:
    # Before: only the service's words, "send metadata 'x-openai-api-key' or set
    # OPENAI_APIKEY or OPENAI_API_KEY": a CLI user has no way to send metadata but --llm-key.
    err = GensearchError(
        "provider 'openai' needs an API key: send metadata 'x-openai-api-key' or set "
        "OPENAI_APIKEY or OPENAI_API_KEY",
        code=grpc.StatusCode.UNAUTHENTICATED,
        reason="MISSING_PROVIDER_API_KEY",
        metadata={"provider": "openai", "field": "x-openai-api-key"},  # as the services send it
    )
    # No "(field x-openai-api-key)": the flag is the CLI's way to send that header.
    assert describe_error(err).endswith("OPENAI_API_KEY; with gensearch: --llm-key openai=KEY")


def test_a_missing_or_wrong_api_key_says_how_the_cli_sends_one() -> None:
    # Before: "missing credentials: send metadata 'authorization: Bearer <api key>'" and
    # "invalid API key", with no word of --api-key or GENSEARCH_API_KEY.
    missing = GensearchError(
        "missing credentials: send metadata 'authorization: Bearer <api key>'",
        code=grpc.StatusCode.UNAUTHENTICATED,
        reason="MISSING_CREDENTIALS",
        metadata={"field": "authorization"},  # as the services name it
    )
    # No "(field authorization)": a CLI user sends that header only through the flag.
    assert describe_error(missing) == (
        "UNAUTHENTICATED: missing credentials: send metadata 'authorization: Bearer <api key>'"
        "; with gensearch: --api-key KEY or GENSEARCH_API_KEY"
    )
    wrong = GensearchError(
        "authorization: invalid API key",  # the services' message, naming the header
        code=grpc.StatusCode.UNAUTHENTICATED,
        reason="INVALID_API_KEY",
        metadata={"field": "authorization"},
    )
    assert describe_error(wrong) == (
        "UNAUTHENTICATED: invalid API key; with gensearch: check --api-key or GENSEARCH_API_KEY"
    )


def test_a_provider_too_slow_for_the_deadline_says_how_to_give_it_longer() -> None:
    # Before: "DEADLINE_EXCEEDED: provider 'local' did not answer within the deadline" and
    # nothing more: the README's `gensearch ask` after `make run` failed so on a loaded
    # machine (the answer budget is 30 s), and a new user had no word of --timeout.
    for reason in ("UPSTREAM_TIMEOUT", "PROVIDER_QUEUE_TIMEOUT"):
        err = GensearchError(
            "provider 'local' did not answer within the deadline",
            code=grpc.StatusCode.DEADLINE_EXCEEDED,
            reason=reason,
            metadata={"provider": "local"},
        )
        assert describe_error(err) == (
            "DEADLINE_EXCEEDED: provider 'local' did not answer within the deadline"
            "; with gensearch: a longer deadline with --timeout SECONDS"
        )
    # A slot freed after the provider's own first-byte wait is not the caller's deadline.
    first_byte = GensearchError(
        "provider 'local' sent no first byte in 60 s",
        code=grpc.StatusCode.DEADLINE_EXCEEDED,
        reason="UPSTREAM_FIRST_BYTE_TIMEOUT",
    )
    assert "--timeout" not in describe_error(first_byte)
