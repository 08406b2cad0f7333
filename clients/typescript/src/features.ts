// Issue 13's fields through generated code: generation over named objects (GenerateOnObjects)
// with the generation cache, a fallback chain, an Ask retried with its request_id, memory's
// CheckStorage limits, and an ErrorInfo reason. One line per result, for the test to read.
// GENSEARCH_ADDRESS, GENSEARCH_API_KEY as in example.ts; GENSEARCH_PRIMARY_MODEL names a model that
// fails (the test's fake LLM answers it 503) and GENSEARCH_BACKUP_PROVIDER the provider the
// chain falls back to (default ollama: not the stack's default pair, which a chain may not
// repeat; with no failing primary the primary answers, fallback index 0).
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl, key } from "./gatewayEnv.js";
import { CacheMode, GatewayService, type GenerationResult } from "./gen/gensearch/gateway/v1/gateway_service_pb.js";
import { MemoryService } from "./gen/gensearch/memory/v1/memory_service_pb.js";
import { DataType, RetrievalService, VectorizerKind } from "./gen/gensearch/retrieval/v1/retrieval_service_pb.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

const auth: Interceptor = (next) => (req) => { if (key) req.header.set("authorization", `Bearer ${key}`); return next(req); };
const transport = createGrpcTransport({ baseUrl, interceptors: [auth], defaultTimeoutMs: 60_000 });
const retrieval = createClient(RetrievalService, transport), gateway = createClient(GatewayService, transport);
const memory = createClient(MemoryService, transport);
const collection = "Features", text = DataType.TEXT;
const shown = (g?: GenerationResult) => JSON.stringify(g?.error ? g.error.reason : g?.result);

await retrieval.createCollection({ collection: { name: collection, vectorizer: { kind: VectorizerKind.LOCAL },
  properties: [{ name: "title", dataType: text }, { name: "body", dataType: text }] } });
try {
  const { ids } = await retrieval.upsertObjects({ collection, objects: [
    { properties: { title: "Dune", body: "A desert planet and the spice melange." } },
    { properties: { title: "Solaris", body: "A living ocean." } }] });

  // By id, one of them missing (its own NOT_FOUND), twice: the second from the cache.
  const missing = "7e1f1a52-9c0e-4b8b-8d53-41e1d0a4c2aa";
  for (const round of ["first", "again"]) {
    const named = await gateway.generateOnObjects({ collection, objects: { case: "ids", value: { ids: [...ids, missing] } },
      generate: { singlePrompt: "Teaser for {title}", cache: { mode: CacheMode.USE, ttl: { seconds: 600n } } } });
    for (const { hit, generation: g } of named.hits) console.log("named", round, hit?.id, g?.cached ?? false, shown(g));
  }
  // Inline objects, no collection behind them.
  const inline = await gateway.generateOnObjects({ objects: { case: "inline", value: { objects: [{ name: "tea", price: 3 }] } },
    generate: { singlePrompt: "A menu line for {name} at {price} EUR" } });
  console.log("inline", shown(inline.hits[0]?.generation));

  // A fallback chain: the primary model fails, the backup provider answers.
  const chained = await gateway.generativeSearch({ collection, query: { case: "keyword", value: { text: "desert" } }, limit: 1,
    generate: { singlePrompt: "Summarise {body}", model: process.env.GENSEARCH_PRIMARY_MODEL ?? "",
      fallback: [{ provider: process.env.GENSEARCH_BACKUP_PROVIDER ?? "ollama" }] } });
  const g = chained.hits[0]?.generation;
  console.log("fallback", g?.provider, g?.fallbackIndex, g?.upstreamCalls, shown(g));

  // An Ask retried with its request_id: the stored turn, replayed, no LLM call.
  const ask = { collection, llmQuestion: "Which book is set on a desert planet?", newConversation: true,
    requestId: "c5b3f0d2-6a1e-4f7b-9c8d-2e4f6a8b0c1d" };
  const first = await gateway.ask(ask), again = await gateway.ask(ask);
  console.log("ask", first.replayed, again.replayed, first.interactionId === again.interactionId,
    first.conversationId === again.conversationId, again.upstreamCalls);
  try {
    await gateway.ask({ ...ask, llmQuestion: "Another question" });
  } catch (err) {
    const error = ConnectError.from(err), [info] = error.findDetails(ErrorInfoSchema);
    console.log("reused", Code[error.code], info?.reason, info?.metadata.field);
  }

  // What memory accepts in a turn (int64 sizes are bigint).
  const storage = await memory.checkStorage({});
  console.log("limits", String(storage.limits?.maxTextBytes), String(storage.limits?.maxRequestIdBytes));
} finally {
  await retrieval.deleteCollection({ name: collection });
}
