// The README's main flow through the generated client, no hand-written conversion:
// Struct properties are plain objects. GENSEARCH_URL (default http://localhost:50050),
// GENSEARCH_KEY (omit when no keys are configured).
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { GatewayService } from "./gen/gensearch/gateway/v1/gateway_service_pb.js";
import { DataType, RetrievalService, VectorizerKind } from "./gen/gensearch/retrieval/v1/retrieval_service_pb.js";

const key = process.env.GENSEARCH_KEY;
const transport = createGrpcTransport({ baseUrl: process.env.GENSEARCH_URL ?? "http://localhost:50050", defaultTimeoutMs: 60_000,
  interceptors: key ? [(next) => (req) => { req.header.set("authorization", `Bearer ${key}`); return next(req); }] : [] });
const retrieval = createClient(RetrievalService, transport), gateway = createClient(GatewayService, transport);
const [text, int] = [DataType.TEXT, DataType.INT];
await retrieval.createCollection({ collection: { name: "Books", vectorizer: { kind: VectorizerKind.LOCAL },
  properties: [{ name: "title", dataType: text }, { name: "body", dataType: text }, { name: "year", dataType: int }] } });
const books = [{ title: "Dune", body: "A desert planet and the spice melange.", year: 1965 },
  { title: "Neuromancer", body: "A hacker in a cyberpunk future.", year: 1984 }, { title: "Foundation", body: "A galactic empire falls.", year: 1951 }];
async function* batches() { yield { collection: "Books", objects: books.map((properties) => ({ properties })) }; }
const imported = await retrieval.importObjects(batches()); // int64 counts are bigint
console.log(`imported ${imported.importedCount}`);
const found = await retrieval.search({ collection: "Books", query: { case: "nearText", value: { text: "sand and spice" } }, limit: 3 });
for (const hit of found.hits) console.log("hit", hit.properties?.title, hit.properties?.year);
const gen = await gateway.generativeSearch({ collection: "Books", query: { case: "keyword", value: { text: "desert hacker empire" } }, limit: 3,
  generate: { singlePrompt: "One-line teaser for {title}: {body}", groupedTask: "Which is the oldest?", groupedProperties: ["title", "year"] } });
for (const { hit, generation } of gen.hits) console.log("teaser", hit?.properties?.title, "->", generation?.result || generation?.error?.message);
console.log("grouped", gen.grouped?.result);
const first = await gateway.ask({ collection: "Books", llmQuestion: "Which book is set on a desert planet?", newConversation: true });
const second = await gateway.ask({ collection: "Books", llmQuestion: "When was it written?", conversationId: first.conversationId });
for (const [i, turn] of [first, second].entries()) console.log(`turn ${i + 1}`, turn.conversationId, JSON.stringify(turn.answer));
