import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Step(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_UNSPECIFIED: _ClassVar[Step]
    STEP_QUESTION_REWRITE: _ClassVar[Step]
    STEP_RETRIEVAL: _ClassVar[Step]
    STEP_GENERATION: _ClassVar[Step]
    STEP_OTHER: _ClassVar[Step]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
    SEARCH_MODE_SEMANTIC: _ClassVar[SearchMode]
    SEARCH_MODE_KEYWORD: _ClassVar[SearchMode]
STEP_UNSPECIFIED: Step
STEP_QUESTION_REWRITE: Step
STEP_RETRIEVAL: Step
STEP_GENERATION: Step
STEP_OTHER: Step
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_HYBRID: SearchMode
SEARCH_MODE_SEMANTIC: SearchMode
SEARCH_MODE_KEYWORD: SearchMode

class Conversation(_message.Message):
    __slots__ = ("conversation_id", "name", "user", "create_time", "update_time", "interaction_count", "expire_time", "ttl", "max_turns", "summary", "summary_disabled", "unfolded_deletions")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_DISABLED_FIELD_NUMBER: _ClassVar[int]
    UNFOLDED_DELETIONS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    name: str
    user: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    interaction_count: int
    expire_time: _timestamp_pb2.Timestamp
    ttl: _duration_pb2.Duration
    max_turns: int
    summary: ConversationSummary
    summary_disabled: bool
    unfolded_deletions: int
    def __init__(self, conversation_id: _Optional[str] = ..., name: _Optional[str] = ..., user: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., interaction_count: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_turns: _Optional[int] = ..., summary: _Optional[_Union[ConversationSummary, _Mapping]] = ..., summary_disabled: _Optional[bool] = ..., unfolded_deletions: _Optional[int] = ...) -> None: ...

class ConversationSummary(_message.Message):
    __slots__ = ("text", "through_interaction_id", "summarised_turns", "prompt_tokens", "completion_tokens", "folds", "update_time", "evicted_unsummarised_turns")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    THROUGH_INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARISED_TURNS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EVICTED_UNSUMMARISED_TURNS_FIELD_NUMBER: _ClassVar[int]
    text: str
    through_interaction_id: str
    summarised_turns: int
    prompt_tokens: int
    completion_tokens: int
    folds: int
    update_time: _timestamp_pb2.Timestamp
    evicted_unsummarised_turns: int
    def __init__(self, text: _Optional[str] = ..., through_interaction_id: _Optional[str] = ..., summarised_turns: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., folds: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., evicted_unsummarised_turns: _Optional[int] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("interaction_id", "conversation_id", "input", "prompt_template", "response", "origin", "additional_info", "create_time", "update_time", "trace_count")
    INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_INFO_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    interaction_id: str
    conversation_id: str
    input: str
    prompt_template: str
    response: str
    origin: str
    additional_info: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    trace_count: int
    def __init__(self, interaction_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., input: _Optional[str] = ..., prompt_template: _Optional[str] = ..., response: _Optional[str] = ..., origin: _Optional[str] = ..., additional_info: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_count: _Optional[int] = ...) -> None: ...

class Trace(_message.Message):
    __slots__ = ("trace_number", "step", "input", "output", "start_time", "duration", "truncated")
    TRACE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    trace_number: int
    step: Step
    input: _struct_pb2.Struct
    output: _struct_pb2.Struct
    start_time: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    truncated: bool
    def __init__(self, trace_number: _Optional[int] = ..., step: _Optional[_Union[Step, str]] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class CreateConversationRequest(_message.Message):
    __slots__ = ("name", "ttl", "max_turns", "summary_disabled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_DISABLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    ttl: _duration_pb2.Duration
    max_turns: int
    summary_disabled: bool
    def __init__(self, name: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_turns: _Optional[int] = ..., summary_disabled: _Optional[bool] = ...) -> None: ...

class CreateConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class GetConversationRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class GetConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class ListConversationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConversationsResponse(_message.Message):
    __slots__ = ("conversations", "next_page_token")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[Conversation]
    next_page_token: str
    def __init__(self, conversations: _Optional[_Iterable[_Union[Conversation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateConversationRequest(_message.Message):
    __slots__ = ("conversation_id", "name", "update_mask", "ttl", "max_turns", "summary_disabled")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_DISABLED_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    name: str
    update_mask: _field_mask_pb2.FieldMask
    ttl: _duration_pb2.Duration
    max_turns: int
    summary_disabled: bool
    def __init__(self, conversation_id: _Optional[str] = ..., name: _Optional[str] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_turns: _Optional[int] = ..., summary_disabled: _Optional[bool] = ...) -> None: ...

class UpdateConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class DeleteConversationRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class DeleteConversationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateInteractionRequest(_message.Message):
    __slots__ = ("conversation_id", "input", "prompt_template", "response", "origin", "additional_info", "request_id", "traces", "new_conversation", "request_fingerprint")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_INFO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACES_FIELD_NUMBER: _ClassVar[int]
    NEW_CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    input: str
    prompt_template: str
    response: str
    origin: str
    additional_info: _struct_pb2.Struct
    request_id: str
    traces: _containers.RepeatedCompositeFieldContainer[Trace]
    new_conversation: CreateConversationRequest
    request_fingerprint: str
    def __init__(self, conversation_id: _Optional[str] = ..., input: _Optional[str] = ..., prompt_template: _Optional[str] = ..., response: _Optional[str] = ..., origin: _Optional[str] = ..., additional_info: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ..., traces: _Optional[_Iterable[_Union[Trace, _Mapping]]] = ..., new_conversation: _Optional[_Union[CreateConversationRequest, _Mapping]] = ..., request_fingerprint: _Optional[str] = ...) -> None: ...

class CreateInteractionResponse(_message.Message):
    __slots__ = ("interaction",)
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    interaction: Interaction
    def __init__(self, interaction: _Optional[_Union[Interaction, _Mapping]] = ...) -> None: ...

class GetInteractionRequest(_message.Message):
    __slots__ = ("interaction_id",)
    INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    interaction_id: str
    def __init__(self, interaction_id: _Optional[str] = ...) -> None: ...

class GetInteractionResponse(_message.Message):
    __slots__ = ("interaction",)
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    interaction: Interaction
    def __init__(self, interaction: _Optional[_Union[Interaction, _Mapping]] = ...) -> None: ...

class ListInteractionsRequest(_message.Message):
    __slots__ = ("conversation_id", "page_size", "page_token", "oldest_first", "after_interaction_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OLDEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    AFTER_INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    page_size: int
    page_token: str
    oldest_first: bool
    after_interaction_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., oldest_first: _Optional[bool] = ..., after_interaction_id: _Optional[str] = ...) -> None: ...

class ListInteractionsResponse(_message.Message):
    __slots__ = ("interactions", "next_page_token", "oldest_first")
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OLDEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    next_page_token: str
    oldest_first: bool
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., oldest_first: _Optional[bool] = ...) -> None: ...

class UpdateInteractionRequest(_message.Message):
    __slots__ = ("interaction", "update_mask")
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    interaction: Interaction
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, interaction: _Optional[_Union[Interaction, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateInteractionResponse(_message.Message):
    __slots__ = ("interaction",)
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    interaction: Interaction
    def __init__(self, interaction: _Optional[_Union[Interaction, _Mapping]] = ...) -> None: ...

class DeleteInteractionRequest(_message.Message):
    __slots__ = ("interaction_id",)
    INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    interaction_id: str
    def __init__(self, interaction_id: _Optional[str] = ...) -> None: ...

class DeleteInteractionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListInteractionTracesRequest(_message.Message):
    __slots__ = ("interaction_id", "page_size", "page_token")
    INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    interaction_id: str
    page_size: int
    page_token: str
    def __init__(self, interaction_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInteractionTracesResponse(_message.Message):
    __slots__ = ("traces", "next_page_token")
    TRACES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    traces: _containers.RepeatedCompositeFieldContainer[Trace]
    next_page_token: str
    def __init__(self, traces: _Optional[_Iterable[_Union[Trace, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SearchInteractionsRequest(_message.Message):
    __slots__ = ("query", "conversation_id", "mode", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    conversation_id: str
    mode: SearchMode
    limit: int
    def __init__(self, query: _Optional[str] = ..., conversation_id: _Optional[str] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class InteractionHit(_message.Message):
    __slots__ = ("interaction", "score")
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    interaction: Interaction
    score: float
    def __init__(self, interaction: _Optional[_Union[Interaction, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class SearchInteractionsResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[InteractionHit]
    def __init__(self, hits: _Optional[_Iterable[_Union[InteractionHit, _Mapping]]] = ...) -> None: ...

class UpdateConversationSummaryRequest(_message.Message):
    __slots__ = ("conversation_id", "text", "expected_through_interaction_id", "through_interaction_id", "summarised_turns", "prompt_tokens", "completion_tokens", "expected_unfolded_deletions")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_THROUGH_INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    THROUGH_INTERACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARISED_TURNS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_UNFOLDED_DELETIONS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    text: str
    expected_through_interaction_id: str
    through_interaction_id: str
    summarised_turns: int
    prompt_tokens: int
    completion_tokens: int
    expected_unfolded_deletions: int
    def __init__(self, conversation_id: _Optional[str] = ..., text: _Optional[str] = ..., expected_through_interaction_id: _Optional[str] = ..., through_interaction_id: _Optional[str] = ..., summarised_turns: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., expected_unfolded_deletions: _Optional[int] = ...) -> None: ...

class UpdateConversationSummaryResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class CheckStorageRequest(_message.Message):
    __slots__ = ("conversation_id", "bytes", "summary", "request_id", "claim_token", "claim_seconds", "release_claim", "request_fingerprint")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIM_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CLAIM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_CLAIM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    bytes: int
    summary: bool
    request_id: str
    claim_token: str
    claim_seconds: int
    release_claim: bool
    request_fingerprint: str
    def __init__(self, conversation_id: _Optional[str] = ..., bytes: _Optional[int] = ..., summary: _Optional[bool] = ..., request_id: _Optional[str] = ..., claim_token: _Optional[str] = ..., claim_seconds: _Optional[int] = ..., release_claim: _Optional[bool] = ..., request_fingerprint: _Optional[str] = ...) -> None: ...

class CheckStorageResponse(_message.Message):
    __slots__ = ("used_bytes", "limit_bytes", "conversation_count", "max_conversations", "limits", "interaction", "request_id_in_use")
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_IN_USE_FIELD_NUMBER: _ClassVar[int]
    used_bytes: int
    limit_bytes: int
    conversation_count: int
    max_conversations: int
    limits: InteractionLimits
    interaction: Interaction
    request_id_in_use: bool
    def __init__(self, used_bytes: _Optional[int] = ..., limit_bytes: _Optional[int] = ..., conversation_count: _Optional[int] = ..., max_conversations: _Optional[int] = ..., limits: _Optional[_Union[InteractionLimits, _Mapping]] = ..., interaction: _Optional[_Union[Interaction, _Mapping]] = ..., request_id_in_use: _Optional[bool] = ...) -> None: ...

class InteractionLimits(_message.Message):
    __slots__ = ("max_text_bytes", "max_prompt_template_bytes", "max_origin_bytes", "max_additional_info_bytes", "max_traces", "max_trace_bytes", "max_interaction_bytes", "max_name_bytes", "max_summary_bytes", "max_request_id_bytes", "max_value_depth")
    MAX_TEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TEMPLATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ORIGIN_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ADDITIONAL_INFO_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TRACES_FIELD_NUMBER: _ClassVar[int]
    MAX_TRACE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_INTERACTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_NAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SUMMARY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_ID_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    max_text_bytes: int
    max_prompt_template_bytes: int
    max_origin_bytes: int
    max_additional_info_bytes: int
    max_traces: int
    max_trace_bytes: int
    max_interaction_bytes: int
    max_name_bytes: int
    max_summary_bytes: int
    max_request_id_bytes: int
    max_value_depth: int
    def __init__(self, max_text_bytes: _Optional[int] = ..., max_prompt_template_bytes: _Optional[int] = ..., max_origin_bytes: _Optional[int] = ..., max_additional_info_bytes: _Optional[int] = ..., max_traces: _Optional[int] = ..., max_trace_bytes: _Optional[int] = ..., max_interaction_bytes: _Optional[int] = ..., max_name_bytes: _Optional[int] = ..., max_summary_bytes: _Optional[int] = ..., max_request_id_bytes: _Optional[int] = ..., max_value_depth: _Optional[int] = ...) -> None: ...
