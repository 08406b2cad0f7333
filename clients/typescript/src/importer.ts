// Bulk import over ImportObjects (client streaming) that waits out the gateway's per-tenant
// write quotas, as the Python client's import_ does (docs/clients.md#bulk-import-and-the-write-quotas):
// a stream the gateway stops at a write quota (RESOURCE_EXHAUSTED, ErrorInfo QUOTA_EXCEEDED,
// RetryInfo) is resumed after the objects the gateway received, none sent twice, once the
// RetryInfo delay (plus jitter) has passed; the parts merge into one result whose
// errors[i].index is the object's position in what was passed.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError, type Client } from "@connectrpc/connect";
import {
  type DataObjectSchema,
  ImportObjectsResponseSchema,
  type ObjectError,
  RetrievalService,
} from "./gen/gensearch/retrieval/v1/retrieval_service_pb.js";
import { GensearchError, Reason } from "./rpcError.js";

export type DataObjectInit = MessageInitShape<typeof DataObjectSchema>;

/** Why one object was not written; `index` is its position in what was passed. */
export interface ImportObjectError {
  index: number;
  id: string;
  field: string;
  message: string;
}

export interface ImportResult {
  received: number;
  imported: number;
  errors: ImportObjectError[];
  /** More objects were rejected than listed: received - imported counts them all. */
  errorsTruncated: boolean;
}

export interface ImportOptions {
  /** Objects a message (default 100). */
  batchSize?: number;
  /** Objects a stream, each acknowledged before the next (default 1000). */
  objectsPerCall?: number;
  /** Each stream's deadline, its waits for the quota included (default none). */
  timeoutMs?: number;
  /** Called as each message of n objects goes out, each object once (resent or not). */
  onSent?: (n: number) => void;
  /** Wait out the write quotas and resume (default true); false: throw at the quota. */
  waitForQuota?: boolean;
  /** Called before each wait for a write quota, with its length. */
  onQuotaWait?: (ms: number, error: ImportStreamError) => void;
}

/** The gateway's per-tenant write quotas an import waits out (docs/operations.md#quotas). */
export const WRITE_QUOTAS: ReadonlySet<string> = new Set(["objects_written_per_minute", "bytes_written_per_minute"]);

/** A failed ImportObjects stream: a GensearchError (code, reason, metadata, retryDelayMs)
 * with the objects its earlier messages rejected. `metadata` (received_count,
 * imported_count, rejected_indexes) and `objectErrors` count from the stream's first
 * object, also when it was resumed after a wait (the message then says where). */
export class ImportStreamError extends GensearchError {
  /** The objects earlier messages of the stream rejected, with their reasons (stream positions). */
  objectErrors: ImportObjectError[];

  constructor(cause: ConnectError) {
    super(cause);
    this.name = "ImportStreamError";
    this.objectErrors = cause.findDetails(ImportObjectsResponseSchema).flatMap((a) => a.errors.map(plain));
  }

  /** The stream positions of metadata rejected_indexes ("3,17,42", ending ",…" when cut). */
  get rejectedIndexes(): { indexes: number[]; cut: boolean } {
    const value = this.metadata["rejected_indexes"] ?? "";
    const listed = value.replace(/,?…$/, "");
    const indexes = listed ? listed.split(",").filter((p) => /^\d+$/.test(p.trim())).map(Number) : [];
    return { indexes, cut: value.endsWith("…") };
  }
}

function plain(error: ObjectError, shift = 0): ImportObjectError {
  return { index: Number(error.index) + shift, id: error.id, field: error.field, message: error.message };
}

/** How long to wait when the service says `retryDelayMs`: that, 50 ms for the clocks'
 * granularity, and a random part of up to a tenth of it (at most 1 s), so a tenant's
 * importers do not all come back at the same instant. */
export function quotaWaitMs(retryDelayMs: number): number {
  const delay = Math.max(retryDelayMs, 0);
  return delay + 50 + Math.random() * Math.min(1000, delay / 10);
}

/** `importObjects` one acknowledged stream at a time (for progress reporting). */
export async function* importObjectsIter(
  retrieval: Client<typeof RetrievalService>,
  collection: string,
  objects: Iterable<DataObjectInit>,
  options: ImportOptions = {},
): AsyncGenerator<ImportResult> {
  const batchSize = options.batchSize ?? 100;
  if (batchSize < 1) throw new RangeError("batchSize must be at least 1");
  const perCall = Math.max(options.objectsPerCall ?? 1000, batchSize);
  const source = objects[Symbol.iterator]();
  let offset = 0;
  for (let first = true; ; first = false) {
    const chunk: DataObjectInit[] = [];
    for (let next = source.next(); ; next = source.next()) {
      if (next.done) break;
      chunk.push(next.value);
      if (chunk.length === perCall) break;
    }
    if (!chunk.length && !first) return;
    // An empty stream still names the collection, so a wrong name is reported.
    yield await new ImportStream(retrieval, collection, chunk, offset, batchSize, options).run();
    offset += chunk.length;
    if (chunk.length < perCall) return;
  }
}

/** Bulk load over ImportObjects, `batchSize` objects a message, in streams of
 * `objectsPerCall`; waits out the write quotas unless `waitForQuota` is false. */
export async function importObjects(
  retrieval: Client<typeof RetrievalService>,
  collection: string,
  objects: Iterable<DataObjectInit>,
  options: ImportOptions = {},
): Promise<ImportResult> {
  const result: ImportResult = { received: 0, imported: 0, errors: [], errorsTruncated: false };
  for await (const part of importObjectsIter(retrieval, collection, objects, options)) {
    result.received += part.received;
    result.imported += part.imported;
    result.errors.push(...part.errors);
    result.errorsTruncated ||= part.errorsTruncated;
  }
  return result;
}

class ImportStream {
  private readonly result: ImportResult = { received: 0, imported: 0, errors: [], errorsTruncated: false };
  private start = 0; // objects received by the service in earlier parts
  private position = 0; // objects of the current part gone out, from the stream's start
  private reported = 0; // objects reported to onSent (each once, resent or not)
  private rejected: number[] = []; // earlier parts' rejections, stream positions
  private rejectedCut = false;

  constructor(
    private readonly retrieval: Client<typeof RetrievalService>,
    private readonly collection: string,
    private readonly objects: DataObjectInit[],
    private readonly offset: number,
    private readonly batchSize: number,
    private readonly options: ImportOptions,
  ) {}

  private async *batches(): AsyncGenerator<{ collection: string; objects: DataObjectInit[] }> {
    const rest = this.objects.slice(this.start);
    for (let at = 0; at < Math.max(rest.length, 1); at += this.batchSize) {
      const batch = rest.slice(at, at + this.batchSize);
      // The first message names the collection (even an empty stream's).
      yield { collection: at ? "" : this.collection, objects: batch };
      if (batch.length) this.sent(batch.length);
    }
  }

  private sent(count: number): void {
    this.position += count;
    if (this.options.onSent && this.position > this.reported) this.options.onSent(this.position - this.reported);
    this.reported = Math.max(this.reported, this.position);
  }

  async run(): Promise<ImportResult> {
    const { timeoutMs, waitForQuota = true, onQuotaWait } = this.options;
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    for (;;) {
      this.position = this.start;
      const left = deadline === undefined ? undefined : Math.max(deadline - Date.now(), 1);
      let reply;
      try {
        reply = await this.retrieval.importObjects(this.batches(), { timeoutMs: left });
      } catch (thrown) {
        const error = new ImportStreamError(ConnectError.from(thrown));
        const received = this.resumable(error);
        if (received === undefined || error.retryDelayMs === undefined || !waitForQuota) {
          throw this.wholeStream(error);
        }
        const wait = quotaWaitMs(error.retryDelayMs);
        if (deadline !== undefined && Date.now() + wait >= deadline) {
          throw this.wholeStream(error); // waiting would pass the deadline: not begun
        }
        this.addPart(error);
        onQuotaWait?.(wait, error);
        await new Promise((resolve) => setTimeout(resolve, wait));
        this.start += received;
        continue;
      }
      for (const e of reply.errors) this.result.errors.push(plain(e, this.offset + this.start));
      this.result.received += Number(reply.receivedCount);
      this.result.imported += Number(reply.importedCount);
      this.result.errorsTruncated ||= reply.errorsTruncated;
      return this.result;
    }
  }

  /** How many objects of the current part the gateway received before it stopped the stream
   * at a write quota, when waiting can help; undefined otherwise. */
  private resumable(error: ImportStreamError): number | undefined {
    if (error.reason !== Reason.QUOTA_EXCEEDED || !WRITE_QUOTAS.has(error.metadata["quota"] ?? "")) return undefined;
    const received = Number(error.metadata["received_count"]);
    if (!Number.isInteger(received) || !/^\d+$/.test(error.metadata["imported_count"] ?? "")) return undefined;
    // The refused message was not received: at least one object is left to send.
    return received >= 0 && received < this.objects.length - this.start ? received : undefined;
  }

  /** What the part the quota stopped wrote: its counts, and an error for each object it
   * rejected, with its reason (or, past what fits in the error, its position alone). */
  private addPart(error: ImportStreamError): void {
    const received = Number(error.metadata["received_count"]);
    const imported = Number(error.metadata["imported_count"]);
    this.result.received += received;
    this.result.imported += imported;
    const { indexes, cut } = error.rejectedIndexes;
    const reasons = new Map(error.objectErrors.map((e) => [e.index, e]));
    const positions = [...new Set([...indexes, ...reasons.keys()])].sort((a, b) => a - b);
    for (const index of positions) {
      const position = this.start + index;
      if (position < 0 || position >= this.objects.length) continue;
      this.rejected.push(position);
      const known = reasons.get(index);
      this.result.errors.push({
        index: this.offset + position,
        id: known?.id ?? this.objects[position]?.id ?? "",
        field: known?.field ?? "",
        message:
          known?.message ??
          "rejected by the service; its reason did not fit in the error that stopped the stream at " +
            "the write quota (write this object alone to see why)",
      });
    }
    const listed = positions.length < received - imported;
    this.rejectedCut ||= cut || listed;
    this.result.errorsTruncated ||= cut || listed;
  }

  /** Makes the counts of `error`, the failure of a stream resumed after waiting, the whole
   * stream's, from its first object, as for a stream never resumed. */
  private wholeStream(error: ImportStreamError): ImportStreamError {
    if (!this.start) return error;
    const received = Number(error.metadata["received_count"]);
    const imported = Number(error.metadata["imported_count"]);
    if (!Number.isInteger(received) || !Number.isInteger(imported) || !("received_count" in error.metadata)) {
      error.message +=
        ` (${this.result.imported} objects of the stream were imported before it was resumed at ` +
        `its object ${this.start} after waiting for the write quota)`;
      return error;
    }
    const { indexes, cut } = error.rejectedIndexes;
    const rejected = [...this.rejected, ...indexes.map((i) => this.start + i)];
    error.metadata["received_count"] = String(this.start + received);
    error.metadata["imported_count"] = String(this.result.imported + imported);
    if (rejected.length) error.metadata["rejected_indexes"] = rejected.join(",") + (cut || this.rejectedCut ? ",…" : "");
    error.objectErrors = [
      ...this.result.errors.map((e) => ({ ...e, index: e.index - this.offset })),
      ...error.objectErrors.map((e) => ({ ...e, index: this.start + e.index })),
    ];
    error.message +=
      ` (the stream was resumed at its object ${this.start} after waiting for the write quota: ` +
      "the counts are from its start)";
    return error;
  }
}
