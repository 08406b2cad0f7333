"""An Ask (or StreamAsk) request: its checks, its defaults, and the search it makes."""

from __future__ import annotations

from dataclasses import dataclass

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.call_deadline import room_before_cut
from services.common.errors import InvalidArgument, MissingField, out_of_range, quote, seconds_text
from services.common.repeats import refuse_repeats
from services.common.request_ids import check_request_id, fingerprint
from services.common.suggest import did_you_mean
from services.common.well_known import duration_seconds
from services.gateway.catalog import CollectionInfo
from services.gateway.request_parts import (
    check_fallback,
    check_length,
    check_sampling,
    copy_query,
    require,
)
from services.gateway.settings import GatewaySettings

AskLike = gw_pb.AskRequest | gw_pb.StreamAskRequest
_TEXT_QUERIES = ("near_text", "keyword", "hybrid")


@dataclass(frozen=True)
class AskParams:
    """The request's choices with the service's defaults filled in."""

    question: str
    context_size: int
    interaction_size: int
    rewrite: bool


def budget_field(request: AskLike, budget: float) -> str | None:
    """``timeout`` when the request's timeout set the turn's ``budget`` (shorter than what
    the call's deadline left), so running out of it names the field; else None."""
    if request.HasField("timeout") and duration_seconds(request.timeout, "timeout") <= budget:
        return "timeout"
    return None


def budget(request: AskLike, settings: GatewaySettings, call_remaining: float | None) -> float:
    """Seconds the turn may take: the request's timeout (checked), else the default,
    never past ``room_before_cut`` of the call's own deadline, as a generative search's
    budget (``generative_request.budget``): the turn's own timer then ends it with its
    clear status a whole chassis margin before the chassis' generic cut, and the
    generation calls given that budget plus their own margin (``call_deadline.outlasting``)
    end their upstream requests with it. Before, the turn had the call's whole time: its
    timer fell after that cut, and so did a generation call begun late in the turn."""
    s = settings
    if request.HasField("timeout"):
        value = duration_seconds(request.timeout, "timeout")
        if value <= 0 or value > s.max_ask_timeout:
            # The bound and its setting in the ErrorInfo, as generate.cache.ttl gives them
            # (before: the field alone).
            raise out_of_range(
                f"timeout must be in (0, {seconds_text(s.max_ask_timeout)}] seconds",
                field="timeout",
                bound=s.max_ask_timeout,
                setting="GENSEARCH_GATEWAY_MAX_ASK_TIMEOUT",
                seconds=True,
            )
    else:
        value = s.ask_timeout
    if call_remaining is not None:
        value = min(value, room_before_cut(call_remaining))
    return value


# An Ask's fields left out of its fingerprint: they do not decide its answer, and a retry
# may well change them. The key itself; the time given (a retry after a deadline passed
# gives more); debug (adds the prompt to a fresh answer; a replay has none to show); the
# conversation, which memory checks on its own (REQUEST_ID_REUSED when another; a retry of
# a turn that started a conversation finds it whichever way it names it). Every other
# field, those added later included, is in (docs/gateway.md#retrying-an-ask-request_id).
NOT_FINGERPRINTED = ("request_id", "timeout", "debug", "conversation_id", "new_conversation")


def request_fingerprint(request: AskLike) -> str:
    """What tells a retry of this Ask from another request reusing its request_id: a
    SHA-256 over every field that decides the answer (the collection, the question, the
    prompts, the model and provider, the search and its filter…), as memory keeps it
    with the turn. The same for an Ask and a StreamAsk of the same fields; the question
    as the turn stores it (without surrounding blanks)."""
    same = type(request).FromString(request.SerializeToString())
    same.llm_question = same.llm_question.strip()
    return fingerprint(same, NOT_FINGERPRINTED)


def validate(request: AskLike, settings: GatewaySettings) -> AskParams:
    s = settings
    require(request, "collection")
    refuse_repeats(request.context_field_list, "context_field_list")
    if not request.llm_question.strip():
        raise MissingField("llm_question is required", field="llm_question")
    check_length(request, ("llm_question",), s.max_prompt_chars)
    if request.conversation_id and request.new_conversation:
        raise InvalidArgument(
            "give either conversation_id or new_conversation, not both",
            field="new_conversation",
        )
    for name, bound, setting in (
        ("context_size", s.max_context_size, "GENSEARCH_GATEWAY_MAX_CONTEXT_SIZE"),
        ("interaction_size", s.max_interaction_size, "GENSEARCH_GATEWAY_MAX_INTERACTION_SIZE"),
    ):
        if request.HasField(name) and not 0 <= getattr(request, name) <= bound:
            # The bound and its setting in the ErrorInfo, as ``limit`` gives them (before:
            # the field alone).
            raise out_of_range(
                f"{name} must be between 0 and {bound}", field=name, bound=bound, setting=setting
            )
    check_request_id(request.request_id)
    if request.request_id and not (request.conversation_id or request.new_conversation):
        raise InvalidArgument(
            "request_id makes a stored turn idempotent: give it with conversation_id or "
            "new_conversation (an Ask with neither stores nothing to replay)",
            field="request_id",
            reason="REQUEST_ID_WITHOUT_CONVERSATION",
        )
    check_sampling(request)
    check_fallback(request.fallback, s.max_fallbacks, "fallback")
    check_length(request, ("system_prompt", "user_instructions"), s.max_prompt_chars)
    if request.system_prompt and not request.system_prompt.strip():
        # Sent as the first message, it failed the Ask at the generation service, naming
        # messages[0].content, a field the caller never sent (as a blank grouped_task).
        raise InvalidArgument(
            "system_prompt is blank: write one, or leave it unset for the collection's "
            "or the default one",
            field="system_prompt",
        )
    return AskParams(
        question=request.llm_question.strip(),
        context_size=(
            request.context_size if request.HasField("context_size") else s.ask_context_size
        ),
        interaction_size=(
            request.interaction_size
            if request.HasField("interaction_size")
            else s.ask_interaction_size
        ),
        rewrite=request.rewrite_query if request.HasField("rewrite_query") else s.rewrite_query,
    )


def context_fields(request: AskLike, info: CollectionInfo) -> list[str]:
    """The properties of each hit the LLM sees: the request's (known ones only), else the
    collection's, else its text properties."""
    fields = list(request.context_field_list)
    unknown = [f for f in fields if f not in info.properties]
    if unknown:
        hint, suggestion = did_you_mean(unknown[0], info.properties)
        raise InvalidArgument(
            f"unknown property {quote(unknown[0])} in context_field_list{hint}",
            field="context_field_list",
            reason="UNKNOWN_PROPERTY",
            metadata={"property": unknown[0], **suggestion},
        )
    # Each once, in the order first named: a collection's context_fields may repeat one
    # (the request's own repeats were refused by validate).
    return list(dict.fromkeys(fields or info.generative.context_fields)) or info.text_properties


def check_searchable(request: AskLike, info: CollectionInfo, context_size: int) -> None:
    """An Ask with no query of its own searches its question: hybrid, or keyword on a
    collection without a vectorizer. A collection with neither (a keyword index is on
    unless created without) cannot be searched by text; said before any LLM call, naming
    the query the caller must give, not the ``keyword`` field the gateway would make up."""
    if context_size <= 0 or request.WhichOneof("query") is not None or info.has_vectorizer:
        return
    c = info.collection
    if c.HasField("keyword_index") and not c.keyword_index:
        raise InvalidArgument(
            f"collection {quote(request.collection)} has no vectorizer and no keyword index, "
            "so the question cannot be searched as text: give near_vector (or context_size 0)",
            field="query",
            reason="NO_KEYWORD_INDEX",
        )


def question_refused(err: InvalidArgument, request: AskLike) -> InvalidArgument:
    """``err``, from the Ask's search, naming ``llm_question`` when it is the collection's
    embeddings endpoint refusing the question (or its rewrite) the gateway searched with:
    retrieval names the search's field (``hybrid.text``), which the caller never sent. A
    text of the caller's own query stays named as sent."""
    kind = request.WhichOneof("query")
    searched_question = kind is None or (kind in _TEXT_QUERIES and not getattr(request, kind).text)
    if err.reason != "EMBEDDING_INPUT_REJECTED" or not searched_question:
        return err
    status = err.metadata.get("http_status", "")
    return InvalidArgument(
        f"the embeddings endpoint of collection {quote(request.collection)} refused the "
        f"question as a search text (HTTP {status}); it would refuse it again: shorten "
        "llm_question, or give a query of your own",
        field="llm_question",
        reason=err.reason,
        metadata={k: v for k, v in err.metadata.items() if k != "field"},
    )


def search_request(
    request: AskLike, info: CollectionInfo, text: str, limit: int
) -> ret_pb.SearchRequest:
    """The request's query with ``text`` where it has none; without a query, hybrid over
    ``text``, or keyword alone when the collection has no embedder to make a vector."""
    search = ret_pb.SearchRequest(collection=request.collection, limit=limit)
    # ``text`` comes cut to ASK_SEARCH_TEXT_CHARS (ask.py); a caller's own query text is
    # theirs, not cut.
    kind = copy_query(request, search)
    if kind is not None:
        query = getattr(search, kind)
        if kind in _TEXT_QUERIES and not query.text:
            query.text = text
    elif info.has_vectorizer:
        search.hybrid.text = text
    else:
        search.keyword.text = text
    return search
