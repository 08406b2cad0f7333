// Your own embedding key to a collection whose vectorizer URL its admin set
// (src/providerKeys.ts, docs/clients.md#your-own-provider-keys): refused until the call
// names that URL in keyUrls, then sent there. One line per step, for the test to read.
// GENSEARCH_ADDRESS, GENSEARCH_API_KEY as in example.ts; GENSEARCH_COLLECTION (its vectorizer at
// GENSEARCH_EMBEDDING_URL), GENSEARCH_EMBEDDING_KEY: your key.
import { Code, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl, key } from "./gatewayEnv.js";
import { RetrievalService } from "./gen/gensearch/retrieval/v1/retrieval_service_pb.js";
import { providerKeys, type ProviderKeysOptions } from "./providerKeys.js";
import { GensearchError } from "./rpcError.js";

const auth: Interceptor = (next) => (req) => { if (key) req.header.set("authorization", `Bearer ${key}`); return next(req); };
const collection = process.env.GENSEARCH_COLLECTION ?? "Shared", url = process.env.GENSEARCH_EMBEDDING_URL ?? "";
const llmKeys = { embedding: process.env.GENSEARCH_EMBEDDING_KEY ?? "" };
const retrievalWith = (options: ProviderKeysOptions) =>
  createClient(RetrievalService, createGrpcTransport({ baseUrl, interceptors: [auth, providerKeys(options)] }));

const upsert = { collection, objects: [{ properties: { title: "mine" } }] };
try {
  await retrievalWith({ llmKeys }).upsertObjects(upsert);
  console.log("unconfirmed accepted");
} catch (err) {
  const e = GensearchError.from(err);
  console.log("unconfirmed", Code[e.code], e.reason, e.field, e.metadata["base_url_field"]);
}
const confirmed = retrievalWith({ llmKeys, keyUrls: { embedding: url } });
const written = await confirmed.upsertObjects(upsert);
const found = await confirmed.search({ collection, query: { case: "nearText", value: { text: "mine" } }, limit: 1 });
console.log("confirmed", written.ids.length, found.hits.length);
for (const bad of [{ llmKeys: { embedding: "sk-\u2026" } }, { keyUrls: { openai: url } }, { llmKeys: { "no such": "k" } },
  { llmKeys: { OpenAI: "k", openai: "k" } }]) {
  try {
    providerKeys(bad as ProviderKeysOptions);
    console.log("refused none");
  } catch (err) {
    console.log("refused", (err as Error).message.split(" ")[0]);
  }
}
