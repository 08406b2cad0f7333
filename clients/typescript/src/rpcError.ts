// The services' rich errors as one class, and their ErrorInfo reasons as constants: the
// TypeScript side of the Python client's gensearch.client.errors (one class per reason there;
// here `hasReason(err, Reason.QUOTA_EXCEEDED)`). Meanings: docs/python-client.md#errors.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** Every ErrorInfo reason the services send: written by scripts/gen_clients.py (`make gen`)
 * from the Python client's classes; tests/common/test_codegen.py fails when it is stale. */
export const Reason = {
  AMBIGUOUS_CREDENTIALS: "AMBIGUOUS_CREDENTIALS",
  BAD_NAME: "BAD_NAME",
  BAD_PROPERTY_TYPE: "BAD_PROPERTY_TYPE",
  BAD_UPSTREAM_RESPONSE: "BAD_UPSTREAM_RESPONSE",
  BAD_UUID: "BAD_UUID",
  BATCH_TOO_LARGE: "BATCH_TOO_LARGE",
  BLANK_PROMPT: "BLANK_PROMPT",
  COLLECTION_FULL: "COLLECTION_FULL",
  CONCURRENT_UPDATE: "CONCURRENT_UPDATE",
  CONTEXT_WINDOW_EXCEEDED: "CONTEXT_WINDOW_EXCEEDED",
  CONTROL_CHARACTER: "CONTROL_CHARACTER",
  CONVERSATION_INTERACTIONS_FULL: "CONVERSATION_INTERACTIONS_FULL",
  CONVERSATION_NOT_FOUND: "CONVERSATION_NOT_FOUND",
  DEADLINE_TOO_SHORT: "DEADLINE_TOO_SHORT",
  DIMENSION_MISMATCH: "DIMENSION_MISMATCH",
  DOWNSTREAM_CANCELLED: "DOWNSTREAM_CANCELLED",
  DOWNSTREAM_ERROR: "DOWNSTREAM_ERROR",
  DOWNSTREAM_RESOURCE_EXHAUSTED: "DOWNSTREAM_RESOURCE_EXHAUSTED",
  DOWNSTREAM_TIMEOUT: "DOWNSTREAM_TIMEOUT",
  DOWNSTREAM_UNAVAILABLE: "DOWNSTREAM_UNAVAILABLE",
  DUPLICATE_FALLBACK: "DUPLICATE_FALLBACK",
  DUPLICATE_ID: "DUPLICATE_ID",
  EMBEDDINGS_RATE_LIMITED: "EMBEDDINGS_RATE_LIMITED",
  EMBEDDINGS_UNAVAILABLE: "EMBEDDINGS_UNAVAILABLE",
  EMBEDDING_DIMENSION_MISMATCH: "EMBEDDING_DIMENSION_MISMATCH",
  EMBEDDING_INPUT_REJECTED: "EMBEDDING_INPUT_REJECTED",
  FIELD_NOT_UPDATABLE: "FIELD_NOT_UPDATABLE",
  FIELD_TOO_LARGE: "FIELD_TOO_LARGE",
  FILTER_TOO_LARGE: "FILTER_TOO_LARGE",
  GENERATION_IN_FLIGHT_WAIT: "GENERATION_IN_FLIGHT_WAIT",
  INTERACTION_NOT_FOUND: "INTERACTION_NOT_FOUND",
  INTERACTION_TOO_LARGE: "INTERACTION_TOO_LARGE",
  INTERNAL_METHOD: "INTERNAL_METHOD",
  INVALID_API_KEY: "INVALID_API_KEY",
  INVALID_ID: "INVALID_ID",
  INVALID_INTERNAL_TOKEN: "INVALID_INTERNAL_TOKEN",
  INVALID_LIMIT: "INVALID_LIMIT",
  INVALID_MAX_TURNS: "INVALID_MAX_TURNS",
  INVALID_MODE: "INVALID_MODE",
  INVALID_OUTPUT: "INVALID_OUTPUT",
  INVALID_PAGE_SIZE: "INVALID_PAGE_SIZE",
  INVALID_PAGE_TOKEN: "INVALID_PAGE_TOKEN",
  INVALID_SCHEMA: "INVALID_SCHEMA",
  INVALID_STEP: "INVALID_STEP",
  INVALID_SUMMARY_RANGE: "INVALID_SUMMARY_RANGE",
  INVALID_TEMPLATE: "INVALID_TEMPLATE",
  INVALID_TTL: "INVALID_TTL",
  INVALID_UPDATE_MASK: "INVALID_UPDATE_MASK",
  KEY_DESTINATION_UNCONFIRMED: "KEY_DESTINATION_UNCONFIRMED",
  KEY_NOT_ALLOWED: "KEY_NOT_ALLOWED",
  LOCAL_MODEL_MISSING: "LOCAL_MODEL_MISSING",
  MALFORMED_CALLER_KEY: "MALFORMED_CALLER_KEY",
  MALFORMED_CREDENTIALS: "MALFORMED_CREDENTIALS",
  MALFORMED_REQUEST: "MALFORMED_REQUEST",
  MALFORMED_URL: "MALFORMED_URL",
  METADATA_TOO_LARGE: "METADATA_TOO_LARGE",
  MISSING_CREDENTIALS: "MISSING_CREDENTIALS",
  MISSING_FIELD: "MISSING_FIELD",
  MISSING_FORWARDED_ROLE: "MISSING_FORWARDED_ROLE",
  MISSING_FORWARDED_TENANT: "MISSING_FORWARDED_TENANT",
  MISSING_FORWARDED_USER: "MISSING_FORWARDED_USER",
  MISSING_INTERNAL_TOKEN: "MISSING_INTERNAL_TOKEN",
  MISSING_PROPERTY: "MISSING_PROPERTY",
  MISSING_PROVIDER_API_KEY: "MISSING_PROVIDER_API_KEY",
  NEGATIVE_COUNT: "NEGATIVE_COUNT",
  NESTING_TOO_DEEP: "NESTING_TOO_DEEP",
  NO_CHUNKING: "NO_CHUNKING",
  NO_KEYWORD_INDEX: "NO_KEYWORD_INDEX",
  NO_PLACEHOLDER: "NO_PLACEHOLDER",
  NO_RESULTS: "NO_RESULTS",
  NO_VECTORIZER: "NO_VECTORIZER",
  NUMBER_NOT_FINITE: "NUMBER_NOT_FINITE",
  OBJECT_NOT_FOUND: "OBJECT_NOT_FOUND",
  OUT_OF_RANGE: "OUT_OF_RANGE",
  OWNER_CONVERSATIONS_FULL: "OWNER_CONVERSATIONS_FULL",
  OWNER_STORAGE_FULL: "OWNER_STORAGE_FULL",
  PROMPT_TOO_LONG: "PROMPT_TOO_LONG",
  PROVIDER_LIMIT_WAIT: "PROVIDER_LIMIT_WAIT",
  PROVIDER_QUEUE_TIMEOUT: "PROVIDER_QUEUE_TIMEOUT",
  PROVIDER_TOKEN_LIMIT_EXCEEDED: "PROVIDER_TOKEN_LIMIT_EXCEEDED",
  QDRANT_ERROR: "QDRANT_ERROR",
  QDRANT_UNAVAILABLE: "QDRANT_UNAVAILABLE",
  QUOTA_EXCEEDED: "QUOTA_EXCEEDED",
  REQUEST_BYTES_IN_FLIGHT: "REQUEST_BYTES_IN_FLIGHT",
  REQUEST_ID_IN_USE: "REQUEST_ID_IN_USE",
  REQUEST_ID_REUSED: "REQUEST_ID_REUSED",
  REQUEST_ID_WITHOUT_CONVERSATION: "REQUEST_ID_WITHOUT_CONVERSATION",
  REQUEST_ID_WITH_SUMMARY: "REQUEST_ID_WITH_SUMMARY",
  REQUEST_TOO_LARGE: "REQUEST_TOO_LARGE",
  RERANK_RATE_LIMITED: "RERANK_RATE_LIMITED",
  RERANK_UNAVAILABLE: "RERANK_UNAVAILABLE",
  RESPONSE_BYTES_IN_FLIGHT: "RESPONSE_BYTES_IN_FLIGHT",
  RESPONSE_TOO_LARGE: "RESPONSE_TOO_LARGE",
  ROLE_REQUIRED: "ROLE_REQUIRED",
  SCHEMA_TOO_LARGE: "SCHEMA_TOO_LARGE",
  SEARCH_DISABLED: "SEARCH_DISABLED",
  SEARCH_INDEX_UNAVAILABLE: "SEARCH_INDEX_UNAVAILABLE",
  SEARCH_MODE_UNAVAILABLE: "SEARCH_MODE_UNAVAILABLE",
  SHUTTING_DOWN: "SHUTTING_DOWN",
  STORE_IS_CLUSTER: "STORE_IS_CLUSTER",
  STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
  STREAM_IDLE: "STREAM_IDLE",
  STREAM_STALLED: "STREAM_STALLED",
  STREAM_TOO_LONG: "STREAM_TOO_LONG",
  SUMMARY_CHANGED: "SUMMARY_CHANGED",
  SUMMARY_DISABLED: "SUMMARY_DISABLED",
  TENANT_SCHEMAS_FULL: "TENANT_SCHEMAS_FULL",
  TOO_LARGE: "TOO_LARGE",
  TOO_LONG: "TOO_LONG",
  TOO_MANY_COLLECTIONS: "TOO_MANY_COLLECTIONS",
  TOO_MANY_CONCURRENT_RPCS: "TOO_MANY_CONCURRENT_RPCS",
  TOO_MANY_CONCURRENT_STREAMS: "TOO_MANY_CONCURRENT_STREAMS",
  TOO_MANY_TRACES: "TOO_MANY_TRACES",
  UNKNOWN_MODEL: "UNKNOWN_MODEL",
  UNKNOWN_PROPERTY: "UNKNOWN_PROPERTY",
  UNKNOWN_PROVIDER: "UNKNOWN_PROVIDER",
  UPSTREAM_CONNECTION_FAILED: "UPSTREAM_CONNECTION_FAILED",
  UPSTREAM_FIRST_BYTE_TIMEOUT: "UPSTREAM_FIRST_BYTE_TIMEOUT",
  UPSTREAM_NOT_FOUND: "UPSTREAM_NOT_FOUND",
  UPSTREAM_PERMISSION_DENIED: "UPSTREAM_PERMISSION_DENIED",
  UPSTREAM_RATE_LIMITED: "UPSTREAM_RATE_LIMITED",
  UPSTREAM_READ_TIMEOUT: "UPSTREAM_READ_TIMEOUT",
  UPSTREAM_REDIRECT: "UPSTREAM_REDIRECT",
  UPSTREAM_REJECTED_REQUEST: "UPSTREAM_REJECTED_REQUEST",
  UPSTREAM_STREAM_ERROR: "UPSTREAM_STREAM_ERROR",
  UPSTREAM_TIMEOUT: "UPSTREAM_TIMEOUT",
  UPSTREAM_UNAUTHENTICATED: "UPSTREAM_UNAUTHENTICATED",
  UPSTREAM_UNAVAILABLE: "UPSTREAM_UNAVAILABLE",
  URL_NOT_ALLOWED: "URL_NOT_ALLOWED",
  VALUE_NOT_SET: "VALUE_NOT_SET",
  VECTOR_TOO_LONG: "VECTOR_TOO_LONG",
  WRONG_TYPE: "WRONG_TYPE",
  ZERO_VECTOR: "ZERO_VECTOR",
} as const;
export type Reason = (typeof Reason)[keyof typeof Reason];

export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call: the ConnectError (`cause`) read into its status code, ErrorInfo (reason,
 * domain, metadata), BadRequest field violations and RetryInfo. */
export class GensearchError extends Error {
  readonly code: Code;
  /** The ErrorInfo reason (a `Reason`), or the code's canonical name when the status had
   * none (`UNAVAILABLE`, as the services' own generic reasons and the Python client's). */
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Record<string, string>;
  readonly fieldViolations: FieldViolation[];
  /** From google.rpc.RetryInfo: when trying again can help (ms); undefined otherwise. */
  readonly retryDelayMs: number | undefined;

  constructor(readonly cause: ConnectError) {
    super(unreachableMessage(cause) ?? cause.rawMessage);
    this.name = "GensearchError";
    this.code = cause.code;
    const [info] = cause.findDetails(ErrorInfoSchema);
    this.reason = info?.reason || canonicalName(cause.code);
    this.domain = info?.domain ?? "";
    this.metadata = { ...(info?.metadata ?? {}) };
    this.fieldViolations = cause.findDetails(BadRequestSchema).flatMap((bad) =>
      bad.fieldViolations.map(({ field, description }) => ({ field, description })));
    const [retry] = cause.findDetails(RetryInfoSchema);
    this.retryDelayMs = retry?.retryDelay
      ? Number(retry.retryDelay.seconds) * 1000 + retry.retryDelay.nanos / 1e6
      : undefined;
  }

  /** Any thrown value as a GensearchError (a ConnectError's details read once). */
  static from(err: unknown): GensearchError {
    return err instanceof GensearchError ? err : new GensearchError(ConnectError.from(err));
  }

  /** The request field at fault ("" when none was named). */
  get field(): string {
    return this.metadata["field"] || this.fieldViolations[0]?.field || "";
  }
}

// Node's errors for a connection never made, and what to check for each. Connect-node's
// text for them is Node's alone ("connect ECONNREFUSED 127.0.0.1:50050"): no word of the
// stack or the address's setting, which a new user calling before `make run` needs.
const STACK_UP = "nothing listens there (connection refused): is the stack up (`make run`), " +
  "and are the host and port the gateway's (GENSEARCH_ADDRESS; default port 50050)?";
const NO_HOST = "its host name does not resolve: check GENSEARCH_ADDRESS";
const NO_ROUTE = "no connection to that host: are the host and port the gateway's (GENSEARCH_ADDRESS)?";
const NOT_CONNECTED: Record<string, string> = {
  ECONNREFUSED: STACK_UP,
  ENOTFOUND: NO_HOST,
  EAI_AGAIN: NO_HOST,
  EHOSTUNREACH: NO_ROUTE,
  ENETUNREACH: NO_ROUTE,
  ETIMEDOUT: NO_ROUTE,
};

type SystemError = Error & { code?: string; address?: string; port?: number; hostname?: string };

/** For a call that never reached a server: "cannot reach the gateway at <address>: <what to
 * check> (<Node's text>)"; undefined for anything else. A status a server sent has no
 * Node system error as its cause, so a server's own Unavailable keeps its message. */
function unreachableMessage(error: ConnectError): string | undefined {
  const system = error.cause as SystemError | undefined;
  if (error.code !== Code.Unavailable || !(system instanceof Error)) return undefined;
  const hint = NOT_CONNECTED[system.code ?? ""];
  if (hint === undefined) return undefined;
  const host = system.address?.includes(":") ? `[${system.address}]` : system.address;
  const where = host !== undefined && system.port !== undefined
    ? `${host}:${system.port}`
    : host ?? system.hostname;
  return `cannot reach the gateway${where ? ` at ${where}` : ""}: ${hint} (${error.rawMessage})`;
}

/** A code's canonical gRPC name, `UNAVAILABLE` for Code.Unavailable: the reason a status
 * without ErrorInfo stands for. Connect's names are its own spelling (`Unavailable`,
 * `Canceled`): a transport failure read `Unavailable` where the gateway's said
 * `UNAVAILABLE`, so one check had to know both. */
export function canonicalName(code: Code): string {
  return code === Code.Canceled ? "CANCELLED" : Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Whether `err` (a GensearchError or a ConnectError) carries the ErrorInfo reason `reason`. */
export function hasReason(err: unknown, reason: Reason): boolean {
  return (err instanceof GensearchError || err instanceof ConnectError) && GensearchError.from(err).reason === reason;
}

/** Connect-node reports a connection lost mid-call (the gateway's process died, a proxy cut
 * it) as Canceled — the HTTP/2 stream closed with code CANCEL — as if you had cancelled the
 * call. Add this interceptor to the transport to read it as Unavailable, the retryable
 * code grpc-go and Python's grpc report for it; a call whose signal aborted (yours,
 * cancelOnLeave's) stays Canceled. */
export const unavailableOnConnectionLoss: Interceptor = (next) => async (req) => {
  const lost = (err: unknown): unknown => {
    const e = ConnectError.from(err);
    if (req.signal.aborted || e.code !== Code.Canceled) return err;
    return new ConnectError(`connection lost: ${e.rawMessage}`, Code.Unavailable, e.metadata, undefined, e);
  };
  let res: Awaited<ReturnType<typeof next>>;
  try {
    res = await next(req);
  } catch (err) {
    throw lost(err);
  }
  if (!res.stream) return res;
  const messages = res.message;
  async function* relayed() {
    try {
      yield* messages;
    } catch (err) {
      throw lost(err);
    }
  }
  return { ...res, message: relayed() };
};
