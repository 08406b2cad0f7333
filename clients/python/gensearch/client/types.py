"""Typed results: plain dataclasses with plain Python values.

``Struct`` becomes ``dict``, ``Timestamp`` an aware ``datetime``, ``Duration`` a
``timedelta``, an enum its short lower-case name (``DATA_TYPE_TEXT`` -> ``"text"``), an
unset optional field ``None`` (or ``{}`` where the dataclass's default is a dict).
Conversion is generic (``from_proto``): a dataclass names the proto fields it exposes, so a
field added to a proto is one line here; every result also keeps the message it came from
in ``raw`` for fields this client does not know yet.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

T = TypeVar("T")
M = TypeVar("M", bound=Message)

# Proto message full name -> the dataclass it becomes.
_TYPES: dict[str, type[Any]] = {}


def _proto(full_name: str) -> Any:
    def register(cls: type[T]) -> type[T]:
        _TYPES[full_name] = cls
        return cls

    return register


def exact_structured(text: str, structured: dict[str, Any] | None) -> dict[str, Any] | None:
    """``structured`` with the answer's own numbers: it travels as a ``Struct``, where every
    number is a double (``1965.0`` for a schema's ``"type": "integer"``), while ``text`` is
    the JSON the server parsed it from (inside at most one Markdown fence, as the server
    allows). When ``text`` parses to the same object, its values are returned (integers
    stay ``int``, keys keep the answer's order); otherwise ``structured`` unchanged."""
    if not structured:
        return structured
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        first, _, rest = body[3:-3].partition("\n")
        body = rest if first.strip().isalpha() or not first.strip() else body[3:-3]
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return structured
    return parsed if isinstance(parsed, dict) and parsed == structured else structured


def _enum_name(fd: Any, number: int) -> str:
    value = fd.enum_type.values_by_number.get(number)
    if value is None:
        return str(number)
    # DATA_TYPE_TEXT in enum DataType -> "text": strip the enum's own prefix.
    prefix = "".join(
        f"_{c}" if c.isupper() and i else c for i, c in enumerate(fd.enum_type.name)
    ).upper()
    return value.name.removeprefix(prefix + "_").lower()


def _value(fd: Any, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return _enum_name(fd, value)
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    name = fd.message_type.full_name
    if name == "google.protobuf.Timestamp":
        return value.ToDatetime(tzinfo=UTC)
    if name == "google.protobuf.Duration":
        return value.ToTimedelta()
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        return json_format.MessageToDict(value)
    target = _TYPES.get(name)
    return from_proto(target, value) if target else value


def from_proto(cls: type[T], message: Message) -> T:
    """``cls`` filled from ``message`` by field name (fields it does not name are left out)."""
    fields: Any = message.DESCRIPTOR.fields_by_name
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == "raw":
            kwargs["raw"] = message
            continue
        fd = fields.get(f.name)
        if fd is None or not f.init:
            continue
        value = getattr(message, f.name)
        if fd.is_repeated:
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                kwargs[f.name] = dict(value)
            else:
                kwargs[f.name] = [_value(fd, v) for v in value]
        elif fd.has_presence and not message.HasField(f.name):
            # Unset: None, or the dataclass's own empty default (an unset Struct is {}
            # where the field is a dict, e.g. the properties of a hit that has none).
            if f.default_factory is not dataclasses.MISSING:
                kwargs[f.name] = f.default_factory()
            else:
                kwargs[f.name] = None
        else:
            kwargs[f.name] = _value(fd, value)
    return cls(**kwargs)


def _enum_number(fd: Any, value: Any) -> int:
    if isinstance(value, int):
        return value
    prefix = "".join(
        f"_{c}" if c.isupper() and i else c for i, c in enumerate(fd.enum_type.name)
    ).upper()
    name = str(value).upper()
    for candidate in (name, f"{prefix}_{name}"):
        found = fd.enum_type.values_by_name.get(candidate)
        if found is not None:
            return int(found.number)
    choices = ", ".join(
        v.name.removeprefix(prefix + "_").lower() for v in fd.enum_type.values if v.number
    )
    raise ValueError(f"{fd.name}: {value!r} is not one of {choices}")


def to_proto(obj: Any, message_cls: type[M]) -> M:
    """The reverse of ``from_proto``: a dataclass (or a plain dict) as ``message_cls``.
    Fields left ``None`` stay unset; enums take their short names."""
    values = (
        obj
        if isinstance(obj, dict)
        else {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "raw"}
    )
    fields: Any = message_cls.DESCRIPTOR.fields_by_name
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        fd = fields.get(name)
        if fd is None:
            if name in ("object_count",):  # output-only extras of a dataclass
                continue
            raise TypeError(f"{message_cls.DESCRIPTOR.name} has no field {name!r}")
        if value is None:
            continue
        repeated = fd.is_repeated
        items = list(value) if repeated else [value]
        if fd.type == FieldDescriptor.TYPE_ENUM:
            items = [_enum_number(fd, v) for v in items]
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.full_name in _TYPES:
            items = [
                to_proto(v, _message_class(fd)) if not isinstance(v, Message) else v for v in items
            ]
        kwargs[name] = items if repeated else items[0]
    return message_cls(**kwargs)


def _message_class(fd: Any) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(fd.message_type)


# --- retrieval -------------------------------------------------------------------------------


@_proto("gensearch.retrieval.v1.Property")
@dataclass
class Property:
    """A collection property; ``data_type``: text, text_array, int, number, bool, date."""

    name: str
    data_type: str = "text"
    description: str = ""


@_proto("gensearch.retrieval.v1.Vectorizer")
@dataclass
class Vectorizer:
    """``kind``: local (default), none (you bring vectors) or openai_compatible."""

    kind: str = "local"
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""
    dimensions: int = 0
    source_properties: list[str] = field(default_factory=list)
    distance: str = "unspecified"


@_proto("gensearch.retrieval.v1.GenerativeModel")
@dataclass
class GenerativeModel:
    """One (provider, model) pair of a fallback chain; an empty model is the provider's
    default."""

    provider: str = ""
    model: str = ""


@_proto("gensearch.retrieval.v1.CacheDefaults")
@dataclass
class CacheDefaults:
    """A collection's cache defaults: the generation cache for its generative searches,
    the semantic answer cache for its Asks, their ttl and the semantic one's
    min_similarity (a request's own cache settings win)."""

    generation: bool = False
    semantic: bool = False
    ttl: timedelta | None = None
    min_similarity: float | None = None


@_proto("gensearch.retrieval.v1.GenerativeConfig")
@dataclass
class GenerativeConfig:
    """A collection's generative defaults; ``fallback`` its chain (at most 4 pairs), tried
    when the primary fails with a 5xx, a failed connection, a timeout or 429s past its
    share of the deadline."""

    provider: str = ""
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompt: str = ""
    user_instructions: str = ""
    context_fields: list[str] = field(default_factory=list)
    fallback: list[GenerativeModel] = field(default_factory=list)
    cache: CacheDefaults | None = None


@_proto("gensearch.retrieval.v1.Chunking")
@dataclass
class Chunking:
    """Objects that are chunks of a document: which property names the document and
    which orders its chunks (Ask and GenerativeSearch can then widen a hit with its
    neighbours, ``expand_context``)."""

    document_property: str = ""
    order_property: str = ""


@_proto("gensearch.retrieval.v1.Rerank")
@dataclass
class Rerank:
    """A rerank stage after retrieval: ``candidates`` hits retrieved (0: the service's
    default), scored against ``query`` (empty: the query's text) by ``provider`` (empty or
    ``"mmr"``: local maximal marginal relevance, weighed by ``mmr_lambda``; else a
    configured /v1/rerank provider, or the caller's own ``base_url``), the best kept. As a
    request's ``rerank=``, or a collection's default for its Asks and generative searches."""

    provider: str = ""
    model: str = ""
    candidates: int = 0
    query: str = ""
    properties: list[str] = field(default_factory=list)
    mmr_lambda: float | None = None
    base_url: str = ""


@_proto("gensearch.retrieval.v1.Collection")
@dataclass
class Collection:
    name: str
    description: str = ""
    properties: list[Property] = field(default_factory=list)
    vectorizer: Vectorizer | None = None
    keyword_index: bool | None = None
    generative: GenerativeConfig | None = None
    create_time: datetime | None = None
    chunking: Chunking | None = None
    # The default rerank stage of Ask and generative search over it (None: none).
    rerank: Rerank | None = None
    # GetCollection only: how many objects it holds.
    object_count: int | None = None
    raw: Any = field(default=None, repr=False, compare=False)

    def property_types(self) -> dict[str, str]:
        return {p.name: p.data_type for p in self.properties}


@_proto("gensearch.retrieval.v1.DataObject")
@dataclass
class DataObject:
    """An object to store (``id`` generated when empty) or one read back."""

    properties: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    vector: list[float] = field(default_factory=list, repr=False)
    raw: Any = field(default=None, repr=False, compare=False)


@_proto("gensearch.retrieval.v1.BatchGetObjectsResponse")
@dataclass
class BatchGetResult:
    """What ``data.get_many`` found: the objects (in the order their ids were first given,
    each once) and the ids the collection does not hold (canonical lower-case form, same
    order; another tenant's object is missing exactly like one never written)."""

    objects: list[DataObject] = field(default_factory=list)
    missing_ids: list[str] = field(default_factory=list)
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Every id was found."""
        return not self.missing_ids

    def by_id(self) -> dict[str, DataObject]:
        """The objects found, by id (as the service returned it: canonical form)."""
        return {o.id: o for o in self.objects}

    def __iter__(self) -> Any:
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> DataObject:
        return self.objects[index]


@dataclass
class ChunkRange:
    """For ``data.chunks``: one document (a value of the collection's
    ``chunking.document_property``) between two positions, inclusive (``None``: from the
    start / to the end)."""

    document: Any
    first: int | None = None
    last: int | None = None


@_proto("gensearch.retrieval.v1.ChunkList")
@dataclass
class ChunkList:
    """One range's chunks, in document order; ``truncated``: more matched than came back."""

    chunks: list[Hit] = field(default_factory=list)
    truncated: bool = False
    raw: Any = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Any:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> Hit:
        return self.chunks[index]


@_proto("gensearch.retrieval.v1.ObjectError")
@dataclass
class ObjectError:
    """Why one object was not written: its position in what you passed, its id, the field."""

    index: int
    id: str = ""
    field: str = ""
    message: str = ""


@dataclass
class WriteResult:
    """What an insert or import did: the ids written (request order) and per-object errors."""

    ids: list[str] = field(default_factory=list)
    errors: list[ObjectError] = field(default_factory=list)
    received: int = 0
    imported: int = 0
    # An import rejected more objects than the service lists (its max_import_errors):
    # received - imported counts them all.
    errors_truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and self.received == self.imported


@_proto("gensearch.retrieval.v1.Hit")
@dataclass
class Hit:
    id: str
    properties: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0
    vector: list[float] = field(default_factory=list, repr=False)
    # With a rerank stage: the reranker's score (hits are in its order; ``score`` stays
    # the retrieval score). None: not reranked.
    rerank_score: float | None = None
    raw: Any = field(default=None, repr=False, compare=False)

    def __getitem__(self, name: str) -> Any:
        return self.properties[name]


@_proto("gensearch.retrieval.v1.SearchResponse")
@dataclass
class SearchResult:
    hits: list[Hit] = field(default_factory=list)
    embed_ms: float = 0.0
    query_ms: float = 0.0
    raw: Any = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Any:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index: int) -> Hit:
        return self.hits[index]


# --- generation ------------------------------------------------------------------------------


@_proto("gensearch.generation.v1.Usage")
@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False


@_proto("gensearch.generation.v1.Message")
@dataclass
class ChatMessage:
    role: str = ""
    content: str = ""


@_proto("gensearch.generation.v1.Provider")
@dataclass
class Provider:
    """An LLM provider the generation service has configured (``generate.models()``);
    ``models`` starts with ``default_model``. ``models_checked``: a model outside
    ``models`` is refused before any call (else the endpoint decides). ``requires_key``:
    a call needs a key, the caller's ``x-<name>-api-key`` or the operator's
    (``api_key_configured``). Through the
    gateway ``base_url`` and ``api_key_env`` are empty: the operator's endpoints and key
    variables are not shown to clients (the generation service itself gives them)."""

    name: str = ""
    kind: str = ""
    base_url: str = ""
    default_model: str = ""
    models: list[str] = field(default_factory=list)
    api_key_env: str = ""
    api_key_configured: bool = False
    max_concurrency: int = 0
    context_window: int = 0
    models_checked: bool = False
    requires_key: bool = False


@_proto("gensearch.generation.v1.ListModelsResponse")
@dataclass
class Models:
    """What ``generate.models()`` answers: every provider (iterable), the default one's
    name, the operator's allowlist for a request's ``base_url``, and the most
    ``max_tokens`` any request may ask for (0: not said)."""

    providers: list[Provider] = field(default_factory=list)
    default_provider: str = ""
    allowed_hosts: str = ""
    max_tokens_limit: int = 0
    raw: Any = field(default=None, repr=False, compare=False)

    def provider(self, name: str = "") -> Provider:
        """The provider named ``name`` (case-insensitive; empty: the default one);
        ``KeyError`` when there is none."""
        wanted = (name or self.default_provider).lower()
        for provider in self.providers:
            if provider.name.lower() == wanted:
                return provider
        raise KeyError(name or self.default_provider)

    def __iter__(self) -> Any:
        return iter(self.providers)

    def __len__(self) -> int:
        return len(self.providers)


@_proto("gensearch.generation.v1.Debug")
@dataclass
class CompletionDebug:
    """With ``debug=True``: the exact JSON body sent (no keys) and, when the caller's own
    ``base_url`` answered, its URL (through the gateway an operator's endpoint is not named)."""

    url: str = ""
    request_body: str = ""


@_proto("gensearch.generation.v1.GenerateResponse")
@dataclass
class Completion:
    """One completion (``generate.complete``; the last event of ``generate_stream.complete``).
    ``upstream_calls`` is what the LLM-calls quota was charged for it."""

    text: str = ""
    model: str = ""
    finish_reason: str = ""
    usage: Usage | None = None
    provider: str = ""
    fallback_index: int = 0
    structured: dict[str, Any] | None = None
    corrected: bool = False
    attempts: int = 0
    wait_time: timedelta | None = None
    upstream_calls: int = 0
    debug: CompletionDebug | None = None
    raw: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.structured = exact_structured(self.text, self.structured)

    def __str__(self) -> str:
        return self.text


@dataclass
class CompletionDelta:
    """A piece of the completion's text."""

    delta: str
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass
class CompletionRestart:
    """With ``response_format``: the deltas so far did not match the schema; discard them
    (a corrective retry's deltas follow)."""

    raw: Any = field(default=None, repr=False, compare=False)


@dataclass
class CompletionEvent:
    """Last: the whole completion (``text`` is the deltas since the last restart)."""

    completion: Completion
    raw: Any = field(default=None, repr=False, compare=False)


CompletionStreamEvent = CompletionDelta | CompletionRestart | CompletionEvent


@_proto("gensearch.gateway.v1.GenerationError")
@dataclass
class GenerationError:
    """A failure scoped to one hit (or the grouped call): what a failed call's
    ``GensearchError`` would carry. ``reason``, ``domain`` and ``metadata`` are its
    ErrorInfo (same reason, same metadata keys: ``field``, ``property``, ``max_chars``,
    ``setting``, ``provider``, ``attempts`` ...)."""

    code: int = 0
    status: str = ""
    message: str = ""
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def field(self) -> str:
        """The request field at fault ("" when none was named), as
        ``GensearchError.field``."""
        return self.metadata.get("field", "")


@_proto("gensearch.gateway.v1.GenerationResult")
@dataclass
class GenerationResult:
    result: str = ""
    error: GenerationError | None = None
    usage: Usage | None = None
    model: str = ""
    finish_reason: str = ""
    prompt: str = ""
    # The provider that answered and which pair of the fallback chain it was (0: the
    # primary); with response_format, the answer parsed against the schema.
    provider: str = ""
    fallback_index: int = 0
    structured: dict[str, Any] | None = None
    # Answered from the generation cache (no LLM call); upstream attempts and time spent
    # waiting for the provider's limits.
    cached: bool = False
    attempts: int = 0
    wait_time: timedelta | None = None
    # Requests this call sent upstream (fallback pairs, retries, a corrective retry): what
    # the LLM-calls quota was charged for it; 0 for a cached answer.
    upstream_calls: int = 0

    def __post_init__(self) -> None:
        self.structured = exact_structured(self.result, self.structured)

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        if self.error is not None:
            return f"[{self.error.status}] {self.error.message}"
        return self.result


@_proto("gensearch.gateway.v1.GenerativeHit")
@dataclass
class GenerativeHit:
    hit: Hit
    generation: GenerationResult | None = None

    @property
    def id(self) -> str:
        return self.hit.id

    @property
    def properties(self) -> dict[str, Any]:
        return self.hit.properties

    @property
    def result(self) -> str:
        """The per-hit answer ("" when it failed or none was asked)."""
        return self.generation.result if self.generation else ""

    @property
    def error(self) -> GenerationError | None:
        """This hit's own failure (None when it succeeded or none was asked)."""
        return self.generation.error if self.generation else None


@_proto("gensearch.gateway.v1.ContextExpansion")
@dataclass
class ContextExpansion:
    """A request's ``expand_context=`` (collections with ``chunking``): widen each hit with
    ``neighbors`` chunks either side of it, or its ``whole_document``, within ``max_tokens``
    estimated tokens for all passages (None: the service's default)."""

    neighbors: int = 0
    whole_document: bool = False
    max_tokens: int | None = None


@_proto("gensearch.gateway.v1.ContextPassage")
@dataclass
class ContextPassage:
    """A passage given to the model with ``expand_context``: consecutive chunks of one
    ``document`` (its ``chunking.document_property`` value) at positions ``first`` to
    ``last``; ``number`` its ``[n]`` in the prompt, ``hit_ids`` the hits inside it (rank
    order), ``chunk_ids`` every chunk in it (document order)."""

    number: int = 0
    hit_ids: list[str] = field(default_factory=list)
    chunk_ids: list[str] = field(default_factory=list)
    document: Any = None
    first: int = 0
    last: int = 0


@_proto("gensearch.gateway.v1.GenerativeSearchResponse")
@dataclass
class GenerativeSearchResult:
    hits: list[GenerativeHit] = field(default_factory=list)
    grouped: GenerationResult | None = None
    usage: Usage | None = None
    # Sum of upstream_calls over every per-hit and grouped result.
    upstream_calls: int = 0
    # With expand_context: the passages of the grouped prompt.
    passages: list[ContextPassage] = field(default_factory=list)
    raw: Any = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Any:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index: int) -> GenerativeHit:
        return self.hits[index]


@_proto("gensearch.gateway.v1.GenerateOnObjectsResponse")
@dataclass
class GenerateOnObjectsResult(GenerativeSearchResult):
    """What ``generate.by_ids`` / ``generate.on_objects`` answered: one ``GenerativeHit``
    per object in the order given (``id`` empty for inline objects; an id the collection
    does not hold is a hit with no properties and its own NOT_FOUND ``error``), the
    ``grouped`` result and the summed ``usage``."""

    @property
    def failed(self) -> list[GenerativeHit]:
        """The objects whose own generation failed."""
        return [h for h in self.hits if h.error is not None]

    def by_id(self) -> dict[str, GenerativeHit]:
        """The objects named by id, by id (canonical form; an id given twice: its last)."""
        return {h.id: h for h in self.hits if h.id}


# Streamed generative search: one of these per event, in arrival order. Each event's
# ``raw`` is the stream message it came from.


@_proto("gensearch.gateway.v1.HitsEvent")
@dataclass
class HitsEvent:
    """First: the search results (and, with expand_context, the grouped prompt's
    passages)."""

    hits: list[Hit] = field(default_factory=list)
    passages: list[ContextPassage] = field(default_factory=list)
    raw: Any = field(default=None, repr=False, compare=False)


@_proto("gensearch.gateway.v1.HitResultEvent")
@dataclass
class HitResultEvent:
    """A per-hit generation finished (completion order); ``hit_index`` into HitsEvent.hits."""

    hit_index: int = 0
    generation: GenerationResult | None = None
    raw: Any = field(default=None, repr=False, compare=False)


@_proto("gensearch.gateway.v1.TokenEvent")
@dataclass
class TokenEvent:
    """A piece of a hit's (or, ``grouped``, the grouped call's) text. ``restart`` (with
    ``response_format``): discard that call's deltas so far, its corrective retry's follow."""

    hit_index: int = 0
    grouped: bool = False
    delta: str = ""
    restart: bool = False
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass
class GroupedEvent:
    """The grouped result."""

    generation: GenerationResult
    raw: Any = field(default=None, repr=False, compare=False)


@_proto("gensearch.gateway.v1.DoneEvent")
@dataclass
class DoneEvent:
    usage: Usage | None = None
    upstream_calls: int = 0
    raw: Any = field(default=None, repr=False, compare=False)


SearchEvent = HitsEvent | HitResultEvent | TokenEvent | GroupedEvent | DoneEvent


# --- ask -------------------------------------------------------------------------------------


@_proto("gensearch.gateway.v1.Citation")
@dataclass
class Citation:
    """``[number]`` in the answer cites hit ``id``; with the span of the hit's
    ``property`` that best supports the citing sentence (offsets in code points, as
    Python indexes strings: ``answer[answer_start:answer_end]``)."""

    number: int = 0
    id: str = ""
    sentence: int = 0
    answer_start: int = 0
    answer_end: int = 0
    property: str = ""
    source_start: int = 0
    source_end: int = 0
    source_text: str = ""
    support: float = 0.0
    supported: bool = False
    # With expand_context: every hit of the cited passage.
    hit_ids: list[str] = field(default_factory=list)
    # Not checked: the answer's check reached GENSEARCH_GATEWAY_MAX_CITATION_CHECKS
    # (``supported`` is then False without meaning unsupported).
    unchecked: bool = False


@_proto("gensearch.gateway.v1.AnswerSentence")
@dataclass
class AnswerSentence:
    """One sentence of the answer (``answer[start:end]``) and its citations."""

    start: int = 0
    end: int = 0
    citations: list[Citation] = field(default_factory=list)
    cited: bool = False
    supported: bool = False


@_proto("gensearch.gateway.v1.DroppedCitation")
@dataclass
class DroppedCitation:
    """A ``[number]`` marker that pointed at no hit of the prompt."""

    number: int = 0
    sentence: int = 0
    start: int = 0
    end: int = 0


@_proto("gensearch.gateway.v1.Trimmed")
@dataclass
class Trimmed:
    history_turns: int = 0
    hits: int = 0


@_proto("gensearch.gateway.v1.AskResponse")
@dataclass
class Answer:
    answer: str = ""
    citations: list[Citation] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    usage: Usage | None = None
    conversation_id: str = ""
    interaction_id: str = ""
    rewritten_query: str = ""
    trimmed: Trimmed | None = None
    model: str = ""
    prompt: list[ChatMessage] = field(default_factory=list)
    # The provider that answered (a fallback chain may have moved on), and which pair of
    # the chain it was: 0 the primary, n fallback[n-1].
    provider: str = ""
    fallback_index: int = 0
    # Verified citations: the answer's sentences, the share of them with a supported
    # citation, and markers that pointed at no hit.
    sentences: list[AnswerSentence] = field(default_factory=list)
    citation_coverage: float = 0.0
    dropped_citations: list[DroppedCitation] = field(default_factory=list)
    # How rewritten_query was obtained: "unchanged", "model" or "fallback" (then
    # rewrite_rejection says why the model's rewrite was refused).
    rewrite_method: str = ""
    rewrite_rejection: str = ""
    # Answered from the semantic cache (no retrieval, no LLM call): the stored question
    # it matched (empty when another user of the tenant asked it) and how close it was
    # (cosine).
    cached: bool = False
    cached_question: str = ""
    cached_similarity: float = 0.0
    # The prompt carried the conversation's rolling summary; tokens of history (summary
    # and turns) in the prompt, and the budget they had.
    summary_used: bool = False
    history_tokens: int = 0
    history_budget_tokens: int = 0
    # Of the answer's call: upstream attempts, and time spent waiting for the provider's
    # limits (a Retry-After, the rate buckets).
    attempts: int = 0
    wait_time: timedelta | None = None
    # Requests sent upstream for this Ask (question rewrite and answer); 0 when cached.
    upstream_calls: int = 0
    # The turn was already stored under the ask's request_id: this is that turn (hits as
    # ids only), and nothing was generated, searched or stored for it.
    replayed: bool = False
    # With expand_context: the passages the prompt numbered (a citation's ``number``).
    passages: list[ContextPassage] = field(default_factory=list)
    raw: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.answer


@_proto("gensearch.gateway.v1.AskContextEvent")
@dataclass
class AskContextEvent:
    """First: the hits used and the rewritten query."""

    hits: list[Hit] = field(default_factory=list)
    rewritten_query: str = ""
    conversation_id: str = ""
    rewrite_method: str = ""
    rewrite_rejection: str = ""
    raw: Any = field(default=None, repr=False, compare=False)


@_proto("gensearch.gateway.v1.CitationsEvent")
@dataclass
class CitationsEvent:
    """After the last delta, before the answer: the citation check of the whole answer."""

    citations: list[Citation] = field(default_factory=list)
    sentences: list[AnswerSentence] = field(default_factory=list)
    citation_coverage: float = 0.0
    dropped_citations: list[DroppedCitation] = field(default_factory=list)
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass
class AnswerDelta:
    """A piece of the answer's text."""

    delta: str
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass
class AnswerEvent:
    """Last: the whole answer."""

    answer: Answer
    raw: Any = field(default=None, repr=False, compare=False)


AskEvent = AskContextEvent | AnswerDelta | CitationsEvent | AnswerEvent


# --- memory ----------------------------------------------------------------------------------


@_proto("gensearch.memory.v1.ConversationSummary")
@dataclass
class ConversationSummary:
    """The rolling summary of a conversation's older turns (made by the LLM)."""

    text: str = ""
    through_interaction_id: str = ""
    summarised_turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    folds: int = 0
    update_time: datetime | None = None
    evicted_unsummarised_turns: int = 0


@_proto("gensearch.memory.v1.Conversation")
@dataclass
class Conversation:
    conversation_id: str
    name: str = ""
    user: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None
    interaction_count: int = 0
    # Retention: when it disappears (None: never), the sliding time to live, most turns kept.
    expire_time: datetime | None = None
    ttl: timedelta | None = None
    max_turns: int = 0
    summary: ConversationSummary | None = None
    summary_disabled: bool = False
    # Turns deleted before the summary covered them (update_summary's
    # expected_unfolded_deletions).
    unfolded_deletions: int = 0
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.conversation_id


@_proto("gensearch.memory.v1.Interaction")
@dataclass
class Interaction:
    interaction_id: str
    conversation_id: str = ""
    input: str = ""
    prompt_template: str = ""
    response: str = ""
    origin: str = ""
    additional_info: dict[str, Any] = field(default_factory=dict)
    create_time: datetime | None = None
    # Set when additional_info was last changed (UpdateInteraction); None before.
    update_time: datetime | None = None
    # How many traces it has (``conversations.traces`` reads them).
    trace_count: int = 0
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.interaction_id


@_proto("gensearch.memory.v1.Trace")
@dataclass
class Trace:
    """One step of the work that produced an interaction; ``step``: question_rewrite,
    retrieval, generation or other."""

    trace_number: int = 0
    step: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    start_time: datetime | None = None
    duration: timedelta | None = None
    truncated: bool = False
    raw: Any = field(default=None, repr=False, compare=False)


@_proto("gensearch.memory.v1.InteractionLimits")
@dataclass
class InteractionLimits:
    """What memory accepts in one turn, as it is configured (UTF-8 bytes; serialized
    where the proto says so); ``max_interaction_bytes``: the whole interaction."""

    max_text_bytes: int = 0
    max_prompt_template_bytes: int = 0
    max_origin_bytes: int = 0
    max_additional_info_bytes: int = 0
    max_traces: int = 0
    max_trace_bytes: int = 0
    max_interaction_bytes: int = 0
    max_name_bytes: int = 0
    max_summary_bytes: int = 0
    max_request_id_bytes: int = 0
    max_value_depth: int = 0
    raw: Any = field(default=None, repr=False, compare=False)


@_proto("gensearch.memory.v1.CheckStorageResponse")
@dataclass
class StorageUsage:
    """Your stored bytes and conversations, and the most allowed of each
    (``conversations.check_storage``); ``limits``: what a turn may hold (None from a memory
    service older than them); ``interaction``: with ``request_id``, your turn already
    stored with it (None: none); ``request_id_in_use``: another attempt holds
    ``request_id`` (asked with a reservation, as the gateway's Ask does)."""

    used_bytes: int = 0
    limit_bytes: int = 0
    conversation_count: int = 0
    max_conversations: int = 0
    limits: InteractionLimits | None = None
    interaction: Interaction | None = None
    request_id_in_use: bool = False
    raw: Any = field(default=None, repr=False, compare=False)


@_proto("gensearch.memory.v1.InteractionHit")
@dataclass
class InteractionHit:
    """An interaction ``conversations.search`` found; higher ``score`` is better."""

    interaction: Interaction
    score: float = 0.0
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.interaction.interaction_id


__all__ = [
    "Answer",
    "AnswerDelta",
    "AnswerEvent",
    "AnswerSentence",
    "AskContextEvent",
    "AskEvent",
    "BatchGetResult",
    "CacheDefaults",
    "ChatMessage",
    "ChunkList",
    "ChunkRange",
    "Chunking",
    "Citation",
    "CitationsEvent",
    "Collection",
    "Completion",
    "CompletionDebug",
    "CompletionDelta",
    "CompletionEvent",
    "CompletionRestart",
    "CompletionStreamEvent",
    "ContextExpansion",
    "ContextPassage",
    "Conversation",
    "ConversationSummary",
    "DataObject",
    "DoneEvent",
    "DroppedCitation",
    "GenerateOnObjectsResult",
    "GenerationError",
    "GenerationResult",
    "GenerativeConfig",
    "GenerativeHit",
    "GenerativeModel",
    "GenerativeSearchResult",
    "GroupedEvent",
    "Hit",
    "HitResultEvent",
    "HitsEvent",
    "Interaction",
    "InteractionHit",
    "InteractionLimits",
    "Models",
    "ObjectError",
    "Property",
    "Provider",
    "Rerank",
    "SearchEvent",
    "SearchResult",
    "StorageUsage",
    "TokenEvent",
    "Trace",
    "Trimmed",
    "Usage",
    "Vectorizer",
    "WriteResult",
    "from_proto",
    "to_proto",
]
