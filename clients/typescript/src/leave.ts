// Leaving a StreamGenerativeSearch early cancels the call (docs/clients.md#deadlines-leaving-a-stream-closing):
// a `break` out of `for await` over cancelOnLeave (a bare Connect stream would run on), then
// aborting your own `signal` passed to it. After each the program waits
// for a line on stdin (the test has seen the upstream LLM request closed); at the end it
// exits by itself, which Node does only when no call is left open.
// GENSEARCH_ADDRESS, GENSEARCH_API_KEY as in example.ts; GENSEARCH_COLLECTION: a collection with a title.
import { createInterface } from "node:readline";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { cancelOnLeave } from "./cancelOnLeave.js";
import { baseUrl, key } from "./gatewayEnv.js";
import { GatewayService } from "./gen/gensearch/gateway/v1/gateway_service_pb.js";

const auth: Interceptor = (next) => (req) => { if (key) req.header.set("authorization", `Bearer ${key}`); return next(req); };
const gateway = createClient(GatewayService, createGrpcTransport({ baseUrl, interceptors: [auth] }));
const request = { collection: process.env.GENSEARCH_COLLECTION ?? "Books", limit: 1,
  query: { case: "keyword" as const, value: { text: "desert" } },
  generate: { singlePrompt: "A slow teaser for {title}", streamTokens: true } };
const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

for await (const { event } of cancelOnLeave((signal) => gateway.streamGenerativeSearch(request, { signal }))) {
  if (event.case === "token") break; // an LLM call is in flight: leave it
}
console.log("left");
await lines.next();

const controller = new AbortController();
try {
  const stream = cancelOnLeave((signal) => gateway.streamGenerativeSearch(request, { signal }), controller.signal);
  for await (const { event } of stream) {
    if (event.case === "token") controller.abort();
  }
  console.log("aborted none");
} catch (err) {
  console.log("aborted", Code[ConnectError.from(err).code]);
}
await lines.next();
stdin.close();
console.log("done");
