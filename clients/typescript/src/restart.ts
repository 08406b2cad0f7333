// The gateway dies mid-stream and comes back (tests/clients/test_gateway_restart.py kills
// and restarts it): the stream fails at once with Unavailable (Canceled without
// unavailableOnConnectionLoss, src/rpcError.ts), so does a call while it is
// down, and the same client works once it is back. One line per step; after "down" the
// program waits for a line on stdin (the gateway is back). GENSEARCH_ADDRESS, GENSEARCH_API_KEY as
// in example.ts.
import { setTimeout as sleep } from "node:timers/promises";
import { createInterface } from "node:readline";
import { Code, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl, key } from "./gatewayEnv.js";
import { GenerationService, Role } from "./gen/gensearch/generation/v1/generation_service_pb.js";
import { GensearchError, unavailableOnConnectionLoss } from "./rpcError.js";

const auth: Interceptor = (next) => (req) => { if (key) req.header.set("authorization", `Bearer ${key}`); return next(req); };
const generation = createClient(GenerationService, createGrpcTransport({ baseUrl,
  interceptors: [auth, unavailableOnConnectionLoss] }));
const say = (content: string) => ({ messages: [{ role: Role.USER, content }] });
const failure = (err: unknown) => { const e = GensearchError.from(err); return `${Code[e.code]} ${e.reason}`; };
const stdin = createInterface({ input: process.stdin });

try {
  let deltas = 0;
  for await (const _ of generation.streamGenerate(say("streamed while the gateway dies"))) {
    if (deltas++ === 0) console.log("streaming"); // the test kills the gateway now
  }
  console.log("died none");
} catch (err) {
  console.log("died", failure(err));
}
try {
  await generation.generate(say("while down"));
  console.log("down none");
} catch (err) {
  console.log("down", failure(err));
}
await stdin[Symbol.asyncIterator]().next();
stdin.close();
// The same client: Unavailable only while it reconnects.
for (let attempt = 1; ; attempt++) {
  try {
    console.log("back", JSON.stringify((await generation.generate(say("after the restart"))).text));
    break;
  } catch (err) {
    if (GensearchError.from(err).code !== Code.Unavailable || attempt === 300) throw err;
    await sleep(100);
  }
}
