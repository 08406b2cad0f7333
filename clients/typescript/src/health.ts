// gRPC health through the vendored grpc/health/v1/health.proto: every service answers it,
// the gateway for itself. Prints the status name, e.g. SERVING; a failure as one line on
// stderr (exit 1).
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl } from "./gatewayEnv.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { GensearchError } from "./rpcError.js";

const transport = createGrpcTransport({ baseUrl });
try {
  const reply = await createClient(Health, transport).check({ service: "" }, { timeoutMs: 5_000 });
  console.log(HealthCheckResponse_ServingStatus[reply.status]);
} catch (err) {
  // One line, as the Python client's str(err): for a gateway not reached, where the call
  // went and what to check (src/rpcError.ts).
  const error = GensearchError.from(err);
  console.error(`${error.reason}: ${error.message}`);
  process.exitCode = 1;
}
