import datetime

from gensearch.generation.v1 import generation_service_pb2 as _generation_service_pb2
from gensearch.retrieval.v1 import retrieval_service_pb2 as _retrieval_service_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_MODE_UNSPECIFIED: _ClassVar[CacheMode]
    CACHE_MODE_USE: _ClassVar[CacheMode]
    CACHE_MODE_REFRESH: _ClassVar[CacheMode]
    CACHE_MODE_BYPASS: _ClassVar[CacheMode]

class RewriteMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWRITE_METHOD_UNSPECIFIED: _ClassVar[RewriteMethod]
    REWRITE_METHOD_UNCHANGED: _ClassVar[RewriteMethod]
    REWRITE_METHOD_MODEL: _ClassVar[RewriteMethod]
    REWRITE_METHOD_FALLBACK: _ClassVar[RewriteMethod]

class RewriteRejection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWRITE_REJECTION_UNSPECIFIED: _ClassVar[RewriteRejection]
    REWRITE_REJECTION_EMPTY: _ClassVar[RewriteRejection]
    REWRITE_REJECTION_TOO_LONG: _ClassVar[RewriteRejection]
    REWRITE_REJECTION_COPIES_ANSWER: _ClassVar[RewriteRejection]
    REWRITE_REJECTION_NO_SHARED_WORDS: _ClassVar[RewriteRejection]
    REWRITE_REJECTION_MODEL_FAILED: _ClassVar[RewriteRejection]
CACHE_MODE_UNSPECIFIED: CacheMode
CACHE_MODE_USE: CacheMode
CACHE_MODE_REFRESH: CacheMode
CACHE_MODE_BYPASS: CacheMode
REWRITE_METHOD_UNSPECIFIED: RewriteMethod
REWRITE_METHOD_UNCHANGED: RewriteMethod
REWRITE_METHOD_MODEL: RewriteMethod
REWRITE_METHOD_FALLBACK: RewriteMethod
REWRITE_REJECTION_UNSPECIFIED: RewriteRejection
REWRITE_REJECTION_EMPTY: RewriteRejection
REWRITE_REJECTION_TOO_LONG: RewriteRejection
REWRITE_REJECTION_COPIES_ANSWER: RewriteRejection
REWRITE_REJECTION_NO_SHARED_WORDS: RewriteRejection
REWRITE_REJECTION_MODEL_FAILED: RewriteRejection

class GenerationCache(_message.Message):
    __slots__ = ("mode", "ttl")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    mode: CacheMode
    ttl: _duration_pb2.Duration
    def __init__(self, mode: _Optional[_Union[CacheMode, str]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SemanticCache(_message.Message):
    __slots__ = ("mode", "min_similarity", "ttl")
    MODE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    mode: CacheMode
    min_similarity: float
    ttl: _duration_pb2.Duration
    def __init__(self, mode: _Optional[_Union[CacheMode, str]] = ..., min_similarity: _Optional[float] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Generate(_message.Message):
    __slots__ = ("single_prompt", "grouped_task", "grouped_properties", "provider", "model", "temperature", "max_tokens", "max_concurrency", "timeout", "debug", "stream_tokens", "top_p", "stop", "frequency_penalty", "presence_penalty", "seed", "response_format", "fallback", "base_url", "cache")
    SINGLE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    GROUPED_TASK_FIELD_NUMBER: _ClassVar[int]
    GROUPED_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    STREAM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    single_prompt: str
    grouped_task: str
    grouped_properties: _containers.RepeatedScalarFieldContainer[str]
    provider: str
    model: str
    temperature: float
    max_tokens: int
    max_concurrency: int
    timeout: _duration_pb2.Duration
    debug: bool
    stream_tokens: bool
    top_p: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    frequency_penalty: float
    presence_penalty: float
    seed: int
    response_format: _generation_service_pb2.ResponseFormat
    fallback: _containers.RepeatedCompositeFieldContainer[_generation_service_pb2.ModelChoice]
    base_url: str
    cache: GenerationCache
    def __init__(self, single_prompt: _Optional[str] = ..., grouped_task: _Optional[str] = ..., grouped_properties: _Optional[_Iterable[str]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., temperature: _Optional[float] = ..., max_tokens: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., debug: _Optional[bool] = ..., stream_tokens: _Optional[bool] = ..., top_p: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., frequency_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., response_format: _Optional[_Union[_generation_service_pb2.ResponseFormat, _Mapping]] = ..., fallback: _Optional[_Iterable[_Union[_generation_service_pb2.ModelChoice, _Mapping]]] = ..., base_url: _Optional[str] = ..., cache: _Optional[_Union[GenerationCache, _Mapping]] = ...) -> None: ...

class GenerationError(_message.Message):
    __slots__ = ("code", "status", "message", "reason", "domain", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    status: str
    message: str
    reason: str
    domain: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., domain: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerationResult(_message.Message):
    __slots__ = ("result", "error", "usage", "model", "finish_reason", "prompt", "provider", "structured", "fallback_index", "cached", "attempts", "wait_time", "upstream_calls")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIME_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CALLS_FIELD_NUMBER: _ClassVar[int]
    result: str
    error: GenerationError
    usage: _generation_service_pb2.Usage
    model: str
    finish_reason: str
    prompt: str
    provider: str
    structured: _struct_pb2.Struct
    fallback_index: int
    cached: bool
    attempts: int
    wait_time: _duration_pb2.Duration
    upstream_calls: int
    def __init__(self, result: _Optional[str] = ..., error: _Optional[_Union[GenerationError, _Mapping]] = ..., usage: _Optional[_Union[_generation_service_pb2.Usage, _Mapping]] = ..., model: _Optional[str] = ..., finish_reason: _Optional[str] = ..., prompt: _Optional[str] = ..., provider: _Optional[str] = ..., structured: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., fallback_index: _Optional[int] = ..., cached: _Optional[bool] = ..., attempts: _Optional[int] = ..., wait_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., upstream_calls: _Optional[int] = ...) -> None: ...

class GenerativeHit(_message.Message):
    __slots__ = ("hit", "generation")
    HIT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    hit: _retrieval_service_pb2.Hit
    generation: GenerationResult
    def __init__(self, hit: _Optional[_Union[_retrieval_service_pb2.Hit, _Mapping]] = ..., generation: _Optional[_Union[GenerationResult, _Mapping]] = ...) -> None: ...

class GenerativeSearchRequest(_message.Message):
    __slots__ = ("collection", "near_text", "near_vector", "keyword", "hybrid", "filter", "limit", "offset", "return_properties", "generate", "rerank", "expand_context")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    NEAR_TEXT_FIELD_NUMBER: _ClassVar[int]
    NEAR_VECTOR_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    EXPAND_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    near_text: _retrieval_service_pb2.NearText
    near_vector: _retrieval_service_pb2.NearVector
    keyword: _retrieval_service_pb2.Keyword
    hybrid: _retrieval_service_pb2.Hybrid
    filter: _retrieval_service_pb2.Filter
    limit: int
    offset: int
    return_properties: _containers.RepeatedScalarFieldContainer[str]
    generate: Generate
    rerank: _retrieval_service_pb2.Rerank
    expand_context: ContextExpansion
    def __init__(self, collection: _Optional[str] = ..., near_text: _Optional[_Union[_retrieval_service_pb2.NearText, _Mapping]] = ..., near_vector: _Optional[_Union[_retrieval_service_pb2.NearVector, _Mapping]] = ..., keyword: _Optional[_Union[_retrieval_service_pb2.Keyword, _Mapping]] = ..., hybrid: _Optional[_Union[_retrieval_service_pb2.Hybrid, _Mapping]] = ..., filter: _Optional[_Union[_retrieval_service_pb2.Filter, _Mapping]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., return_properties: _Optional[_Iterable[str]] = ..., generate: _Optional[_Union[Generate, _Mapping]] = ..., rerank: _Optional[_Union[_retrieval_service_pb2.Rerank, _Mapping]] = ..., expand_context: _Optional[_Union[ContextExpansion, _Mapping]] = ...) -> None: ...

class GenerativeSearchResponse(_message.Message):
    __slots__ = ("hits", "grouped", "usage", "passages", "upstream_calls")
    HITS_FIELD_NUMBER: _ClassVar[int]
    GROUPED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CALLS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[GenerativeHit]
    grouped: GenerationResult
    usage: _generation_service_pb2.Usage
    passages: _containers.RepeatedCompositeFieldContainer[ContextPassage]
    upstream_calls: int
    def __init__(self, hits: _Optional[_Iterable[_Union[GenerativeHit, _Mapping]]] = ..., grouped: _Optional[_Union[GenerationResult, _Mapping]] = ..., usage: _Optional[_Union[_generation_service_pb2.Usage, _Mapping]] = ..., passages: _Optional[_Iterable[_Union[ContextPassage, _Mapping]]] = ..., upstream_calls: _Optional[int] = ...) -> None: ...

class StreamGenerativeSearchRequest(_message.Message):
    __slots__ = ("collection", "near_text", "near_vector", "keyword", "hybrid", "filter", "limit", "offset", "return_properties", "generate", "rerank", "expand_context")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    NEAR_TEXT_FIELD_NUMBER: _ClassVar[int]
    NEAR_VECTOR_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    EXPAND_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    near_text: _retrieval_service_pb2.NearText
    near_vector: _retrieval_service_pb2.NearVector
    keyword: _retrieval_service_pb2.Keyword
    hybrid: _retrieval_service_pb2.Hybrid
    filter: _retrieval_service_pb2.Filter
    limit: int
    offset: int
    return_properties: _containers.RepeatedScalarFieldContainer[str]
    generate: Generate
    rerank: _retrieval_service_pb2.Rerank
    expand_context: ContextExpansion
    def __init__(self, collection: _Optional[str] = ..., near_text: _Optional[_Union[_retrieval_service_pb2.NearText, _Mapping]] = ..., near_vector: _Optional[_Union[_retrieval_service_pb2.NearVector, _Mapping]] = ..., keyword: _Optional[_Union[_retrieval_service_pb2.Keyword, _Mapping]] = ..., hybrid: _Optional[_Union[_retrieval_service_pb2.Hybrid, _Mapping]] = ..., filter: _Optional[_Union[_retrieval_service_pb2.Filter, _Mapping]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., return_properties: _Optional[_Iterable[str]] = ..., generate: _Optional[_Union[Generate, _Mapping]] = ..., rerank: _Optional[_Union[_retrieval_service_pb2.Rerank, _Mapping]] = ..., expand_context: _Optional[_Union[ContextExpansion, _Mapping]] = ...) -> None: ...

class HitsEvent(_message.Message):
    __slots__ = ("hits", "passages")
    HITS_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_retrieval_service_pb2.Hit]
    passages: _containers.RepeatedCompositeFieldContainer[ContextPassage]
    def __init__(self, hits: _Optional[_Iterable[_Union[_retrieval_service_pb2.Hit, _Mapping]]] = ..., passages: _Optional[_Iterable[_Union[ContextPassage, _Mapping]]] = ...) -> None: ...

class HitResultEvent(_message.Message):
    __slots__ = ("hit_index", "generation")
    HIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    hit_index: int
    generation: GenerationResult
    def __init__(self, hit_index: _Optional[int] = ..., generation: _Optional[_Union[GenerationResult, _Mapping]] = ...) -> None: ...

class TokenEvent(_message.Message):
    __slots__ = ("hit_index", "grouped", "delta", "restart")
    HIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUPED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    hit_index: int
    grouped: bool
    delta: str
    restart: bool
    def __init__(self, hit_index: _Optional[int] = ..., grouped: _Optional[bool] = ..., delta: _Optional[str] = ..., restart: _Optional[bool] = ...) -> None: ...

class DoneEvent(_message.Message):
    __slots__ = ("usage", "upstream_calls")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CALLS_FIELD_NUMBER: _ClassVar[int]
    usage: _generation_service_pb2.Usage
    upstream_calls: int
    def __init__(self, usage: _Optional[_Union[_generation_service_pb2.Usage, _Mapping]] = ..., upstream_calls: _Optional[int] = ...) -> None: ...

class StreamGenerativeSearchResponse(_message.Message):
    __slots__ = ("hits", "hit_result", "token", "grouped", "done")
    HITS_FIELD_NUMBER: _ClassVar[int]
    HIT_RESULT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    GROUPED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    hits: HitsEvent
    hit_result: HitResultEvent
    token: TokenEvent
    grouped: GenerationResult
    done: DoneEvent
    def __init__(self, hits: _Optional[_Union[HitsEvent, _Mapping]] = ..., hit_result: _Optional[_Union[HitResultEvent, _Mapping]] = ..., token: _Optional[_Union[TokenEvent, _Mapping]] = ..., grouped: _Optional[_Union[GenerationResult, _Mapping]] = ..., done: _Optional[_Union[DoneEvent, _Mapping]] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("collection", "llm_question", "llm_model", "provider", "conversation_id", "new_conversation", "context_size", "interaction_size", "timeout", "system_prompt", "user_instructions", "context_field_list", "near_text", "near_vector", "keyword", "hybrid", "filter", "rewrite_query", "temperature", "max_tokens", "debug", "semantic_cache", "summary_disabled", "rerank", "expand_context", "fallback", "request_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    LLM_QUESTION_FIELD_NUMBER: _ClassVar[int]
    LLM_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    USER_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_LIST_FIELD_NUMBER: _ClassVar[int]
    NEAR_TEXT_FIELD_NUMBER: _ClassVar[int]
    NEAR_VECTOR_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    REWRITE_QUERY_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_CACHE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_DISABLED_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    EXPAND_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    llm_question: str
    llm_model: str
    provider: str
    conversation_id: str
    new_conversation: bool
    context_size: int
    interaction_size: int
    timeout: _duration_pb2.Duration
    system_prompt: str
    user_instructions: str
    context_field_list: _containers.RepeatedScalarFieldContainer[str]
    near_text: _retrieval_service_pb2.NearText
    near_vector: _retrieval_service_pb2.NearVector
    keyword: _retrieval_service_pb2.Keyword
    hybrid: _retrieval_service_pb2.Hybrid
    filter: _retrieval_service_pb2.Filter
    rewrite_query: bool
    temperature: float
    max_tokens: int
    debug: bool
    semantic_cache: SemanticCache
    summary_disabled: bool
    rerank: _retrieval_service_pb2.Rerank
    expand_context: ContextExpansion
    fallback: _containers.RepeatedCompositeFieldContainer[_generation_service_pb2.ModelChoice]
    request_id: str
    def __init__(self, collection: _Optional[str] = ..., llm_question: _Optional[str] = ..., llm_model: _Optional[str] = ..., provider: _Optional[str] = ..., conversation_id: _Optional[str] = ..., new_conversation: _Optional[bool] = ..., context_size: _Optional[int] = ..., interaction_size: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., system_prompt: _Optional[str] = ..., user_instructions: _Optional[str] = ..., context_field_list: _Optional[_Iterable[str]] = ..., near_text: _Optional[_Union[_retrieval_service_pb2.NearText, _Mapping]] = ..., near_vector: _Optional[_Union[_retrieval_service_pb2.NearVector, _Mapping]] = ..., keyword: _Optional[_Union[_retrieval_service_pb2.Keyword, _Mapping]] = ..., hybrid: _Optional[_Union[_retrieval_service_pb2.Hybrid, _Mapping]] = ..., filter: _Optional[_Union[_retrieval_service_pb2.Filter, _Mapping]] = ..., rewrite_query: _Optional[bool] = ..., temperature: _Optional[float] = ..., max_tokens: _Optional[int] = ..., debug: _Optional[bool] = ..., semantic_cache: _Optional[_Union[SemanticCache, _Mapping]] = ..., summary_disabled: _Optional[bool] = ..., rerank: _Optional[_Union[_retrieval_service_pb2.Rerank, _Mapping]] = ..., expand_context: _Optional[_Union[ContextExpansion, _Mapping]] = ..., fallback: _Optional[_Iterable[_Union[_generation_service_pb2.ModelChoice, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Citation(_message.Message):
    __slots__ = ("number", "id", "hit_ids", "sentence", "answer_start", "answer_end", "property", "source_start", "source_end", "source_text", "support", "supported", "unchecked")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    HIT_IDS_FIELD_NUMBER: _ClassVar[int]
    SENTENCE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_START_FIELD_NUMBER: _ClassVar[int]
    ANSWER_END_FIELD_NUMBER: _ClassVar[int]
    PROPERTY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_START_FIELD_NUMBER: _ClassVar[int]
    SOURCE_END_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TEXT_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    UNCHECKED_FIELD_NUMBER: _ClassVar[int]
    number: int
    id: str
    hit_ids: _containers.RepeatedScalarFieldContainer[str]
    sentence: int
    answer_start: int
    answer_end: int
    property: str
    source_start: int
    source_end: int
    source_text: str
    support: float
    supported: bool
    unchecked: bool
    def __init__(self, number: _Optional[int] = ..., id: _Optional[str] = ..., hit_ids: _Optional[_Iterable[str]] = ..., sentence: _Optional[int] = ..., answer_start: _Optional[int] = ..., answer_end: _Optional[int] = ..., property: _Optional[str] = ..., source_start: _Optional[int] = ..., source_end: _Optional[int] = ..., source_text: _Optional[str] = ..., support: _Optional[float] = ..., supported: _Optional[bool] = ..., unchecked: _Optional[bool] = ...) -> None: ...

class AnswerSentence(_message.Message):
    __slots__ = ("start", "end", "citations", "cited", "supported")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    CITED_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    cited: bool
    supported: bool
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., cited: _Optional[bool] = ..., supported: _Optional[bool] = ...) -> None: ...

class DroppedCitation(_message.Message):
    __slots__ = ("number", "sentence", "start", "end")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    SENTENCE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    number: int
    sentence: int
    start: int
    end: int
    def __init__(self, number: _Optional[int] = ..., sentence: _Optional[int] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class CitationsEvent(_message.Message):
    __slots__ = ("citations", "sentences", "citation_coverage", "dropped_citations")
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    SENTENCES_FIELD_NUMBER: _ClassVar[int]
    CITATION_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CITATIONS_FIELD_NUMBER: _ClassVar[int]
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    sentences: _containers.RepeatedCompositeFieldContainer[AnswerSentence]
    citation_coverage: float
    dropped_citations: _containers.RepeatedCompositeFieldContainer[DroppedCitation]
    def __init__(self, citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., sentences: _Optional[_Iterable[_Union[AnswerSentence, _Mapping]]] = ..., citation_coverage: _Optional[float] = ..., dropped_citations: _Optional[_Iterable[_Union[DroppedCitation, _Mapping]]] = ...) -> None: ...

class ContextExpansion(_message.Message):
    __slots__ = ("neighbors", "whole_document", "max_tokens")
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    WHOLE_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    neighbors: int
    whole_document: bool
    max_tokens: int
    def __init__(self, neighbors: _Optional[int] = ..., whole_document: _Optional[bool] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class ContextPassage(_message.Message):
    __slots__ = ("number", "hit_ids", "chunk_ids", "document", "first", "last")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    HIT_IDS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    number: int
    hit_ids: _containers.RepeatedScalarFieldContainer[str]
    chunk_ids: _containers.RepeatedScalarFieldContainer[str]
    document: _struct_pb2.Value
    first: int
    last: int
    def __init__(self, number: _Optional[int] = ..., hit_ids: _Optional[_Iterable[str]] = ..., chunk_ids: _Optional[_Iterable[str]] = ..., document: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class Trimmed(_message.Message):
    __slots__ = ("history_turns", "hits")
    HISTORY_TURNS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    history_turns: int
    hits: int
    def __init__(self, history_turns: _Optional[int] = ..., hits: _Optional[int] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("answer", "citations", "hits", "usage", "conversation_id", "interaction_id", "rewritten_query", "trimmed", "model", "prompt", "provider", "cached", "cached_question", "cached_similarity", "summary_used", "history_tokens", "history_budget_tokens", "attempts", "wait_time", "passages", "sentences", "citation_coverage", "dropped_citations", "rewrite_method", "rewrite_rejection", "fallback_index", "upstream_calls", "replayed")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    REWRITTEN_QUERY_FIELD_NUMBER: _ClassVar[int]
    TRIMMED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CACHED_QUESTION_FIELD_NUMBER: _ClassVar[int]
    CACHED_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_USED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIME_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    SENTENCES_FIELD_NUMBER: _ClassVar[int]
    CITATION_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CITATIONS_FIELD_NUMBER: _ClassVar[int]
    REWRITE_METHOD_FIELD_NUMBER: _ClassVar[int]
    REWRITE_REJECTION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CALLS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    answer: str
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    hits: _containers.RepeatedCompositeFieldContainer[_retrieval_service_pb2.Hit]
    usage: _generation_service_pb2.Usage
    conversation_id: str
    interaction_id: str
    rewritten_query: str
    trimmed: Trimmed
    model: str
    prompt: _containers.RepeatedCompositeFieldContainer[_generation_service_pb2.Message]
    provider: str
    cached: bool
    cached_question: str
    cached_similarity: float
    summary_used: bool
    history_tokens: int
    history_budget_tokens: int
    attempts: int
    wait_time: _duration_pb2.Duration
    passages: _containers.RepeatedCompositeFieldContainer[ContextPassage]
    sentences: _containers.RepeatedCompositeFieldContainer[AnswerSentence]
    citation_coverage: float
    dropped_citations: _containers.RepeatedCompositeFieldContainer[DroppedCitation]
    rewrite_method: RewriteMethod
    rewrite_rejection: RewriteRejection
    fallback_index: int
    upstream_calls: int
    replayed: bool
    def __init__(self, answer: _Optional[str] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., hits: _Optional[_Iterable[_Union[_retrieval_service_pb2.Hit, _Mapping]]] = ..., usage: _Optional[_Union[_generation_service_pb2.Usage, _Mapping]] = ..., conversation_id: _Optional[str] = ..., interaction_id: _Optional[str] = ..., rewritten_query: _Optional[str] = ..., trimmed: _Optional[_Union[Trimmed, _Mapping]] = ..., model: _Optional[str] = ..., prompt: _Optional[_Iterable[_Union[_generation_service_pb2.Message, _Mapping]]] = ..., provider: _Optional[str] = ..., cached: _Optional[bool] = ..., cached_question: _Optional[str] = ..., cached_similarity: _Optional[float] = ..., summary_used: _Optional[bool] = ..., history_tokens: _Optional[int] = ..., history_budget_tokens: _Optional[int] = ..., attempts: _Optional[int] = ..., wait_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., passages: _Optional[_Iterable[_Union[ContextPassage, _Mapping]]] = ..., sentences: _Optional[_Iterable[_Union[AnswerSentence, _Mapping]]] = ..., citation_coverage: _Optional[float] = ..., dropped_citations: _Optional[_Iterable[_Union[DroppedCitation, _Mapping]]] = ..., rewrite_method: _Optional[_Union[RewriteMethod, str]] = ..., rewrite_rejection: _Optional[_Union[RewriteRejection, str]] = ..., fallback_index: _Optional[int] = ..., upstream_calls: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class StreamAskRequest(_message.Message):
    __slots__ = ("collection", "llm_question", "llm_model", "provider", "conversation_id", "new_conversation", "context_size", "interaction_size", "timeout", "system_prompt", "user_instructions", "context_field_list", "near_text", "near_vector", "keyword", "hybrid", "filter", "rewrite_query", "temperature", "max_tokens", "debug", "semantic_cache", "summary_disabled", "rerank", "expand_context", "fallback", "request_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    LLM_QUESTION_FIELD_NUMBER: _ClassVar[int]
    LLM_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    USER_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_LIST_FIELD_NUMBER: _ClassVar[int]
    NEAR_TEXT_FIELD_NUMBER: _ClassVar[int]
    NEAR_VECTOR_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    REWRITE_QUERY_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_CACHE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_DISABLED_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    EXPAND_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    llm_question: str
    llm_model: str
    provider: str
    conversation_id: str
    new_conversation: bool
    context_size: int
    interaction_size: int
    timeout: _duration_pb2.Duration
    system_prompt: str
    user_instructions: str
    context_field_list: _containers.RepeatedScalarFieldContainer[str]
    near_text: _retrieval_service_pb2.NearText
    near_vector: _retrieval_service_pb2.NearVector
    keyword: _retrieval_service_pb2.Keyword
    hybrid: _retrieval_service_pb2.Hybrid
    filter: _retrieval_service_pb2.Filter
    rewrite_query: bool
    temperature: float
    max_tokens: int
    debug: bool
    semantic_cache: SemanticCache
    summary_disabled: bool
    rerank: _retrieval_service_pb2.Rerank
    expand_context: ContextExpansion
    fallback: _containers.RepeatedCompositeFieldContainer[_generation_service_pb2.ModelChoice]
    request_id: str
    def __init__(self, collection: _Optional[str] = ..., llm_question: _Optional[str] = ..., llm_model: _Optional[str] = ..., provider: _Optional[str] = ..., conversation_id: _Optional[str] = ..., new_conversation: _Optional[bool] = ..., context_size: _Optional[int] = ..., interaction_size: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., system_prompt: _Optional[str] = ..., user_instructions: _Optional[str] = ..., context_field_list: _Optional[_Iterable[str]] = ..., near_text: _Optional[_Union[_retrieval_service_pb2.NearText, _Mapping]] = ..., near_vector: _Optional[_Union[_retrieval_service_pb2.NearVector, _Mapping]] = ..., keyword: _Optional[_Union[_retrieval_service_pb2.Keyword, _Mapping]] = ..., hybrid: _Optional[_Union[_retrieval_service_pb2.Hybrid, _Mapping]] = ..., filter: _Optional[_Union[_retrieval_service_pb2.Filter, _Mapping]] = ..., rewrite_query: _Optional[bool] = ..., temperature: _Optional[float] = ..., max_tokens: _Optional[int] = ..., debug: _Optional[bool] = ..., semantic_cache: _Optional[_Union[SemanticCache, _Mapping]] = ..., summary_disabled: _Optional[bool] = ..., rerank: _Optional[_Union[_retrieval_service_pb2.Rerank, _Mapping]] = ..., expand_context: _Optional[_Union[ContextExpansion, _Mapping]] = ..., fallback: _Optional[_Iterable[_Union[_generation_service_pb2.ModelChoice, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StreamAskResponse(_message.Message):
    __slots__ = ("context", "delta", "answer", "citations")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    context: AskContextEvent
    delta: str
    answer: AskResponse
    citations: CitationsEvent
    def __init__(self, context: _Optional[_Union[AskContextEvent, _Mapping]] = ..., delta: _Optional[str] = ..., answer: _Optional[_Union[AskResponse, _Mapping]] = ..., citations: _Optional[_Union[CitationsEvent, _Mapping]] = ...) -> None: ...

class AskContextEvent(_message.Message):
    __slots__ = ("hits", "rewritten_query", "conversation_id", "rewrite_method", "rewrite_rejection")
    HITS_FIELD_NUMBER: _ClassVar[int]
    REWRITTEN_QUERY_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    REWRITE_METHOD_FIELD_NUMBER: _ClassVar[int]
    REWRITE_REJECTION_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_retrieval_service_pb2.Hit]
    rewritten_query: str
    conversation_id: str
    rewrite_method: RewriteMethod
    rewrite_rejection: RewriteRejection
    def __init__(self, hits: _Optional[_Iterable[_Union[_retrieval_service_pb2.Hit, _Mapping]]] = ..., rewritten_query: _Optional[str] = ..., conversation_id: _Optional[str] = ..., rewrite_method: _Optional[_Union[RewriteMethod, str]] = ..., rewrite_rejection: _Optional[_Union[RewriteRejection, str]] = ...) -> None: ...

class InlineObjects(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, objects: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class ObjectIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateOnObjectsRequest(_message.Message):
    __slots__ = ("collection", "ids", "inline", "return_properties", "generate")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: ObjectIds
    inline: InlineObjects
    return_properties: _containers.RepeatedScalarFieldContainer[str]
    generate: Generate
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Union[ObjectIds, _Mapping]] = ..., inline: _Optional[_Union[InlineObjects, _Mapping]] = ..., return_properties: _Optional[_Iterable[str]] = ..., generate: _Optional[_Union[Generate, _Mapping]] = ...) -> None: ...

class GenerateOnObjectsResponse(_message.Message):
    __slots__ = ("hits", "grouped", "usage", "upstream_calls")
    HITS_FIELD_NUMBER: _ClassVar[int]
    GROUPED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CALLS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[GenerativeHit]
    grouped: GenerationResult
    usage: _generation_service_pb2.Usage
    upstream_calls: int
    def __init__(self, hits: _Optional[_Iterable[_Union[GenerativeHit, _Mapping]]] = ..., grouped: _Optional[_Union[GenerationResult, _Mapping]] = ..., usage: _Optional[_Union[_generation_service_pb2.Usage, _Mapping]] = ..., upstream_calls: _Optional[int] = ...) -> None: ...

class StreamGenerateOnObjectsRequest(_message.Message):
    __slots__ = ("collection", "ids", "inline", "return_properties", "generate")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: ObjectIds
    inline: InlineObjects
    return_properties: _containers.RepeatedScalarFieldContainer[str]
    generate: Generate
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Union[ObjectIds, _Mapping]] = ..., inline: _Optional[_Union[InlineObjects, _Mapping]] = ..., return_properties: _Optional[_Iterable[str]] = ..., generate: _Optional[_Union[Generate, _Mapping]] = ...) -> None: ...

class StreamGenerateOnObjectsResponse(_message.Message):
    __slots__ = ("hits", "hit_result", "token", "grouped", "done")
    HITS_FIELD_NUMBER: _ClassVar[int]
    HIT_RESULT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    GROUPED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    hits: HitsEvent
    hit_result: HitResultEvent
    token: TokenEvent
    grouped: GenerationResult
    done: DoneEvent
    def __init__(self, hits: _Optional[_Union[HitsEvent, _Mapping]] = ..., hit_result: _Optional[_Union[HitResultEvent, _Mapping]] = ..., token: _Optional[_Union[TokenEvent, _Mapping]] = ..., grouped: _Optional[_Union[GenerationResult, _Mapping]] = ..., done: _Optional[_Union[DoneEvent, _Mapping]] = ...) -> None: ...
