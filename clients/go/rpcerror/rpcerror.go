// Package rpcerror reads the services' rich errors (google.rpc.Status details) into one
// type, and names their ErrorInfo reasons as constants: the Go side of the Python client's
// gensearch.client.errors (one class per reason there; here
// rpcerror.HasReason(err, rpcerror.QuotaExceeded)). Meanings: docs/python-client.md#errors.
package rpcerror

import (
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Reason is an ErrorInfo reason.
type Reason string

// Every ErrorInfo reason the services send: written by scripts/gen_clients.py (`make gen`)
// from the Python client's classes; tests/common/test_codegen.py fails when it is stale.
const (
	AmbiguousCredentials         Reason = "AMBIGUOUS_CREDENTIALS"
	BadName                      Reason = "BAD_NAME"
	BadPropertyType              Reason = "BAD_PROPERTY_TYPE"
	BadUpstreamResponse          Reason = "BAD_UPSTREAM_RESPONSE"
	BadUuid                      Reason = "BAD_UUID"
	BatchTooLarge                Reason = "BATCH_TOO_LARGE"
	BlankPrompt                  Reason = "BLANK_PROMPT"
	CollectionFull               Reason = "COLLECTION_FULL"
	ConcurrentUpdate             Reason = "CONCURRENT_UPDATE"
	ContextWindowExceeded        Reason = "CONTEXT_WINDOW_EXCEEDED"
	ControlCharacter             Reason = "CONTROL_CHARACTER"
	ConversationInteractionsFull Reason = "CONVERSATION_INTERACTIONS_FULL"
	ConversationNotFound         Reason = "CONVERSATION_NOT_FOUND"
	DeadlineTooShort             Reason = "DEADLINE_TOO_SHORT"
	DimensionMismatch            Reason = "DIMENSION_MISMATCH"
	DownstreamCancelled          Reason = "DOWNSTREAM_CANCELLED"
	DownstreamError              Reason = "DOWNSTREAM_ERROR"
	DownstreamResourceExhausted  Reason = "DOWNSTREAM_RESOURCE_EXHAUSTED"
	DownstreamTimeout            Reason = "DOWNSTREAM_TIMEOUT"
	DownstreamUnavailable        Reason = "DOWNSTREAM_UNAVAILABLE"
	DuplicateFallback            Reason = "DUPLICATE_FALLBACK"
	DuplicateId                  Reason = "DUPLICATE_ID"
	EmbeddingsRateLimited        Reason = "EMBEDDINGS_RATE_LIMITED"
	EmbeddingsUnavailable        Reason = "EMBEDDINGS_UNAVAILABLE"
	EmbeddingDimensionMismatch   Reason = "EMBEDDING_DIMENSION_MISMATCH"
	EmbeddingInputRejected       Reason = "EMBEDDING_INPUT_REJECTED"
	FieldNotUpdatable            Reason = "FIELD_NOT_UPDATABLE"
	FieldTooLarge                Reason = "FIELD_TOO_LARGE"
	FilterTooLarge               Reason = "FILTER_TOO_LARGE"
	GenerationInFlightWait       Reason = "GENERATION_IN_FLIGHT_WAIT"
	InteractionNotFound          Reason = "INTERACTION_NOT_FOUND"
	InteractionTooLarge          Reason = "INTERACTION_TOO_LARGE"
	InternalMethod               Reason = "INTERNAL_METHOD"
	InvalidApiKey                Reason = "INVALID_API_KEY"
	InvalidId                    Reason = "INVALID_ID"
	InvalidInternalToken         Reason = "INVALID_INTERNAL_TOKEN"
	InvalidLimit                 Reason = "INVALID_LIMIT"
	InvalidMaxTurns              Reason = "INVALID_MAX_TURNS"
	InvalidMode                  Reason = "INVALID_MODE"
	InvalidOutput                Reason = "INVALID_OUTPUT"
	InvalidPageSize              Reason = "INVALID_PAGE_SIZE"
	InvalidPageToken             Reason = "INVALID_PAGE_TOKEN"
	InvalidSchema                Reason = "INVALID_SCHEMA"
	InvalidStep                  Reason = "INVALID_STEP"
	InvalidSummaryRange          Reason = "INVALID_SUMMARY_RANGE"
	InvalidTemplate              Reason = "INVALID_TEMPLATE"
	InvalidTtl                   Reason = "INVALID_TTL"
	InvalidUpdateMask            Reason = "INVALID_UPDATE_MASK"
	KeyDestinationUnconfirmed    Reason = "KEY_DESTINATION_UNCONFIRMED"
	KeyNotAllowed                Reason = "KEY_NOT_ALLOWED"
	LocalModelMissing            Reason = "LOCAL_MODEL_MISSING"
	MalformedCallerKey           Reason = "MALFORMED_CALLER_KEY"
	MalformedCredentials         Reason = "MALFORMED_CREDENTIALS"
	MalformedRequest             Reason = "MALFORMED_REQUEST"
	MalformedUrl                 Reason = "MALFORMED_URL"
	MetadataTooLarge             Reason = "METADATA_TOO_LARGE"
	MissingCredentials           Reason = "MISSING_CREDENTIALS"
	MissingField                 Reason = "MISSING_FIELD"
	MissingForwardedRole         Reason = "MISSING_FORWARDED_ROLE"
	MissingForwardedTenant       Reason = "MISSING_FORWARDED_TENANT"
	MissingForwardedUser         Reason = "MISSING_FORWARDED_USER"
	MissingInternalToken         Reason = "MISSING_INTERNAL_TOKEN"
	MissingProperty              Reason = "MISSING_PROPERTY"
	MissingProviderApiKey        Reason = "MISSING_PROVIDER_API_KEY"
	NegativeCount                Reason = "NEGATIVE_COUNT"
	NestingTooDeep               Reason = "NESTING_TOO_DEEP"
	NoChunking                   Reason = "NO_CHUNKING"
	NoKeywordIndex               Reason = "NO_KEYWORD_INDEX"
	NoPlaceholder                Reason = "NO_PLACEHOLDER"
	NoResults                    Reason = "NO_RESULTS"
	NoVectorizer                 Reason = "NO_VECTORIZER"
	NumberNotFinite              Reason = "NUMBER_NOT_FINITE"
	ObjectNotFound               Reason = "OBJECT_NOT_FOUND"
	OutOfRange                   Reason = "OUT_OF_RANGE"
	OwnerConversationsFull       Reason = "OWNER_CONVERSATIONS_FULL"
	OwnerStorageFull             Reason = "OWNER_STORAGE_FULL"
	PromptTooLong                Reason = "PROMPT_TOO_LONG"
	ProviderLimitWait            Reason = "PROVIDER_LIMIT_WAIT"
	ProviderQueueTimeout         Reason = "PROVIDER_QUEUE_TIMEOUT"
	ProviderTokenLimitExceeded   Reason = "PROVIDER_TOKEN_LIMIT_EXCEEDED"
	QdrantError                  Reason = "QDRANT_ERROR"
	QdrantUnavailable            Reason = "QDRANT_UNAVAILABLE"
	QuotaExceeded                Reason = "QUOTA_EXCEEDED"
	RequestBytesInFlight         Reason = "REQUEST_BYTES_IN_FLIGHT"
	RequestIdInUse               Reason = "REQUEST_ID_IN_USE"
	RequestIdReused              Reason = "REQUEST_ID_REUSED"
	RequestIdWithoutConversation Reason = "REQUEST_ID_WITHOUT_CONVERSATION"
	RequestIdWithSummary         Reason = "REQUEST_ID_WITH_SUMMARY"
	RequestTooLarge              Reason = "REQUEST_TOO_LARGE"
	RerankRateLimited            Reason = "RERANK_RATE_LIMITED"
	RerankUnavailable            Reason = "RERANK_UNAVAILABLE"
	ResponseBytesInFlight        Reason = "RESPONSE_BYTES_IN_FLIGHT"
	ResponseTooLarge             Reason = "RESPONSE_TOO_LARGE"
	RoleRequired                 Reason = "ROLE_REQUIRED"
	SchemaTooLarge               Reason = "SCHEMA_TOO_LARGE"
	SearchDisabled               Reason = "SEARCH_DISABLED"
	SearchIndexUnavailable       Reason = "SEARCH_INDEX_UNAVAILABLE"
	SearchModeUnavailable        Reason = "SEARCH_MODE_UNAVAILABLE"
	ShuttingDown                 Reason = "SHUTTING_DOWN"
	StoreIsCluster               Reason = "STORE_IS_CLUSTER"
	StoreUnavailable             Reason = "STORE_UNAVAILABLE"
	StreamIdle                   Reason = "STREAM_IDLE"
	StreamStalled                Reason = "STREAM_STALLED"
	StreamTooLong                Reason = "STREAM_TOO_LONG"
	SummaryChanged               Reason = "SUMMARY_CHANGED"
	SummaryDisabled              Reason = "SUMMARY_DISABLED"
	TenantSchemasFull            Reason = "TENANT_SCHEMAS_FULL"
	TooLarge                     Reason = "TOO_LARGE"
	TooLong                      Reason = "TOO_LONG"
	TooManyCollections           Reason = "TOO_MANY_COLLECTIONS"
	TooManyConcurrentRpcs        Reason = "TOO_MANY_CONCURRENT_RPCS"
	TooManyConcurrentStreams     Reason = "TOO_MANY_CONCURRENT_STREAMS"
	TooManyTraces                Reason = "TOO_MANY_TRACES"
	UnknownModel                 Reason = "UNKNOWN_MODEL"
	UnknownProperty              Reason = "UNKNOWN_PROPERTY"
	UnknownProvider              Reason = "UNKNOWN_PROVIDER"
	UpstreamConnectionFailed     Reason = "UPSTREAM_CONNECTION_FAILED"
	UpstreamFirstByteTimeout     Reason = "UPSTREAM_FIRST_BYTE_TIMEOUT"
	UpstreamNotFound             Reason = "UPSTREAM_NOT_FOUND"
	UpstreamPermissionDenied     Reason = "UPSTREAM_PERMISSION_DENIED"
	UpstreamRateLimited          Reason = "UPSTREAM_RATE_LIMITED"
	UpstreamReadTimeout          Reason = "UPSTREAM_READ_TIMEOUT"
	UpstreamRedirect             Reason = "UPSTREAM_REDIRECT"
	UpstreamRejectedRequest      Reason = "UPSTREAM_REJECTED_REQUEST"
	UpstreamStreamError          Reason = "UPSTREAM_STREAM_ERROR"
	UpstreamTimeout              Reason = "UPSTREAM_TIMEOUT"
	UpstreamUnauthenticated      Reason = "UPSTREAM_UNAUTHENTICATED"
	UpstreamUnavailable          Reason = "UPSTREAM_UNAVAILABLE"
	UrlNotAllowed                Reason = "URL_NOT_ALLOWED"
	ValueNotSet                  Reason = "VALUE_NOT_SET"
	VectorTooLong                Reason = "VECTOR_TOO_LONG"
	WrongType                    Reason = "WRONG_TYPE"
	ZeroVector                   Reason = "ZERO_VECTOR"
)

// FieldViolation is one google.rpc.BadRequest field violation.
type FieldViolation struct {
	Field       string
	Description string
}

// Failure is a failed call's status read into its ErrorInfo, BadRequest and RetryInfo.
type Failure struct {
	Status *status.Status
	Code   codes.Code
	// The ErrorInfo reason, or the code's canonical name when the status had none
	// ("UNAVAILABLE", as the services' own generic reasons and the Python client's).
	Reason          Reason
	Domain          string
	Metadata        map[string]string
	FieldViolations []FieldViolation
	// From google.rpc.RetryInfo: when trying again can help; nil otherwise.
	RetryDelay *time.Duration
	// The status message (with what an import adds to it).
	Message string
}

func (e *Failure) Error() string { return fmt.Sprintf("%s [%s]: %s", e.Code, e.Reason, e.Message) }

// GRPCStatus lets status.FromError and status.Code read the error.
func (e *Failure) GRPCStatus() *status.Status { return e.Status }

// Field is the request field at fault ("" when none was named).
func (e *Failure) Field() string {
	if field := e.Metadata["field"]; field != "" {
		return field
	}
	if len(e.FieldViolations) > 0 {
		return e.FieldViolations[0].Field
	}
	return ""
}

// canonicalNames are the gRPC codes' canonical names, by code.
var canonicalNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

// CanonicalName is a code's canonical gRPC name, "UNAVAILABLE" for codes.Unavailable: the
// reason a status without ErrorInfo stands for. codes.Code's String() is Go's spelling
// ("Unavailable"): a transport failure read so where the gateway's said "UNAVAILABLE".
func CanonicalName(code codes.Code) string {
	if int(code) < len(canonicalNames) {
		return canonicalNames[code]
	}
	return code.String()
}

// FromStatus reads a status's details. A status grpc-go made for a connection it could not
// make gets a Message that says so, names the address when grpc-go's text does, says what to
// check and ends with grpc-go's text (unreachable.go); Dialled names the address always.
func FromStatus(st *status.Status) *Failure {
	return fromStatus(st, "")
}

func fromStatus(st *status.Status, address string) *Failure {
	message := unreachable(st, address)
	if message == "" {
		message = st.Message()
	}
	e := &Failure{Status: st, Code: st.Code(), Reason: Reason(CanonicalName(st.Code())), Metadata: map[string]string{}, Message: message}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Domain = Reason(d.Reason), d.Domain
			for k, v := range d.Metadata {
				e.Metadata[k] = v
			}
		case *errdetails.BadRequest:
			for _, v := range d.FieldViolations {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{Field: v.Field, Description: v.Description})
			}
		case *errdetails.RetryInfo:
			delay := d.RetryDelay.AsDuration()
			e.RetryDelay = &delay
		}
	}
	return e
}

// From reads err's gRPC status (a *Failure itself, or any error status.FromError reads); false
// when err carries none.
func From(err error) (*Failure, bool) {
	return Dialled("", err)
}

// Dialled is From for a call on a connection dialled to address (what you passed grpc.Dial):
// a gateway not reached is named by that address, also where grpc-go's text names none (a
// host that does not resolve, a server that closed the connection at once).
func Dialled(address string, err error) (*Failure, bool) {
	if e, ok := err.(*Failure); ok {
		return e, true
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK {
		return fromStatus(st, address), true
	}
	return nil, false
}

// HasReason tells whether err carries the ErrorInfo reason reason.
func HasReason(err error, reason Reason) bool {
	e, ok := From(err)
	return ok && e.Reason == reason
}
