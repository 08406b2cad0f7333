// importObjects (src/importer.ts) through a gateway with a small write quota: one import
// stopped at the quota (waitForQuota: false), then one that waits it out and resumes. One
// JSON line each, for the test to read. GENSEARCH_ADDRESS, GENSEARCH_API_KEY as in example.ts;
// GENSEARCH_COLLECTION: a collection with an int property "n" and 2-dimensional vectors.
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl, key } from "./gatewayEnv.js";
import { RetrievalService } from "./gen/gensearch/retrieval/v1/retrieval_service_pb.js";
import { importObjects, ImportStreamError } from "./importer.js";
import { hasReason, Reason } from "./rpcError.js";

const auth: Interceptor = (next) => (req) => { if (key) req.header.set("authorization", `Bearer ${key}`); return next(req); };
const retrieval = createClient(RetrievalService, createGrpcTransport({ baseUrl, interceptors: [auth] }));
const collection = process.env.GENSEARCH_COLLECTION ?? "Numbers";
// Object i has n = first + i, or a text where bad (rejected by retrieval: n is an int).
const objects = (count: number, first: number, bad: number[]) => Array.from({ length: count }, (_, i) =>
  ({ properties: { n: bad.includes(i) ? `bad ${i}` : first + i }, vector: [1, i / 100] }));

try {
  await importObjects(retrieval, collection, objects(15, 100, [3]), { batchSize: 5, waitForQuota: false });
  console.log(JSON.stringify({ stopped: null }));
} catch (err) {
  if (!(err instanceof ImportStreamError)) throw err;
  console.log(JSON.stringify({ stopped: { reason: err.reason, hasReason: hasReason(err, Reason.QUOTA_EXCEEDED), metadata: err.metadata, retryDelayMs: err.retryDelayMs,
    objectErrors: err.objectErrors } }));
}
const sent: number[] = [], waits: [number, number][] = [];
const result = await importObjects(retrieval, collection, objects(20, 0, [2, 17]), { batchSize: 5, objectsPerCall: 15,
  onSent: (n) => sent.push(n), onQuotaWait: (ms, err) => waits.push([ms, err.retryDelayMs ?? -1]) });
console.log(JSON.stringify({ ...result, sent: sent.reduce((a, b) => a + b, 0), waits }));
