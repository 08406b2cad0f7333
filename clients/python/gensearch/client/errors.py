"""Errors: one exception class per status code, and one per ``ErrorInfo`` reason.

Every failed call raises a ``GensearchError`` subclass carrying what the service sent: the
status code, the message, the ``google.rpc.ErrorInfo`` (reason, domain, metadata) and the
``google.rpc.BadRequest`` field violations. A reason class subclasses the class of the code
the services send it with, so both ``except NotFoundError`` and
``except ConversationNotFoundError`` work; a reason this client does not know yet raises
the code's class with ``.reason`` still set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from gensearch.client import _unreachable
from gensearch.client import types as t
from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

_BY_CODE: dict[grpc.StatusCode, type[GensearchError]] = {}
_BY_REASON: dict[str, type[GensearchError]] = {}


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class GensearchError(Exception):
    """A call failed. ``code`` is the gRPC status; ``reason``/``metadata`` come from ErrorInfo."""

    # The status code this class stands for (None: any).
    status_code: ClassVar[grpc.StatusCode | None] = None
    # The ErrorInfo reason this class stands for (None: a code class).
    error_reason: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        reason = cls.__dict__.get("error_reason")
        if reason:
            _BY_REASON.setdefault(reason, cls)

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[FieldViolation] | None = None,
        retry_delay: float | None = None,
        object_errors: list[t.ObjectError] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])
        # From google.rpc.RetryInfo, when the service says when to try again (seconds).
        self.retry_delay = retry_delay
        # A failed ImportObjects stream: the objects its earlier messages had rejected,
        # with their reasons, ``index`` their position in the stream (the first of them:
        # metadata ``rejected_indexes`` may list more positions).
        self.object_errors = list(object_errors or [])

    @property
    def rejected_indexes(self) -> tuple[list[int], bool]:
        """A failed ImportObjects stream: the stream positions of the objects its earlier
        messages rejected (metadata ``rejected_indexes``, ``"3,17,42"``), and whether that
        list was cut (it ended ``",…"``)."""
        value = self.metadata.get("rejected_indexes", "")
        cut = value.endswith("…")
        parts = value.rstrip("…").rstrip(",").split(",") if value.rstrip("…") else []
        return [int(part) for part in parts if part.strip().isdigit()], cut

    @property
    def field(self) -> str:
        """The request field at fault ("" when none was named)."""
        if self.metadata.get("field"):
            return self.metadata["field"]
        return self.field_violations[0].field if self.field_violations else ""

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field and self.field not in self.message else ""
        reason = f" [{self.reason}]" if self.reason and self.reason != self.code.name else ""
        return f"{self.code.name}{reason}: {self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, metadata={self.metadata!r})"
        )


class ClientClosedError(RuntimeError):
    """A call on a client after its ``close()`` (or its ``with`` block's end): no status
    from any service, a mistake in the program, so no ``GensearchError``."""

    def __init__(self) -> None:
        super().__init__("the gensearch client is closed: make a new one to call again")


def _code(code: grpc.StatusCode) -> Any:
    def register(cls: type[GensearchError]) -> type[GensearchError]:
        cls.status_code = code
        _BY_CODE[code] = cls
        return cls

    return register


@_code(grpc.StatusCode.INVALID_ARGUMENT)
class InvalidArgumentError(GensearchError):
    pass


@_code(grpc.StatusCode.NOT_FOUND)
class NotFoundError(GensearchError):
    pass


@_code(grpc.StatusCode.ALREADY_EXISTS)
class AlreadyExistsError(GensearchError):
    pass


@_code(grpc.StatusCode.FAILED_PRECONDITION)
class FailedPreconditionError(GensearchError):
    pass


@_code(grpc.StatusCode.ABORTED)
class AbortedError(GensearchError):
    """A compare-and-set lost to another writer: read again and retry."""


@_code(grpc.StatusCode.UNAUTHENTICATED)
class UnauthenticatedError(GensearchError):
    pass


@_code(grpc.StatusCode.PERMISSION_DENIED)
class PermissionDeniedError(GensearchError):
    pass


@_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
class ResourceExhaustedError(GensearchError):
    pass


@_code(grpc.StatusCode.DEADLINE_EXCEEDED)
class DeadlineExceededError(GensearchError):
    pass


@_code(grpc.StatusCode.UNAVAILABLE)
class UnavailableError(GensearchError):
    pass


@_code(grpc.StatusCode.CANCELLED)
class CancelledError(GensearchError):
    pass


@_code(grpc.StatusCode.OUT_OF_RANGE)
class OutOfRangeError(GensearchError):
    pass


@_code(grpc.StatusCode.UNIMPLEMENTED)
class UnimplementedError(GensearchError):
    pass


@_code(grpc.StatusCode.INTERNAL)
class InternalError(GensearchError):
    pass


# The reasons the services emit (grep `reason=` in services/; tests/client checks the list
# is complete), each under the code it is sent with: the class name is the reason in
# CamelCase plus Error.


class BadNameError(InvalidArgumentError):
    error_reason = "BAD_NAME"


class BadUuidError(InvalidArgumentError):
    error_reason = "BAD_UUID"


class BatchTooLargeError(InvalidArgumentError):
    error_reason = "BATCH_TOO_LARGE"


class ContextWindowExceededError(InvalidArgumentError):
    error_reason = "CONTEXT_WINDOW_EXCEEDED"


class ControlCharacterError(InvalidArgumentError):
    """A conversation name holding a control character (C0, DEL, C1, a bidirectional
    override or isolate, a line or paragraph separator); metadata
    ``position`` says where. Names are display strings: send it without them."""

    error_reason = "CONTROL_CHARACTER"


class ProviderTokenLimitExceededError(InvalidArgumentError):
    """A call a provider counting reserved tokens could never take: its prompt plus
    ``max_tokens`` above what the provider's ``tokens_per_minute`` allows in a whole window
    (metadata ``provider``, ``tokens``). Lower ``max_tokens`` (or the prompt)."""

    error_reason = "PROVIDER_TOKEN_LIMIT_EXCEEDED"


class DimensionMismatchError(InvalidArgumentError):
    error_reason = "DIMENSION_MISMATCH"


class FilterTooLargeError(InvalidArgumentError):
    """A filter's conditions expand to more engine checks than the retrieval service
    allows (metadata ``max``, ``setting``; ``field`` the condition that went over): use
    fewer values."""

    error_reason = "FILTER_TOO_LARGE"


class SchemaTooLargeError(InvalidArgumentError):
    """A new collection's schema is larger than the retrieval service allows (metadata
    ``limit_bytes``, ``size_bytes``, ``setting``): shorten its descriptions or prompts."""

    error_reason = "SCHEMA_TOO_LARGE"


class DuplicateIdError(InvalidArgumentError):
    """An id given twice in one request (GenerateOnObjects): ``field`` names the repeat,
    ``metadata["first"]`` the entry it repeats."""

    error_reason = "DUPLICATE_ID"


class DuplicateFallbackError(InvalidArgumentError):
    """A fallback pair naming the endpoint of the primary or of an earlier pair (same
    provider, same model, an empty one being the provider's default): ``field`` names the
    repeat (``generate.fallback[i]``, ``fallback[i]``), ``metadata["repeats"]`` what it
    repeats (``primary`` or the earlier pair's field). FAILED_PRECONDITION when the chain
    is a collection's stored default (``collection.generative.fallback[i]``)."""

    error_reason = "DUPLICATE_FALLBACK"


class ZeroVectorError(InvalidArgumentError):
    """A vector of length 0 in a cosine collection: it has no direction to compare."""

    error_reason = "ZERO_VECTOR"


class FieldTooLargeError(InvalidArgumentError):
    error_reason = "FIELD_TOO_LARGE"


class InteractionTooLargeError(InvalidArgumentError):
    error_reason = "INTERACTION_TOO_LARGE"


class InvalidIdError(InvalidArgumentError):
    error_reason = "INVALID_ID"


class InvalidPageSizeError(InvalidArgumentError):
    error_reason = "INVALID_PAGE_SIZE"


class InvalidPageTokenError(InvalidArgumentError):
    error_reason = "INVALID_PAGE_TOKEN"


class InvalidTemplateError(InvalidArgumentError):
    error_reason = "INVALID_TEMPLATE"


class MalformedCallerKeyError(InvalidArgumentError):
    error_reason = "MALFORMED_CALLER_KEY"


class MalformedRequestError(InvalidArgumentError):
    error_reason = "MALFORMED_REQUEST"


class MalformedUrlError(InvalidArgumentError):
    error_reason = "MALFORMED_URL"


class MissingFieldError(InvalidArgumentError):
    error_reason = "MISSING_FIELD"


class NestingTooDeepError(InvalidArgumentError):
    error_reason = "NESTING_TOO_DEEP"


class NoKeywordIndexError(InvalidArgumentError):
    error_reason = "NO_KEYWORD_INDEX"


class NoPlaceholderError(InvalidArgumentError):
    error_reason = "NO_PLACEHOLDER"


class NoVectorizerError(InvalidArgumentError):
    error_reason = "NO_VECTORIZER"


class NumberNotFiniteError(InvalidArgumentError):
    error_reason = "NUMBER_NOT_FINITE"


class VectorTooLongError(InvalidArgumentError):
    """A query vector longer than 2^62 in a dot or Euclid collection."""

    error_reason = "VECTOR_TOO_LONG"


class ValueNotSetError(InvalidArgumentError):
    """A ``google.protobuf.Value`` with none of its kinds set (memory keeps none)."""

    error_reason = "VALUE_NOT_SET"


# Not OutOfRangeError: that is the OUT_OF_RANGE status code's class.
class ValueOutOfRangeError(InvalidArgumentError):
    error_reason = "OUT_OF_RANGE"


class PromptTooLongError(InvalidArgumentError):
    error_reason = "PROMPT_TOO_LONG"


class RequestIdReusedError(InvalidArgumentError):
    error_reason = "REQUEST_ID_REUSED"


class RequestIdInUseError(AbortedError):
    """An Ask sent while another attempt with the same request_id still runs: retry after
    ``retry_delay`` to get that attempt's turn (replayed)."""

    error_reason = "REQUEST_ID_IN_USE"


class RequestIdWithoutConversationError(InvalidArgumentError):
    """An Ask's request_id with neither conversation_id nor new_conversation: nothing is
    stored, so there is no turn a retry could replay."""

    error_reason = "REQUEST_ID_WITHOUT_CONVERSATION"


class RequestIdWithSummaryError(InvalidArgumentError):
    error_reason = "REQUEST_ID_WITH_SUMMARY"


class UnknownModelError(InvalidArgumentError):
    error_reason = "UNKNOWN_MODEL"


class UnknownPropertyError(InvalidArgumentError):
    error_reason = "UNKNOWN_PROPERTY"


class UnknownProviderError(InvalidArgumentError):
    error_reason = "UNKNOWN_PROVIDER"


class UpstreamRejectedRequestError(InvalidArgumentError):
    error_reason = "UPSTREAM_REJECTED_REQUEST"


class EmbeddingInputRejectedError(InvalidArgumentError):
    """An embeddings endpoint refused a query text (400, 413, 422: too large or too long
    for the model); metadata ``http_status``, ``collection``. An object's own text refused
    is that object's ``ObjectError`` instead. Retrying the same text cannot succeed."""

    error_reason = "EMBEDDING_INPUT_REJECTED"


class WrongTypeError(InvalidArgumentError):
    error_reason = "WRONG_TYPE"


class ConversationNotFoundError(NotFoundError):
    error_reason = "CONVERSATION_NOT_FOUND"


class InteractionNotFoundError(NotFoundError):
    error_reason = "INTERACTION_NOT_FOUND"


class ObjectNotFoundError(NotFoundError):
    """A named object (GenerateOnObjects' ``ids``) is not in the collection: that hit's
    own error."""

    error_reason = "OBJECT_NOT_FOUND"


class EmbeddingDimensionMismatchError(FailedPreconditionError):
    error_reason = "EMBEDDING_DIMENSION_MISMATCH"


class LocalModelMissingError(FailedPreconditionError):
    error_reason = "LOCAL_MODEL_MISSING"


class MissingPropertyError(FailedPreconditionError):
    error_reason = "MISSING_PROPERTY"


class BlankPromptError(FailedPreconditionError):
    """A hit's values render its prompt blank (only whitespace): seen on a per-hit
    ``GenerationError``, never on a call."""

    error_reason = "BLANK_PROMPT"


class NoResultsError(FailedPreconditionError):
    """A grouped task over no object (the search found none, or every one named was
    missing): no call was made. Seen on the grouped ``GenerationError``, never on a call."""

    error_reason = "NO_RESULTS"


class StoreIsClusterError(FailedPreconditionError):
    error_reason = "STORE_IS_CLUSTER"


class UpstreamRedirectError(FailedPreconditionError):
    error_reason = "UPSTREAM_REDIRECT"


class UpstreamNotFoundError(FailedPreconditionError):
    error_reason = "UPSTREAM_NOT_FOUND"


class AmbiguousCredentialsError(UnauthenticatedError):
    """A credential header (``authorization``, an ``x-gensearch-*`` identity header, a key
    for an upstream such as ``x-openai-api-key``) came more than once (metadata ``field``
    names it): send it once."""

    error_reason = "AMBIGUOUS_CREDENTIALS"


class InvalidApiKeyError(UnauthenticatedError):
    error_reason = "INVALID_API_KEY"


class InvalidInternalTokenError(UnauthenticatedError):
    error_reason = "INVALID_INTERNAL_TOKEN"


class MissingInternalTokenError(UnauthenticatedError):
    """A service behind the gateway takes calls from the gateway alone (it has an internal
    token and no API keys)."""

    error_reason = "MISSING_INTERNAL_TOKEN"


class MalformedCredentialsError(UnauthenticatedError):
    """The ``authorization`` header is not ``Bearer <api key>``."""

    error_reason = "MALFORMED_CREDENTIALS"


class MissingCredentialsError(UnauthenticatedError):
    error_reason = "MISSING_CREDENTIALS"


class MissingForwardedRoleError(UnauthenticatedError):
    """A peer service's call with the internal token names no valid caller role."""

    error_reason = "MISSING_FORWARDED_ROLE"


class MissingForwardedTenantError(UnauthenticatedError):
    """A peer service's call with the internal token names no valid caller tenant."""

    error_reason = "MISSING_FORWARDED_TENANT"


class MissingForwardedUserError(UnauthenticatedError):
    """A peer service's call with the internal token names no caller."""

    error_reason = "MISSING_FORWARDED_USER"


class MissingProviderApiKeyError(UnauthenticatedError):
    error_reason = "MISSING_PROVIDER_API_KEY"


class UpstreamUnauthenticatedError(UnauthenticatedError):
    error_reason = "UPSTREAM_UNAUTHENTICATED"


class KeyDestinationUnconfirmedError(PermissionDeniedError):
    """Your ``x-embedding-api-key`` (``x-rerank-api-key``) would go to a URL the collection's
    admin set: name that URL in ``x-embedding-base-url`` (``x-rerank-base-url``, the
    ``field``) to send it there, or send no key."""

    error_reason = "KEY_DESTINATION_UNCONFIRMED"


class KeyNotAllowedError(PermissionDeniedError):
    error_reason = "KEY_NOT_ALLOWED"


class RoleRequiredError(PermissionDeniedError):
    error_reason = "ROLE_REQUIRED"


class UpstreamPermissionDeniedError(PermissionDeniedError):
    error_reason = "UPSTREAM_PERMISSION_DENIED"


class UrlNotAllowedError(PermissionDeniedError):
    error_reason = "URL_NOT_ALLOWED"


class ConversationInteractionsFullError(ResourceExhaustedError):
    """The conversation holds the most turns memory allows in one (metadata ``limit``,
    ``setting``, ``conversation_id``); nothing was written: start a new conversation (or
    give this one a ``max_turns``)."""

    error_reason = "CONVERSATION_INTERACTIONS_FULL"


class OwnerConversationsFullError(ResourceExhaustedError):
    """Memory holds the most conversations one user may have (metadata ``limit``,
    ``setting``): delete some to create more."""

    error_reason = "OWNER_CONVERSATIONS_FULL"


class OwnerStorageFullError(ResourceExhaustedError):
    """The write would take the user's stored conversations over memory's byte limit
    (metadata ``limit_bytes``, ``setting``); nothing was written: delete conversations
    to make room."""

    error_reason = "OWNER_STORAGE_FULL"


class CollectionFullError(ResourceExhaustedError):
    """The write would take the collection past the most objects the retrieval service
    lets one collection hold (metadata ``limit``, ``setting``, ``collection``); nothing of
    that batch (that ImportObjects message) was written: delete objects, or write into
    another collection."""

    error_reason = "COLLECTION_FULL"


class TooManyCollectionsError(ResourceExhaustedError):
    """The tenant holds the most collections allowed (metadata ``limit``, ``setting``):
    delete some to create more. (FAILED_PRECONDITION before: an error from an older
    service still matches ``except FailedPreconditionError``.)"""

    error_reason = "TOO_MANY_COLLECTIONS"


class TenantSchemasFullError(ResourceExhaustedError):
    """The tenant's collection schemas together would pass the retrieval service's bound
    (metadata ``limit_bytes``, ``held_bytes``, ``setting``): delete some collections."""

    error_reason = "TENANT_SCHEMAS_FULL"


class QuotaExceededError(ResourceExhaustedError):
    error_reason = "QUOTA_EXCEEDED"


class RequestTooLargeError(ResourceExhaustedError):
    error_reason = "REQUEST_TOO_LARGE"


class MetadataTooLargeError(ResourceExhaustedError):
    """The call's headers count more than the server's ``MAX_METADATA_BYTES`` (metadata
    ``field``: the largest header, ``limit_bytes``, ``size_bytes``, ``setting``): send a
    shorter one (an API key header, say)."""

    error_reason = "METADATA_TOO_LARGE"


class ResponseTooLargeError(ResourceExhaustedError):
    """The reply would exceed the server's send limit (metadata ``limit_bytes``,
    ``size_bytes``): ask for fewer or shorter results, without debug, or stream."""

    error_reason = "RESPONSE_TOO_LARGE"


class ResponseBytesInFlightError(ResourceExhaustedError):
    """The tenant has as many bytes of replies in flight as the server allows (metadata
    ``limit_bytes``, ``held_bytes``, ``size_bytes``, ``setting``; no ``size_bytes`` when the
    call was refused before its work, its bound already full; no ``held_bytes`` for the
    bound of all tenants together, whose total is not told): retry after the status's
    RetryInfo delay, or ask for fewer or smaller results."""

    error_reason = "RESPONSE_BYTES_IN_FLIGHT"


class RequestBytesInFlightError(ResourceExhaustedError):
    """The server holds as many bytes of requests as it allows, all callers together
    (metadata ``limit_bytes``, ``size_bytes``, ``setting``; what is held, other callers'
    requests, is not told): retry after the status's RetryInfo delay, or send smaller
    batches."""

    error_reason = "REQUEST_BYTES_IN_FLIGHT"


class TooManyConcurrentRpcsError(ResourceExhaustedError):
    """The server is serving its limit of calls at once (metadata ``limit``, ``setting``):
    retry shortly, or spread calls over more replicas."""

    error_reason = "TOO_MANY_CONCURRENT_RPCS"


class TooManyConcurrentStreamsError(ResourceExhaustedError):
    """The generation service's connection refused a call before running it, at its limit
    of calls at once (metadata ``setting``); the gateway already sent it again while the
    deadline allowed: retry shortly."""

    error_reason = "TOO_MANY_CONCURRENT_STREAMS"


class GenerationInFlightWaitError(ResourceExhaustedError):
    """The gateway had its limit of generation calls in flight (metadata ``limit``,
    ``setting``) and none ended in time for the call's deadline: retry shortly or with a
    longer deadline."""

    error_reason = "GENERATION_IN_FLIGHT_WAIT"


class UpstreamRateLimitedError(ResourceExhaustedError):
    error_reason = "UPSTREAM_RATE_LIMITED"


class EmbeddingsRateLimitedError(ResourceExhaustedError):
    """A collection's embeddings endpoint answered 429 asking for a wait this request could
    not make (its deadline, ``EMBED_TIMEOUT``, ``RETRY_AFTER_MAX``) or its retries ran out:
    ``retry_after`` says when to try again (metadata ``retry_after_ms``, ``attempts``)."""

    error_reason = "EMBEDDINGS_RATE_LIMITED"


class RerankRateLimitedError(ResourceExhaustedError):
    """A rerank provider answered 429 asking for a wait the Search could not make, or its
    retries ran out: ``retry_after`` says when to try again (metadata ``provider``,
    ``retry_after_ms``, ``attempts``)."""

    error_reason = "RERANK_RATE_LIMITED"


class DownstreamTimeoutError(DeadlineExceededError):
    error_reason = "DOWNSTREAM_TIMEOUT"


class UpstreamFirstByteTimeoutError(DeadlineExceededError):
    error_reason = "UPSTREAM_FIRST_BYTE_TIMEOUT"


class DeadlineTooShortError(DeadlineExceededError):
    """The call arrived with less time left than the server's ``MIN_DEADLINE`` (metadata
    ``remaining_ms``, ``min_ms``, ``setting``); no work was started: give it a longer
    timeout."""

    error_reason = "DEADLINE_TOO_SHORT"


class StreamIdleError(DeadlineExceededError):
    """A client stream (ImportObjects) sent no message within the server's
    ``STREAM_IDLE_TIMEOUT`` (metadata ``timeout_seconds``, ``setting``); ImportObjects says
    what it imported before (``imported_count``, ``received_count``)."""

    error_reason = "STREAM_IDLE"


class StreamTooLongError(DeadlineExceededError):
    """A client stream (ImportObjects) lasted the server's ``CLIENT_STREAM_MAX_SECONDS``
    (metadata ``max_seconds``, ``setting``) and was ended; ImportObjects says what it
    imported (``imported_count``, ``received_count``): send the rest in another stream."""

    error_reason = "STREAM_TOO_LONG"


class StreamStalledError(DeadlineExceededError):
    """The client of a server stream took no message within the server's
    ``STREAM_SEND_TIMEOUT`` (metadata ``timeout_seconds``, ``setting``), whatever its
    deadline: it stopped reading, and the stream was ended. Read a stream as it comes."""

    error_reason = "STREAM_STALLED"


class UpstreamTimeoutError(DeadlineExceededError):
    error_reason = "UPSTREAM_TIMEOUT"


class BadUpstreamResponseError(UnavailableError):
    error_reason = "BAD_UPSTREAM_RESPONSE"


class DownstreamUnavailableError(UnavailableError):
    error_reason = "DOWNSTREAM_UNAVAILABLE"


class EmbeddingsUnavailableError(UnavailableError):
    error_reason = "EMBEDDINGS_UNAVAILABLE"


class QdrantErrorError(UnavailableError):
    error_reason = "QDRANT_ERROR"


class QdrantUnavailableError(UnavailableError):
    error_reason = "QDRANT_UNAVAILABLE"


class StoreUnavailableError(UnavailableError):
    error_reason = "STORE_UNAVAILABLE"


class ShuttingDownError(UnavailableError):
    """The service was stopping (a rolling update, a scale-down) and ended the call as its
    grace period ran out; the call did not finish and may be retried (another replica
    serves it). ErrorInfo metadata ``grace_period_seconds``, ``setting``, and for a stream
    ``sent_count`` (its messages sent before the cut)."""

    error_reason = "SHUTTING_DOWN"


class UpstreamConnectionFailedError(UnavailableError):
    error_reason = "UPSTREAM_CONNECTION_FAILED"


class UpstreamStreamErrorError(UnavailableError):
    error_reason = "UPSTREAM_STREAM_ERROR"


class UpstreamReadTimeoutError(UnavailableError):
    """The provider's stream went silent mid-answer for longer than the generation
    service's ``READ_TIMEOUT``."""

    error_reason = "UPSTREAM_READ_TIMEOUT"


class UpstreamUnavailableError(UnavailableError):
    error_reason = "UPSTREAM_UNAVAILABLE"


class FieldNotUpdatableError(InvalidArgumentError):
    error_reason = "FIELD_NOT_UPDATABLE"


class InvalidLimitError(InvalidArgumentError):
    error_reason = "INVALID_LIMIT"


class InvalidMaxTurnsError(InvalidArgumentError):
    error_reason = "INVALID_MAX_TURNS"


class InvalidModeError(InvalidArgumentError):
    """A SearchInteractions ``mode`` that is no SearchMode."""

    error_reason = "INVALID_MODE"


class InvalidSchemaError(InvalidArgumentError):
    error_reason = "INVALID_SCHEMA"


class InvalidStepError(InvalidArgumentError):
    error_reason = "INVALID_STEP"


class InvalidSummaryRangeError(InvalidArgumentError):
    error_reason = "INVALID_SUMMARY_RANGE"


class InvalidTtlError(InvalidArgumentError):
    error_reason = "INVALID_TTL"


class InvalidUpdateMaskError(InvalidArgumentError):
    error_reason = "INVALID_UPDATE_MASK"


class NegativeCountError(InvalidArgumentError):
    error_reason = "NEGATIVE_COUNT"


class TooLargeError(InvalidArgumentError):
    error_reason = "TOO_LARGE"


class TooLongError(InvalidArgumentError):
    error_reason = "TOO_LONG"


class TooManyTracesError(InvalidArgumentError):
    error_reason = "TOO_MANY_TRACES"


class InvalidOutputError(FailedPreconditionError):
    error_reason = "INVALID_OUTPUT"


class SearchDisabledError(FailedPreconditionError):
    error_reason = "SEARCH_DISABLED"


class SearchModeUnavailableError(FailedPreconditionError):
    error_reason = "SEARCH_MODE_UNAVAILABLE"


class SummaryDisabledError(FailedPreconditionError):
    error_reason = "SUMMARY_DISABLED"


class ConcurrentUpdateError(AbortedError):
    error_reason = "CONCURRENT_UPDATE"


class SummaryChangedError(AbortedError):
    error_reason = "SUMMARY_CHANGED"


class InternalMethodError(PermissionDeniedError):
    error_reason = "INTERNAL_METHOD"


class ProviderLimitWaitError(ResourceExhaustedError):
    error_reason = "PROVIDER_LIMIT_WAIT"


class ProviderQueueTimeoutError(DeadlineExceededError):
    error_reason = "PROVIDER_QUEUE_TIMEOUT"


class SearchIndexUnavailableError(UnavailableError):
    error_reason = "SEARCH_INDEX_UNAVAILABLE"


class BadPropertyTypeError(InvalidArgumentError):
    error_reason = "BAD_PROPERTY_TYPE"


class NoChunkingError(FailedPreconditionError):
    error_reason = "NO_CHUNKING"


class RerankUnavailableError(UnavailableError):
    error_reason = "RERANK_UNAVAILABLE"


# A downstream status that came without the services' ErrorInfo (the gateway's channel, a
# proxy, another server at that address): the gateway names the service (metadata
# ``service``) and never relays the status's own text.
# DOWNSTREAM_CANCELLED is UNAVAILABLE: the connection closed under the call, not a
# cancellation of the caller's.
class DownstreamCancelledError(UnavailableError):
    error_reason = "DOWNSTREAM_CANCELLED"


class DownstreamResourceExhaustedError(ResourceExhaustedError):
    error_reason = "DOWNSTREAM_RESOURCE_EXHAUSTED"


class DownstreamErrorError(InternalError):
    error_reason = "DOWNSTREAM_ERROR"


def error_class(reason: str) -> type[GensearchError] | None:
    """The class raised for ``reason`` (None for a reason this client does not know)."""
    return _BY_REASON.get(reason)


_COMBINED: dict[tuple[str, str], type[GensearchError]] = {}


def _combined(
    reason_cls: type[GensearchError], code_cls: type[GensearchError]
) -> type[GensearchError]:
    # A reason sent with another code than usual still matches both `except` clauses.
    key = (reason_cls.__name__, code_cls.__name__)
    if key not in _COMBINED:
        _COMBINED[key] = type(reason_cls.__name__, (reason_cls, code_cls), {"__module__": __name__})
    return _COMBINED[key]


def from_rpc_error(
    err: grpc.aio.AioRpcError | grpc.RpcError, *, target: _unreachable.Target | None = None
) -> GensearchError:
    """The exception for a failed call, with its ErrorInfo and BadRequest details.
    ``target``: what the channel dialled, so a failed connection's message can name it
    and say what to check."""
    code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
    message = " ".join((err.details() or "").split()) or code.name  # type: ignore[attr-defined]
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    object_errors: list[t.ObjectError] = []
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except Exception:  # a malformed detail must not hide the error itself
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(rpb.ImportObjectsResponse.DESCRIPTOR):
            answer = rpb.ImportObjectsResponse()
            detail.Unpack(answer)
            object_errors.extend(t.from_proto(t.ObjectError, e) for e in answer.errors)
    if target is not None and code == grpc.StatusCode.UNAVAILABLE and not reason:
        # No ErrorInfo: the channel's own failure, not a service's answer.
        message = _unreachable.explain(message, target) or message
    code_cls = _BY_CODE.get(code, GensearchError)
    cls = _BY_REASON.get(reason, code_cls)
    if not issubclass(cls, code_cls):
        cls = _combined(cls, code_cls)
    return cls(
        message,
        code=code,
        reason=reason or code.name,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
        retry_delay=retry_delay,
        object_errors=object_errors,
    )
