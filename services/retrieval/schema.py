"""Collection schemas: validating a new collection and checking objects against it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import json_format

from services.common.auth import DEFAULT_TENANT
from services.common.errors import InvalidArgument, MissingField, quote
from services.common.model_names import MAX_MODEL_CHARS, check_model_name
from services.common.property_types import (
    TYPE_NAMES,
    ObjectInvalid,
    coerce_value,
    parse_date,
)
from services.common.settings import DEFAULT_MAX_FALLBACKS, DEFAULT_MAX_PROMPT_CHARS
from services.common.values import (
    DEFAULT_MAX_DEPTH,
    check_chars,
    check_value,
)
from services.common.well_known import duration_seconds
from services.retrieval.endpoints import ENV_NAME, EmbeddingPolicy
from services.retrieval.normalize import NORMALIZED, normalized_copy
from services.retrieval.schema_compat import unknown_enum_value
from services.retrieval.tenancy import DERIVED, NAMING_KEY, TENANT_KEY, engine_name

COLLECTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
PROPERTY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# The defaults of the settings GENSEARCH_RETRIEVAL_MAX_PROPERTIES and
# _MAX_DESCRIPTION_CHARS (settings.py).
MAX_PROPERTIES = 256
MAX_DESCRIPTION = 4096
PROPERTIES_SETTING = "GENSEARCH_RETRIEVAL_MAX_PROPERTIES"
DESCRIPTION_SETTING = "GENSEARCH_RETRIEVAL_MAX_DESCRIPTION_CHARS"
# The default and the most of GENSEARCH_RETRIEVAL_MAX_DIMENSIONS: Qdrant's own limit.
MAX_DIMENSIONS = 65_536
DIMENSIONS_SETTING = "GENSEARCH_RETRIEVAL_MAX_DIMENSIONS"
# The defaults of GENSEARCH_RETRIEVAL_MAX_PROVIDER_CHARS (characters of a provider name in
# a collection's generative config and fallback chain: which providers exist is the
# generation service's to say, when the chain is used; the chain's length is bounded by the
# gateway's default MAX_FALLBACKS) and _MAX_RERANK_DEFAULT_CHARS (a default rerank's
# provider, model and base_url).
MAX_PROVIDER = 256
MAX_RERANK_DEFAULT = 2048
PROVIDER_SETTING = "GENSEARCH_RETRIEVAL_MAX_PROVIDER_CHARS"
RERANK_DEFAULT_SETTING = "GENSEARCH_RETRIEVAL_MAX_RERANK_DEFAULT_CHARS"
# A model name's characters (services/common/model_names.py; its default MAX_MODEL_CHARS).
MODEL_SETTING = "GENSEARCH_RETRIEVAL_MAX_MODEL_CHARS"
TEXT_TYPES = (pb.DATA_TYPE_TEXT, pb.DATA_TYPE_TEXT_ARRAY)
DISTANCES: dict[int, str] = {
    pb.DISTANCE_COSINE: "cosine",
    pb.DISTANCE_DOT: "dot",
    pb.DISTANCE_EUCLID: "euclid",
}
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"


def check_collection_name(name: str, field: str) -> str:
    if not name:
        raise MissingField(f"{field} is required", field=field)
    if not COLLECTION_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{field} must match [A-Za-z][A-Za-z0-9_-]{{0,62}}", field=field, reason="BAD_NAME"
        )
    return name


def validate_new_collection(
    collection: pb.Collection,
    *,
    local_model_name: str,
    local_dimensions: int | None,
    policy: EmbeddingPolicy,
    max_description_chars: int = MAX_DESCRIPTION,
    max_properties: int = MAX_PROPERTIES,
    max_dimensions: int = MAX_DIMENSIONS,
    max_provider_chars: int = MAX_PROVIDER,
    max_model_chars: int = MAX_MODEL_CHARS,
) -> pb.Collection:
    """A normalized copy of ``collection`` with every default filled in.

    ``local_dimensions`` is the local model's vector size (needed only for LOCAL).
    """
    out = pb.Collection()
    out.CopyFrom(collection)
    # Only what the schema declares: the stored JSON cannot hold unknown fields (a client
    # built from another .proto, or one padding on purpose), and kept in the cached schema
    # they were answered to every reader, counted against the tenant's schema bytes, until
    # a restart or another replica answered without them.
    out.DiscardUnknownFields()
    out.ClearField("create_time")
    check_collection_name(out.name, "collection.name")
    check_chars(
        out.description, "collection.description", max_description_chars, DESCRIPTION_SETTING
    )
    if len(out.properties) > max_properties:
        raise InvalidArgument(
            f"a collection has at most {max_properties} properties ({PROPERTIES_SETTING})",
            field="collection.properties",
            metadata={"max": str(max_properties), "setting": PROPERTIES_SETTING},
        )
    types: dict[str, int] = {}
    for i, prop in enumerate(out.properties):
        where = f"collection.properties[{i}]"
        if not PROPERTY_NAME.fullmatch(prop.name):
            raise InvalidArgument(
                f"{where}.name must match [A-Za-z_][A-Za-z0-9_]{{0,63}}",
                field=f"{where}.name",
                reason="BAD_NAME",
            )
        if prop.name in types:
            raise InvalidArgument(
                f"property {quote(prop.name)} is declared twice", field=f"{where}.name"
            )
        if prop.data_type == pb.DATA_TYPE_UNSPECIFIED:
            raise MissingField(f"{where}.data_type is required", field=f"{where}.data_type")
        if prop.data_type not in TYPE_NAMES:
            raise InvalidArgument(
                f"{where}.data_type {prop.data_type} is not a DataType", field=f"{where}.data_type"
            )
        check_chars(
            prop.description, f"{where}.description", max_description_chars, DESCRIPTION_SETTING
        )
        types[prop.name] = prop.data_type
    _validate_vectorizer(
        out.vectorizer,
        types,
        local_model_name,
        local_dimensions,
        policy,
        max_dimensions,
        max_model_chars,
    )
    if not out.HasField("keyword_index"):
        out.keyword_index = True
    _validate_generative(out.generative, types, max_provider_chars, max_model_chars)
    _validate_chunking(out, types)
    _validate_rerank_default(out, types)
    return out


# Types that can name a document (compared for equality) and order chunks in it.
DOCUMENT_TYPES = (pb.DATA_TYPE_TEXT, pb.DATA_TYPE_INT)


def _validate_chunking(collection: pb.Collection, types: dict[str, int]) -> None:
    """``chunking`` names two distinct properties: a text or int document key and an int
    position."""
    if not collection.HasField("chunking"):
        return
    where = "collection.chunking"
    chunking = collection.chunking
    checks = (
        ("document_property", DOCUMENT_TYPES, "a text or int"),
        ("order_property", (pb.DATA_TYPE_INT,), "an int"),
    )
    for name, allowed, wanted in checks:
        value = getattr(chunking, name)
        if not value:
            raise MissingField(f"{where}.{name} is required", field=f"{where}.{name}")
        kind = types.get(value)
        if kind is None:
            raise InvalidArgument(
                f"{where}.{name}: no property {quote(value)}",
                field=f"{where}.{name}",
                reason="UNKNOWN_PROPERTY",
            )
        if kind not in allowed:
            raise InvalidArgument(
                f"{where}.{name}: {quote(value)} is a {TYPE_NAMES[kind]} property; it must be "
                f"{wanted} property",
                field=f"{where}.{name}",
                reason="BAD_PROPERTY_TYPE",
            )
    if chunking.document_property == chunking.order_property:
        raise InvalidArgument(
            f"{where}.order_property must differ from document_property",
            field=f"{where}.order_property",
        )


def _validate_rerank_default(collection: pb.Collection, types: dict[str, int]) -> None:
    """What can be checked without the service's settings; its provider and base URL are
    checked at creation too (``Rerankers.check_default``, which bounds their lengths and
    the model's first), and all of it again when a request uses the default."""
    if not collection.HasField("rerank"):
        return
    where = "collection.rerank"
    rerank = collection.rerank
    if rerank.candidates < 0:
        raise InvalidArgument(
            f"{where}.candidates must not be negative", field=f"{where}.candidates"
        )
    if rerank.HasField("mmr_lambda") and not 0.0 <= rerank.mmr_lambda <= 1.0:
        raise InvalidArgument(f"{where}.mmr_lambda must be in [0, 1]", field=f"{where}.mmr_lambda")
    if rerank.query:
        raise InvalidArgument(
            f"{where}.query: a collection's default reranks against each request's query",
            field=f"{where}.query",
        )
    _check_text_properties(rerank.properties, types, f"{where}.properties")


def _validate_vectorizer(
    vec: pb.Vectorizer,
    types: dict[str, int],
    local_model_name: str,
    local_dimensions: int | None,
    policy: EmbeddingPolicy,
    max_dimensions: int = MAX_DIMENSIONS,
    max_model_chars: int = MAX_MODEL_CHARS,
) -> None:
    where = "collection.vectorizer"
    if vec.kind == pb.VECTORIZER_KIND_UNSPECIFIED:
        vec.kind = pb.VECTORIZER_KIND_LOCAL
    if vec.distance == pb.DISTANCE_UNSPECIFIED:
        vec.distance = pb.DISTANCE_COSINE
    if vec.distance not in DISTANCES:
        raise InvalidArgument(f"{where}.distance is unknown", field=f"{where}.distance")
    if vec.dimensions < 0 or vec.dimensions > max_dimensions:
        raise InvalidArgument(
            f"{where}.dimensions must be in 1..{max_dimensions} ({DIMENSIONS_SETTING})",
            field=f"{where}.dimensions",
            metadata={"max": str(max_dimensions), "setting": DIMENSIONS_SETTING},
        )
    if vec.kind == pb.VECTORIZER_KIND_LOCAL:
        if vec.model and vec.model != local_model_name:
            raise InvalidArgument(
                f"{where}.model: the local vectorizer serves {local_model_name!r} only",
                field=f"{where}.model",
            )
        vec.model = local_model_name
        assert local_dimensions is not None
        if vec.dimensions and vec.dimensions != local_dimensions:
            raise InvalidArgument(
                f"{where}.dimensions: {local_model_name} makes {local_dimensions}-dimensional "
                "vectors",
                field=f"{where}.dimensions",
            )
        vec.dimensions = local_dimensions
    elif vec.kind == pb.VECTORIZER_KIND_OPENAI_COMPATIBLE:
        if not vec.base_url.startswith(("http://", "https://")):
            raise InvalidArgument(
                f"{where}.base_url must be an http(s) URL", field=f"{where}.base_url"
            )
        if vec.api_key_env and not ENV_NAME.fullmatch(vec.api_key_env):
            raise InvalidArgument(
                f"{where}.api_key_env must name an environment variable",
                field=f"{where}.api_key_env",
            )
        # Sent upstream in every embeddings body and named in each call's span, as a
        # rerank or generative model is: held to the same model-name shape.
        check_model_name(vec.model, f"{where}.model", max_model_chars, MODEL_SETTING)
        policy.endpoint(vec, where)
        vec.model = vec.model or OPENAI_DEFAULT_MODEL
        if not vec.dimensions:
            raise MissingField(
                f"{where}.dimensions is required for an OpenAI-compatible vectorizer",
                field=f"{where}.dimensions",
            )
    elif vec.kind == pb.VECTORIZER_KIND_NONE:
        if not vec.dimensions:
            raise MissingField(
                f"{where}.dimensions is required when callers supply vectors",
                field=f"{where}.dimensions",
            )
        if vec.source_properties:
            raise InvalidArgument(
                f"{where}.source_properties needs a vectorizer", field=f"{where}.source_properties"
            )
    else:
        raise InvalidArgument(f"{where}.kind is unknown", field=f"{where}.kind")
    _check_text_properties(vec.source_properties, types, f"{where}.source_properties")


def _check_text_properties(names: Iterable[str], types: dict[str, int], where: str) -> None:
    for i, name in enumerate(names):
        if types.get(name) not in TEXT_TYPES:
            raise InvalidArgument(
                f"{where}[{i}]: {quote(name)} is not a text property", field=f"{where}[{i}]"
            )


def _check_fallback_repeats(gen: pb.GenerativeConfig, where: str) -> None:
    """A pair naming the primary's or an earlier pair's provider and model, as written,
    is refused when the collection is made: the gateway would refuse the chain at every
    use (DUPLICATE_FALLBACK). A repeat only the provider's default model reveals (an empty
    model beside its name) is the gateway's to find, which knows the defaults."""
    seen: dict[tuple[str, str], str] = {}
    if gen.provider.strip():
        seen[(gen.provider.strip().lower(), gen.model)] = "the primary"
    for i, pair in enumerate(gen.fallback):
        field = f"{where}.fallback[{i}]"
        key = (pair.provider.strip().lower(), pair.model)
        first = seen.get(key)
        if first is not None:
            raise InvalidArgument(
                f"{field} repeats {first} (provider {quote(pair.provider)}, model "
                f"{quote(pair.model)}): the same endpoint would be called again, with all "
                "its retries; name another provider or model, or drop the pair",
                field=field,
                reason="DUPLICATE_FALLBACK",
                metadata={"repeats": "primary" if first == "the primary" else first},
            )
        seen[key] = field


def _validate_generative(
    gen: pb.GenerativeConfig, types: dict[str, int], max_provider_chars: int, max_model_chars: int
) -> None:
    where = "collection.generative"
    if gen.HasField("temperature") and not (0.0 <= gen.temperature <= 2.0):
        raise InvalidArgument(
            f"{where}.temperature must be in [0, 2]", field=f"{where}.temperature"
        )
    if gen.HasField("max_tokens") and gen.max_tokens <= 0:
        raise InvalidArgument(f"{where}.max_tokens must be positive", field=f"{where}.max_tokens")
    # Empty: the generation service's default; otherwise held as a fallback pair's is.
    if gen.provider and not gen.provider.strip():
        raise InvalidArgument(
            f"{where}.provider must not be only spaces (leave it empty for the default provider)",
            field=f"{where}.provider",
        )
    check_chars(gen.provider, f"{where}.provider", max_provider_chars, PROVIDER_SETTING)
    check_model_name(gen.model, f"{where}.model", max_model_chars, MODEL_SETTING)
    for name in ("system_prompt", "user_instructions"):
        text = getattr(gen, name)
        if text and not text.strip():
            # Stored, it would stand in for the default as nothing at all.
            raise InvalidArgument(
                f"{where}.{name} must not be only spaces or line breaks (leave it empty for "
                "the default)",
                field=f"{where}.{name}",
            )
        # The gateway's limit at its default, as a request's system prompt has it.
        if len(getattr(gen, name)) > DEFAULT_MAX_PROMPT_CHARS:
            raise InvalidArgument(
                f"{where}.{name} is longer than {DEFAULT_MAX_PROMPT_CHARS} characters "
                "(the default of GENSEARCH_GATEWAY_MAX_PROMPT_CHARS)",
                field=f"{where}.{name}",
                metadata={"max_chars": str(DEFAULT_MAX_PROMPT_CHARS)},
            )
    if len(gen.fallback) > DEFAULT_MAX_FALLBACKS:
        # The gateway's limit at its default: a longer chain would be stored, then refused
        # (FAILED_PRECONDITION) at every search that falls back to it.
        raise InvalidArgument(
            f"{where}.fallback has at most {DEFAULT_MAX_FALLBACKS} pairs "
            "(the default of GENSEARCH_GATEWAY_MAX_FALLBACKS)",
            field=f"{where}.fallback",
            reason="OUT_OF_RANGE",
            metadata={"max": str(DEFAULT_MAX_FALLBACKS)},
        )
    for i, pair in enumerate(gen.fallback):
        if not pair.provider.strip():
            raise MissingField(
                f"{where}.fallback[{i}].provider is required",
                field=f"{where}.fallback[{i}].provider",
            )
        check_chars(
            pair.provider, f"{where}.fallback[{i}].provider", max_provider_chars, PROVIDER_SETTING
        )
        check_model_name(pair.model, f"{where}.fallback[{i}].model", max_model_chars, MODEL_SETTING)
    _check_fallback_repeats(gen, where)
    for i, name in enumerate(gen.context_fields):
        if name not in types:
            raise InvalidArgument(
                f"{where}.context_fields[{i}]: no property {quote(name)}",
                field=f"{where}.context_fields[{i}]",
            )
    cache = gen.cache
    # Upper bounds are the gateway's (its CACHE_MAX_TTL caps what it uses); here only what
    # no setting can make sense of.
    if cache.HasField("ttl") and duration_seconds(cache.ttl, f"{where}.cache.ttl") <= 0:
        raise InvalidArgument(f"{where}.cache.ttl must be positive", field=f"{where}.cache.ttl")
    if cache.HasField("min_similarity") and not 0.5 <= cache.min_similarity <= 1:
        raise InvalidArgument(
            f"{where}.cache.min_similarity must be in [0.5, 1]",
            field=f"{where}.cache.min_similarity",
        )


@dataclass
class Schema:
    """A stored collection with quick lookups; ``tenant`` owns it."""

    collection: pb.Collection
    tenant: str = DEFAULT_TENANT
    # False only for a default tenant's collection stored under its own name, from before
    # every engine name was derived (``tenancy.py``).
    derived_name: bool = True
    types: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.types = {p.name: p.data_type for p in self.collection.properties}

    @property
    def name(self) -> str:
        return self.collection.name

    @property
    def store_name(self) -> str:
        """The collection's name in the engine (``tenancy.engine_name``)."""
        return engine_name(self.tenant, self.name, self.derived_name)

    @property
    def kind(self) -> int:
        return self.collection.vectorizer.kind

    @property
    def dimensions(self) -> int:
        return self.collection.vectorizer.dimensions

    @property
    def distance(self) -> str:
        return DISTANCES[self.collection.vectorizer.distance]

    @property
    def keyword(self) -> bool:
        return self.collection.keyword_index

    @property
    def embeds(self) -> bool:
        return self.kind != pb.VECTORIZER_KIND_NONE

    @property
    def chunking(self) -> pb.Chunking | None:
        return self.collection.chunking if self.collection.HasField("chunking") else None

    def text_properties(self) -> list[str]:
        return [name for name, t in self.types.items() if t in TEXT_TYPES]

    def source_properties(self) -> list[str]:
        return list(self.collection.vectorizer.source_properties) or self.text_properties()

    def to_json(self) -> dict[str, Any]:
        data = json_format.MessageToDict(self.collection, preserving_proto_field_name=True)
        data[TENANT_KEY] = self.tenant
        if self.derived_name:
            data[NAMING_KEY] = DERIVED
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schema:
        """The schema stored as ``data`` (``to_json``); json_format.ParseError when it is not
        a collection's (protobuf wraps every conversion error in it)."""
        collection = pb.Collection()
        # A key this version does not know (a newer one's) is ignored, the file kept as it
        # is; a value of an enum it does not know would be read as UNSPECIFIED: refused.
        json_format.ParseDict(data, collection, ignore_unknown_fields=True)
        unknown = unknown_enum_value(pb.Collection.DESCRIPTOR, data)
        if unknown is not None:
            raise json_format.ParseError(
                f"{unknown} is not a value this version knows (written by a newer version?)"
            )
        derived = data.get(NAMING_KEY) == DERIVED
        return cls(collection, str(data.get(TENANT_KEY, DEFAULT_TENANT)), derived)


# What bounds a chunked collection's document key, stored (prepare_object) and looked up
# (GetChunks, chunks.check_ranges): the two agree.
DOCUMENT_CHARS_SETTING = "GENSEARCH_RETRIEVAL_MAX_QUERY_TEXT_CHARS"


@dataclass
class PreparedObject:
    """An object that passed validation, ready to embed and store."""

    index: int
    id: str
    payload: dict[str, Any]
    vector: list[float] | None


# The longest vector a dot or Euclid collection takes: two vectors this long have a dot
# product of at most 2^124 and a Euclid distance of at most 2^63 (squared 2^126), both
# finite in float32 (whose largest value is ~2^128).
MAX_VECTOR_LENGTH = 2.0**62


def check_vector(vector: Sequence[float], schema: Schema, field: str) -> list[float]:
    """A caller's vector (stored or searched with) as the engine gets it."""
    dimensions = schema.dimensions
    if len(vector) != dimensions:
        raise InvalidArgument(
            f"{field} has {len(vector)} dimensions, the collection expects {dimensions}",
            field=field,
            reason="DIMENSION_MISMATCH",
        )
    # numpy, not a Python loop over the values: this runs for every imported object.
    values = np.asarray(vector, dtype=np.float64)
    if not np.isfinite(values).all():
        raise InvalidArgument(f"{field} holds NaN or infinity", field=field)
    if schema.distance != "cosine":
        # The engine scores dot products and Euclid distances in float32: past this length
        # one overflowed to infinity and the object fell out of every search, silently.
        if too_long(values):
            raise InvalidArgument(
                f"{field} is too long: {schema.distance} scores are float32, "
                "so a vector may be at most 2^62 (4.6e18) long",
                field=field,
                reason="VECTOR_TOO_LONG",
            )
        return values.tolist()
    # Cosine compares directions: the engine normalises in float32, where a large vector's
    # length overflows (it was stored as all zeros) and a tiny one's underflows (kept
    # unnormalised, it scored ~0 against its own direction). Normalised here in float64,
    # where no float32 input (the proto's values are floats) overflows or underflows;
    # length 0 has no direction at all.
    unit = unit_vector(values)
    if unit is None:
        raise InvalidArgument(
            f"{field} has length 0: cosine distance needs a direction",
            field=field,
            reason="ZERO_VECTOR",
        )
    return unit


def too_long(values: np.ndarray) -> bool:
    """Whether ``values`` (finite) is longer than MAX_VECTOR_LENGTH. Its largest value
    first: the length of a double vector such as [1e200] * 16 overflows float64 itself."""
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    return largest > MAX_VECTOR_LENGTH or float(np.linalg.norm(values)) > MAX_VECTOR_LENGTH


def unit_vector(values: np.ndarray) -> list[float] | None:
    """``values`` (finite) scaled to length 1 in float64, or None for length 0. Scaled by
    the largest value first: an embeddings endpoint's JSON numbers are doubles, and the
    length of [1e200] * 16 overflows even float64 (to all zeros again)."""
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if largest == 0.0:
        return None
    values = values / largest
    return (values / float(np.linalg.norm(values))).tolist()


def prepare_object(
    schema: Schema,
    index: int,
    obj: pb.DataObject,
    max_value_depth: int = DEFAULT_MAX_DEPTH,
    max_document_chars: int | None = None,
) -> PreparedObject:
    """Check one object against the schema; raises ObjectInvalid naming the field relative to
    the object (``properties.year``, ``vector``), as ``ObjectError.field`` reports it.
    ``max_document_chars``: the longest text a chunked collection's document property may
    hold (MAX_QUERY_TEXT_CHARS, the bound of GetChunks' ``ranges[].document``)."""
    if obj.id:
        try:
            object_id = str(uuid.UUID(obj.id))
        except ValueError:
            raise ObjectInvalid("id", f"not a UUID: {quote(obj.id)}") from None
    else:
        object_id = str(uuid.uuid4())
    vector: list[float] | None = None
    if len(obj.vector):
        try:
            vector = check_vector(list(obj.vector), schema, "vector")
        except InvalidArgument as err:
            raise ObjectInvalid("vector", err.message) from None
    elif not schema.embeds:
        raise ObjectInvalid("vector", "required: the collection has no vectorizer")
    props: dict[str, Any] = {}
    stamps: dict[str, float] = {}
    # qdrant-edge 0.9 matches MatchValue(True) against the integer 1 and never against a
    # stored JSON true, so bools are filtered through a 0/1 copy (both adapters alike).
    flags: dict[str, int] = {}
    # TEXT_MATCH matches words through the NFKC form of a text; kept only where it differs.
    normalized: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    if obj.HasField("properties"):
        try:
            # Before json_format, which refuses NaN and ±Infinity with a bare ValueError.
            check_value(obj.properties, "properties", max_value_depth)
        except InvalidArgument as err:
            raise ObjectInvalid(err.field or "properties", err.message) from None
        raw = json_format.MessageToDict(obj.properties)
    for name, value in raw.items():
        path = f"properties.{name}"
        data_type = schema.types.get(name)
        if data_type is None:
            raise ObjectInvalid(path, f"unknown property {quote(name)}")
        if value is None:
            continue
        props[name] = coerce_value(data_type, value, path)
        if (
            max_document_chars is not None
            and schema.chunking is not None
            and name == schema.chunking.document_property
            and isinstance(props[name], str)
            and len(props[name]) > max_document_chars
        ):
            # GetChunks names a document by this key, and takes none longer (it is sent to
            # the engine as a filter value): a longer one was stored and its chunks could
            # never be read by document.
            raise ObjectInvalid(
                path,
                f"the document key is longer than {max_document_chars} characters "
                f"({DOCUMENT_CHARS_SETTING}), the longest GetChunks can name",
            )
        if data_type == pb.DATA_TYPE_DATE:
            # No longer read (filters compare the stored date itself, exactly: filters.py);
            # still written so a rollback to a release that filters on it finds new objects.
            stamps[name] = parse_date(props[name], path).timestamp()
        elif data_type == pb.DATA_TYPE_BOOL:
            flags[name] = int(props[name])
        elif data_type in (pb.DATA_TYPE_TEXT, pb.DATA_TYPE_TEXT_ARRAY):
            copy = normalized_copy(props[name])
            if copy is not None:
                normalized[name] = copy
    payload: dict[str, Any] = {"p": props}
    if normalized:
        payload[NORMALIZED] = normalized
    if stamps:
        payload["ts"] = stamps
    if flags:
        payload["b"] = flags
    return PreparedObject(index=index, id=object_id, payload=payload, vector=vector)
