"""An upstream's own refusal of the model (404 model_not_found from an endpoint that does
not check its models, so neither the gateway nor generation can tell before the call)
names the field the model came from: the request's own (INVALID_ARGUMENT), the
collection's stored one (FAILED_PRECONDITION on ``collection.generative.model``). It
was INVALID_ARGUMENT on ``model``, a field of the request the gateway built, which no
gateway request has. With the request's ``base_url`` the endpoint is the caller's: a
model the gateway's setting chose is not blamed on the operator there."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.rpc import error_details_pb2

from services.common.errors import InvalidArgument, ServiceError
from services.gateway.clients.generation import (
    BOUND_SETTING,
    CallerFields,
    caller_fields_refused,
)
from services.gateway.generator import complete
from tests.gateway.conftest import (
    ALICE,
    DIM,
    WITH_BODY,
    Stack,
    StackFactory,
    books_search,
    create_books,
    model_checking_upstream_stack,
    own_call,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info

UNSERVED = "no-such-model"
SETTING = "GENSEARCH_GATEWAY_DEFAULT_MODEL"


def _ask(**fields: object) -> gw_pb.AskRequest:
    return gw_pb.AskRequest(
        collection="Books",
        llm_question="Which?",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        **fields,  # type: ignore[arg-type]
    )


async def _hit_errors(stack: Stack, **generate: Any) -> list[gw_pb.GenerationError]:
    response = await stack.stub.GenerativeSearch(
        books_search(single_prompt="About {title}", **generate), metadata=ALICE
    )
    assert response.hits
    return [hit.generation.error for hit in response.hits]


async def _ask_refusal(stack: Stack, ask: gw_pb.AskRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Ask(ask, metadata=ALICE)
    return caught.value


async def test_a_collections_stored_model_refused_upstream_is_the_collections(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stack = await model_checking_upstream_stack(stack_factory, fake)
    await create_books(
        stack, books=WITH_BODY, generative=ret_pb.GenerativeConfig(provider="fake", model=UNSERVED)
    )
    for error in await _hit_errors(stack):
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert error.reason == "UNKNOWN_MODEL"
        assert error.metadata["field"] == "collection.generative.model"
        assert error.metadata["service"] == "generation"
        assert "setting" not in error.metadata
    refused = await _ask_refusal(stack, _ask())
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused)
    assert (info.reason, info.metadata["field"]) == ("UNKNOWN_MODEL", "collection.generative.model")
    assert "collection.generative.model" in (refused.details() or "")
    assert fake.chat_requests  # the endpoint refused it, not the gateway's own check


async def test_a_requests_own_model_refused_upstream_is_the_requests(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stack = await model_checking_upstream_stack(stack_factory, fake)
    await create_books(stack, books=WITH_BODY)
    for error in await _hit_errors(stack, model=UNSERVED):
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert (error.reason, error.metadata["field"]) == ("UNKNOWN_MODEL", "generate.model")
        assert "setting" not in error.metadata
    refused = await _ask_refusal(stack, _ask(llm_model=UNSERVED))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(refused)
    assert (info.reason, info.metadata["field"]) == ("UNKNOWN_MODEL", "llm_model")
    assert "llm_model" in (refused.details() or "")


async def test_the_default_model_refused_at_the_callers_base_url_is_the_callers(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # The caller's own endpoint (allowed by the operator) does not serve the default
    # model: the caller named the endpoint and can name a model; the operator's setting
    # is not at fault (ModelCatalog.check_choices skips its check for a caller's URL).
    stack = await model_checking_upstream_stack(
        stack_factory,
        fake,
        default_model=UNSERVED,
        generation_settings={"allowed_hosts": f"http://127.0.0.1:{fake.port}"},
    )
    await create_books(stack, books=WITH_BODY, generative=ret_pb.GenerativeConfig())
    for error in await _hit_errors(stack, base_url=fake.base_url):
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert (error.reason, error.metadata["field"]) == ("UNKNOWN_MODEL", "generate.model")
        assert "setting" not in error.metadata
    # Without the caller's URL the same model is the setting's (test_default_model_own_calls).
    for error in await _hit_errors(stack):
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert error.metadata["setting"] == SETTING


async def test_a_default_provider_generation_refuses_names_the_setting(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # The branch the gateway's own check leaves to generation: a provider chosen while
    # ListModels could not answer. Generation's registry refuses it (UNKNOWN_PROVIDER on
    # its `provider`); the call names the gateway's setting instead.
    stack = await model_checking_upstream_stack(stack_factory, fake)
    async with own_call(stack, default_provider="gone") as own:
        with pytest.raises(ServiceError) as caught:
            await complete(
                own.backends.clients.generation,
                own.caller,
                own.options,
                [gen_pb.Message(role=gen_pb.ROLE_USER, content="Which?")],
                timeout=10,
            )
    err = caught.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION, err
    assert (err.reason, err.field) == ("UNKNOWN_PROVIDER", "provider")
    assert err.metadata["setting"] == "GENSEARCH_GATEWAY_DEFAULT_PROVIDER"
    assert "GENSEARCH_GATEWAY_DEFAULT_PROVIDER" in str(err)


async def test_a_default_model_too_long_for_generation_is_the_settings_fault(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # Generation's bound on a model name is lower than the gateway's: the default model
    # passes the gateway's check and generation refuses its form (FIELD_TOO_LARGE, the
    # bound's variable in metadata ``setting``). The caller sent no model: the operator's
    # setting is at fault (FAILED_PRECONDITION, ``setting`` the gateway's, the bound's
    # variable kept as ``bound_setting``). Failed before: INVALID_ARGUMENT on the
    # caller's model field, blaming every caller that sent none.
    long_name = "a-model-name-past-generations-bound"
    stack = await model_checking_upstream_stack(
        stack_factory,
        fake,
        default_model=long_name,
        generation_settings={"max_model_chars": 12},
    )
    await create_books(stack, books=WITH_BODY, generative=ret_pb.GenerativeConfig())
    refused = await _ask_refusal(stack, _ask())
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused
    info = error_info(refused)
    assert (info.reason, info.metadata["field"]) == ("FIELD_TOO_LARGE", "llm_model")
    assert info.metadata["setting"] == SETTING
    assert info.metadata[BOUND_SETTING] == "GENSEARCH_GENERATION_MAX_MODEL_CHARS"
    assert info.metadata["max_chars"] == "12"
    assert SETTING in (refused.details() or "")
    for error in await _hit_errors(stack):
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert (error.reason, error.metadata["field"]) == ("FIELD_TOO_LARGE", "generate.model")
        assert error.metadata["setting"] == SETTING
        assert error.metadata[BOUND_SETTING] == "GENSEARCH_GENERATION_MAX_MODEL_CHARS"
    assert not fake.chat_requests  # generation's own check, before any call


async def test_a_too_long_model_the_caller_named_stays_the_callers(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    # The same bound, the name sent by the caller: its own argument (a guard).
    stack = await model_checking_upstream_stack(
        stack_factory, fake, generation_settings={"max_model_chars": 12}
    )
    await create_books(stack, books=WITH_BODY, generative=ret_pb.GenerativeConfig())
    refused = await _ask_refusal(stack, _ask(llm_model="a-model-name-past-generations-bound"))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused
    info = error_info(refused)
    assert (info.reason, info.metadata["field"]) == ("FIELD_TOO_LARGE", "llm_model")
    assert info.metadata["setting"] == "GENSEARCH_GENERATION_MAX_MODEL_CHARS"
    assert BOUND_SETTING not in info.metadata


# Generation's reasons on ``model``/``provider``: which name (UNKNOWN_MODEL,
# UNKNOWN_PROVIDER) and the name's form (FIELD_TOO_LARGE with the bound's ``setting``;
# a bare INVALID_ARGUMENT for only spaces or control characters).
REFUSALS = {
    "UNKNOWN_MODEL": {},
    "UNKNOWN_PROVIDER": {},
    "FIELD_TOO_LARGE": {"setting": "GENSEARCH_GENERATION_MAX_MODEL_CHARS", "max_chars": "12"},
    "INVALID_ARGUMENT": {},
}


@pytest.mark.parametrize("reason", REFUSALS)
def test_a_name_the_setting_chose_is_the_operators_whatever_the_reason(reason: str) -> None:
    metadata = REFUSALS[reason]
    err = InvalidArgument("model: refused", field="model", reason=reason, metadata=metadata)
    renamed = caller_fields_refused(err, CallerFields(model="llm_model", model_setting=SETTING))
    assert renamed.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (renamed.field, renamed.reason) == ("llm_model", reason)
    assert renamed.metadata["setting"] == SETTING
    assert renamed.metadata.get(BOUND_SETTING) == metadata.get("setting")


@pytest.mark.parametrize("reason", REFUSALS)
def test_a_name_the_caller_sent_is_the_callers_whatever_the_reason(reason: str) -> None:
    metadata = REFUSALS[reason]
    err = InvalidArgument("model: refused", field="model", reason=reason, metadata=metadata)
    renamed = caller_fields_refused(err, CallerFields(model="llm_model"))
    assert renamed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (renamed.field, renamed.reason) == ("llm_model", reason)
    assert renamed.metadata.get("setting") == metadata.get("setting")
    assert BOUND_SETTING not in renamed.metadata


def test_the_renamed_refusal_keeps_retry_after_and_details() -> None:
    # As max_tokens_refused keeps them: a client reads RetryInfo and the further details.
    detail = error_details_pb2.LocalizedMessage(locale="en", message="try later")
    for fields, code in (
        (CallerFields(model="generate.model"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            CallerFields(model="generate.model", model_setting=SETTING),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ):
        err = InvalidArgument(
            "model: unknown model 'x'", field="model", reason="UNKNOWN_MODEL", retry_after=2.5
        )
        err.details = [detail]
        renamed = caller_fields_refused(err, fields)
        assert (renamed.code, renamed.field) == (code, "generate.model")
        assert renamed.retry_after == 2.5
        assert renamed.details == [detail]
        assert renamed.metadata["service"] == "generation"
