// The README's main flow through generated code only: Struct properties are plain objects.
// GENSEARCH_ADDRESS (host:port, default localhost:50050); GENSEARCH_API_KEY where keys are set (gatewayEnv.ts).
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl, key } from "./gatewayEnv.js";
import { GatewayService } from "./gen/gensearch/gateway/v1/gateway_service_pb.js";
import { DataType, RetrievalService, VectorizerKind } from "./gen/gensearch/retrieval/v1/retrieval_service_pb.js";

const auth: Interceptor = (next) => (req) => { if (key) req.header.set("authorization", `Bearer ${key}`); return next(req); };
const transport = createGrpcTransport({ baseUrl, interceptors: [auth], defaultTimeoutMs: 60_000 });
const retrieval = createClient(RetrievalService, transport), gateway = createClient(GatewayService, transport);
const collection = "Books", text = DataType.TEXT;
await retrieval.createCollection({ collection: { name: collection, vectorizer: { kind: VectorizerKind.LOCAL },
  properties: [{ name: "title", dataType: text }, { name: "body", dataType: text }, { name: "year", dataType: DataType.INT }] } });
const books = [{ title: "Dune", body: "A desert planet and the spice melange.", year: 1965 },
  { title: "Neuromancer", body: "A hacker in a cyberpunk future.", year: 1984 },
  { title: "Foundation", body: "A galactic empire falls.", year: 1951 }];
async function* batches() { yield { collection, objects: books.map((properties) => ({ properties })) }; }
console.log(`imported ${(await retrieval.importObjects(batches())).importedCount}`); // int64 counts are bigint
const found = await retrieval.search({ collection, query: { case: "nearText", value: { text: "sand and spice" } }, limit: 3 });
for (const hit of found.hits) console.log("hit", hit.properties?.title, hit.properties?.year);
const gen = await gateway.generativeSearch({ collection, query: { case: "keyword", value: { text: "desert hacker empire" } },
  limit: 3, generate: { singlePrompt: "One-line teaser for {title}: {body}", groupedTask: "Which is the oldest?",
  groupedProperties: ["title", "year"] } });
for (const { hit, generation: g } of gen.hits) console.log("teaser", hit?.properties?.title, "->", g?.result || g?.error?.message);
console.log("grouped", gen.grouped?.result);
const first = await gateway.ask({ collection, llmQuestion: "Which book is set on a desert planet?", newConversation: true });
const second = await gateway.ask({ collection, llmQuestion: "When was it written?", conversationId: first.conversationId });
for (const [i, turn] of [first, second].entries()) console.log(`turn ${i + 1}`, turn.conversationId, JSON.stringify(turn.answer));
