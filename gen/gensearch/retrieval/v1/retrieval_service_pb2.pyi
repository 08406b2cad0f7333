import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_TEXT: _ClassVar[DataType]
    DATA_TYPE_TEXT_ARRAY: _ClassVar[DataType]
    DATA_TYPE_INT: _ClassVar[DataType]
    DATA_TYPE_NUMBER: _ClassVar[DataType]
    DATA_TYPE_BOOL: _ClassVar[DataType]
    DATA_TYPE_DATE: _ClassVar[DataType]

class VectorizerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTORIZER_KIND_UNSPECIFIED: _ClassVar[VectorizerKind]
    VECTORIZER_KIND_NONE: _ClassVar[VectorizerKind]
    VECTORIZER_KIND_LOCAL: _ClassVar[VectorizerKind]
    VECTORIZER_KIND_OPENAI_COMPATIBLE: _ClassVar[VectorizerKind]

class Distance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTANCE_UNSPECIFIED: _ClassVar[Distance]
    DISTANCE_COSINE: _ClassVar[Distance]
    DISTANCE_DOT: _ClassVar[Distance]
    DISTANCE_EUCLID: _ClassVar[Distance]

class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_UNSPECIFIED: _ClassVar[Operator]
    OPERATOR_EQUAL: _ClassVar[Operator]
    OPERATOR_NOT_EQUAL: _ClassVar[Operator]
    OPERATOR_LESS_THAN: _ClassVar[Operator]
    OPERATOR_LESS_THAN_EQUAL: _ClassVar[Operator]
    OPERATOR_GREATER_THAN: _ClassVar[Operator]
    OPERATOR_GREATER_THAN_EQUAL: _ClassVar[Operator]
    OPERATOR_CONTAINS_ANY: _ClassVar[Operator]
    OPERATOR_CONTAINS_ALL: _ClassVar[Operator]
    OPERATOR_TEXT_MATCH: _ClassVar[Operator]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_TEXT: DataType
DATA_TYPE_TEXT_ARRAY: DataType
DATA_TYPE_INT: DataType
DATA_TYPE_NUMBER: DataType
DATA_TYPE_BOOL: DataType
DATA_TYPE_DATE: DataType
VECTORIZER_KIND_UNSPECIFIED: VectorizerKind
VECTORIZER_KIND_NONE: VectorizerKind
VECTORIZER_KIND_LOCAL: VectorizerKind
VECTORIZER_KIND_OPENAI_COMPATIBLE: VectorizerKind
DISTANCE_UNSPECIFIED: Distance
DISTANCE_COSINE: Distance
DISTANCE_DOT: Distance
DISTANCE_EUCLID: Distance
OPERATOR_UNSPECIFIED: Operator
OPERATOR_EQUAL: Operator
OPERATOR_NOT_EQUAL: Operator
OPERATOR_LESS_THAN: Operator
OPERATOR_LESS_THAN_EQUAL: Operator
OPERATOR_GREATER_THAN: Operator
OPERATOR_GREATER_THAN_EQUAL: Operator
OPERATOR_CONTAINS_ANY: Operator
OPERATOR_CONTAINS_ALL: Operator
OPERATOR_TEXT_MATCH: Operator

class Property(_message.Message):
    __slots__ = ("name", "data_type", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    data_type: DataType
    description: str
    def __init__(self, name: _Optional[str] = ..., data_type: _Optional[_Union[DataType, str]] = ..., description: _Optional[str] = ...) -> None: ...

class Vectorizer(_message.Message):
    __slots__ = ("kind", "model", "base_url", "api_key_env", "dimensions", "source_properties", "distance")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ENV_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    kind: VectorizerKind
    model: str
    base_url: str
    api_key_env: str
    dimensions: int
    source_properties: _containers.RepeatedScalarFieldContainer[str]
    distance: Distance
    def __init__(self, kind: _Optional[_Union[VectorizerKind, str]] = ..., model: _Optional[str] = ..., base_url: _Optional[str] = ..., api_key_env: _Optional[str] = ..., dimensions: _Optional[int] = ..., source_properties: _Optional[_Iterable[str]] = ..., distance: _Optional[_Union[Distance, str]] = ...) -> None: ...

class GenerativeConfig(_message.Message):
    __slots__ = ("provider", "model", "temperature", "max_tokens", "system_prompt", "user_instructions", "context_fields", "fallback", "cache")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    USER_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    temperature: float
    max_tokens: int
    system_prompt: str
    user_instructions: str
    context_fields: _containers.RepeatedScalarFieldContainer[str]
    fallback: _containers.RepeatedCompositeFieldContainer[GenerativeModel]
    cache: CacheDefaults
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., temperature: _Optional[float] = ..., max_tokens: _Optional[int] = ..., system_prompt: _Optional[str] = ..., user_instructions: _Optional[str] = ..., context_fields: _Optional[_Iterable[str]] = ..., fallback: _Optional[_Iterable[_Union[GenerativeModel, _Mapping]]] = ..., cache: _Optional[_Union[CacheDefaults, _Mapping]] = ...) -> None: ...

class GenerativeModel(_message.Message):
    __slots__ = ("provider", "model")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class CacheDefaults(_message.Message):
    __slots__ = ("generation", "semantic", "ttl", "min_similarity")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    generation: bool
    semantic: bool
    ttl: _duration_pb2.Duration
    min_similarity: float
    def __init__(self, generation: _Optional[bool] = ..., semantic: _Optional[bool] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_similarity: _Optional[float] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "description", "properties", "vectorizer", "keyword_index", "generative", "create_time", "chunking", "rerank")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    VECTORIZER_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_INDEX_FIELD_NUMBER: _ClassVar[int]
    GENERATIVE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    properties: _containers.RepeatedCompositeFieldContainer[Property]
    vectorizer: Vectorizer
    keyword_index: bool
    generative: GenerativeConfig
    create_time: _timestamp_pb2.Timestamp
    chunking: Chunking
    rerank: Rerank
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., properties: _Optional[_Iterable[_Union[Property, _Mapping]]] = ..., vectorizer: _Optional[_Union[Vectorizer, _Mapping]] = ..., keyword_index: _Optional[bool] = ..., generative: _Optional[_Union[GenerativeConfig, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., chunking: _Optional[_Union[Chunking, _Mapping]] = ..., rerank: _Optional[_Union[Rerank, _Mapping]] = ...) -> None: ...

class Chunking(_message.Message):
    __slots__ = ("document_property", "order_property")
    DOCUMENT_PROPERTY_FIELD_NUMBER: _ClassVar[int]
    ORDER_PROPERTY_FIELD_NUMBER: _ClassVar[int]
    document_property: str
    order_property: str
    def __init__(self, document_property: _Optional[str] = ..., order_property: _Optional[str] = ...) -> None: ...

class Rerank(_message.Message):
    __slots__ = ("provider", "model", "candidates", "query", "properties", "mmr_lambda", "base_url")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    candidates: int
    query: str
    properties: _containers.RepeatedScalarFieldContainer[str]
    mmr_lambda: float
    base_url: str
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., candidates: _Optional[int] = ..., query: _Optional[str] = ..., properties: _Optional[_Iterable[str]] = ..., mmr_lambda: _Optional[float] = ..., base_url: _Optional[str] = ...) -> None: ...

class DataObject(_message.Message):
    __slots__ = ("id", "properties", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    properties: _struct_pb2.Struct
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class ObjectError(_message.Message):
    __slots__ = ("index", "id", "field", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    field: str
    message: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection", "object_count")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    object_count: int
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., object_count: _Optional[int] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ("create_time",)
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpsertObjectsRequest(_message.Message):
    __slots__ = ("collection", "objects")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    objects: _containers.RepeatedCompositeFieldContainer[DataObject]
    def __init__(self, collection: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[DataObject, _Mapping]]] = ...) -> None: ...

class UpsertObjectsResponse(_message.Message):
    __slots__ = ("ids", "errors")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedCompositeFieldContainer[ObjectError]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[_Union[ObjectError, _Mapping]]] = ...) -> None: ...

class ImportObjectsRequest(_message.Message):
    __slots__ = ("collection", "objects")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    objects: _containers.RepeatedCompositeFieldContainer[DataObject]
    def __init__(self, collection: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[DataObject, _Mapping]]] = ...) -> None: ...

class ImportObjectsResponse(_message.Message):
    __slots__ = ("received_count", "imported_count", "errors", "errors_truncated")
    RECEIVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    received_count: int
    imported_count: int
    errors: _containers.RepeatedCompositeFieldContainer[ObjectError]
    errors_truncated: bool
    def __init__(self, received_count: _Optional[int] = ..., imported_count: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[ObjectError, _Mapping]]] = ..., errors_truncated: _Optional[bool] = ...) -> None: ...

class GetObjectRequest(_message.Message):
    __slots__ = ("collection", "id", "include_vector")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTOR_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: str
    include_vector: bool
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[str] = ..., include_vector: _Optional[bool] = ...) -> None: ...

class GetObjectResponse(_message.Message):
    __slots__ = ("object",)
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    object: DataObject
    def __init__(self, object: _Optional[_Union[DataObject, _Mapping]] = ...) -> None: ...

class BatchGetObjectsRequest(_message.Message):
    __slots__ = ("collection", "ids", "include_vector")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTOR_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    include_vector: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., include_vector: _Optional[bool] = ...) -> None: ...

class BatchGetObjectsResponse(_message.Message):
    __slots__ = ("objects", "missing_ids")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[DataObject]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, objects: _Optional[_Iterable[_Union[DataObject, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteObjectsRequest(_message.Message):
    __slots__ = ("collection", "ids", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class DeleteObjectsResponse(_message.Message):
    __slots__ = ("deleted_count",)
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    def __init__(self, deleted_count: _Optional[int] = ...) -> None: ...

class CountObjectsRequest(_message.Message):
    __slots__ = ("collection", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class CountObjectsResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class NearText(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class NearVector(_message.Message):
    __slots__ = ("vector",)
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, vector: _Optional[_Iterable[float]] = ...) -> None: ...

class Keyword(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Hybrid(_message.Message):
    __slots__ = ("text", "alpha", "vector")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    text: str
    alpha: float
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, text: _Optional[str] = ..., alpha: _Optional[float] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("condition", "all_of", "any_of", "none_of")
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    ALL_OF_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_FIELD_NUMBER: _ClassVar[int]
    condition: Condition
    all_of: FilterGroup
    any_of: FilterGroup
    none_of: FilterGroup
    def __init__(self, condition: _Optional[_Union[Condition, _Mapping]] = ..., all_of: _Optional[_Union[FilterGroup, _Mapping]] = ..., any_of: _Optional[_Union[FilterGroup, _Mapping]] = ..., none_of: _Optional[_Union[FilterGroup, _Mapping]] = ...) -> None: ...

class FilterGroup(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("property", "operator", "value")
    PROPERTY_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    property: str
    operator: Operator
    value: _struct_pb2.Value
    def __init__(self, property: _Optional[str] = ..., operator: _Optional[_Union[Operator, str]] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "near_text", "near_vector", "keyword", "hybrid", "filter", "limit", "offset", "return_properties", "include_vector", "rerank", "use_collection_rerank")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    NEAR_TEXT_FIELD_NUMBER: _ClassVar[int]
    NEAR_VECTOR_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTOR_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    USE_COLLECTION_RERANK_FIELD_NUMBER: _ClassVar[int]
    collection: str
    near_text: NearText
    near_vector: NearVector
    keyword: Keyword
    hybrid: Hybrid
    filter: Filter
    limit: int
    offset: int
    return_properties: _containers.RepeatedScalarFieldContainer[str]
    include_vector: bool
    rerank: Rerank
    use_collection_rerank: bool
    def __init__(self, collection: _Optional[str] = ..., near_text: _Optional[_Union[NearText, _Mapping]] = ..., near_vector: _Optional[_Union[NearVector, _Mapping]] = ..., keyword: _Optional[_Union[Keyword, _Mapping]] = ..., hybrid: _Optional[_Union[Hybrid, _Mapping]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., return_properties: _Optional[_Iterable[str]] = ..., include_vector: _Optional[bool] = ..., rerank: _Optional[_Union[Rerank, _Mapping]] = ..., use_collection_rerank: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "properties", "score", "vector", "rerank_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    properties: _struct_pb2.Struct
    score: float
    vector: _containers.RepeatedScalarFieldContainer[float]
    rerank_score: float
    def __init__(self, id: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., score: _Optional[float] = ..., vector: _Optional[_Iterable[float]] = ..., rerank_score: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "embed_ms", "query_ms")
    HITS_FIELD_NUMBER: _ClassVar[int]
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    QUERY_MS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    embed_ms: float
    query_ms: float
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., embed_ms: _Optional[float] = ..., query_ms: _Optional[float] = ...) -> None: ...

class LookupCachedAnswerRequest(_message.Message):
    __slots__ = ("collection", "question", "min_similarity", "context_key")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_KEY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    question: str
    min_similarity: float
    context_key: str
    def __init__(self, collection: _Optional[str] = ..., question: _Optional[str] = ..., min_similarity: _Optional[float] = ..., context_key: _Optional[str] = ...) -> None: ...

class LookupCachedAnswerResponse(_message.Message):
    __slots__ = ("found", "answer", "question", "similarity", "stale")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    answer: bytes
    question: str
    similarity: float
    stale: int
    def __init__(self, found: _Optional[bool] = ..., answer: _Optional[bytes] = ..., question: _Optional[str] = ..., similarity: _Optional[float] = ..., stale: _Optional[int] = ...) -> None: ...

class CachedAnswerSource(_message.Message):
    __slots__ = ("id", "properties_sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    properties_sha256: bytes
    def __init__(self, id: _Optional[str] = ..., properties_sha256: _Optional[bytes] = ...) -> None: ...

class StoreCachedAnswerRequest(_message.Message):
    __slots__ = ("collection", "question", "answer", "ttl", "context_key", "sources", "collection_create_time")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    collection: str
    question: str
    answer: bytes
    ttl: _duration_pb2.Duration
    context_key: str
    sources: _containers.RepeatedCompositeFieldContainer[CachedAnswerSource]
    collection_create_time: _timestamp_pb2.Timestamp
    def __init__(self, collection: _Optional[str] = ..., question: _Optional[str] = ..., answer: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., context_key: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[CachedAnswerSource, _Mapping]]] = ..., collection_create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StoreCachedAnswerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChunkRange(_message.Message):
    __slots__ = ("document", "first", "last")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    document: _struct_pb2.Value
    first: int
    last: int
    def __init__(self, document: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class GetChunksRequest(_message.Message):
    __slots__ = ("collection", "ranges", "return_properties")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ranges: _containers.RepeatedCompositeFieldContainer[ChunkRange]
    return_properties: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ranges: _Optional[_Iterable[_Union[ChunkRange, _Mapping]]] = ..., return_properties: _Optional[_Iterable[str]] = ...) -> None: ...

class ChunkList(_message.Message):
    __slots__ = ("chunks", "truncated")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[Hit]
    truncated: bool
    def __init__(self, chunks: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class GetChunksResponse(_message.Message):
    __slots__ = ("ranges",)
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[ChunkList]
    def __init__(self, ranges: _Optional[_Iterable[_Union[ChunkList, _Mapping]]] = ...) -> None: ...
