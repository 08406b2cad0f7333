// StreamGenerativeSearch through the gateway, read with `for await`: the hits, token deltas and each hit's result
// (by hit index, completion order), the grouped result, then done. Uses (and deletes) its own collection.
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl, key } from "./gatewayEnv.js";
import { GatewayService, type GenerationResult } from "./gen/gensearch/gateway/v1/gateway_service_pb.js";
import { DataType, RetrievalService, VectorizerKind } from "./gen/gensearch/retrieval/v1/retrieval_service_pb.js";

const auth: Interceptor = (next) => (req) => { if (key) req.header.set("authorization", `Bearer ${key}`); return next(req); };
const transport = createGrpcTransport({ baseUrl, interceptors: [auth], defaultTimeoutMs: 60_000 });
const retrieval = createClient(RetrievalService, transport), gateway = createClient(GatewayService, transport);
const collection = "StreamedBooks", text = DataType.TEXT;
const answer = (g?: GenerationResult) => JSON.stringify(g?.result || g?.error?.message); // one line each
await retrieval.createCollection({ collection: { name: collection, vectorizer: { kind: VectorizerKind.LOCAL },
  properties: [{ name: "title", dataType: text }, { name: "body", dataType: text }] } });
await retrieval.upsertObjects({ collection, objects: [{ properties: { title: "Dune", body: "A desert planet of spice." } },
  { properties: { title: "Neuromancer", body: "A hacker in a cyberpunk future." } }] });
const stream = gateway.streamGenerativeSearch({ collection, query: { case: "keyword", value: { text: "desert hacker" } },
  limit: 2, generate: { singlePrompt: "One-line teaser for {title}: {body}", groupedTask: "Which is darker?", streamTokens: true } });
for await (const { event } of stream) {
  switch (event.case) {
    case "hits": event.value.hits.forEach((hit, i) => console.log("hit", i, hit.properties?.title)); break;
    case "token": console.log("token", event.value.grouped ? "grouped" : event.value.hitIndex, JSON.stringify(event.value.delta)); break;
    case "hitResult": console.log("result", event.value.hitIndex, answer(event.value.generation)); break;
    case "grouped": console.log("grouped", answer(event.value)); break;
    case "done": console.log("done", event.value.usage?.totalTokens, "tokens,", event.value.upstreamCalls, "upstream calls");
  }
}
await retrieval.deleteCollection({ name: collection });
