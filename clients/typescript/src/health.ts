// gRPC health through the vendored grpc/health/v1/health.proto: every service answers it,
// the gateway for itself. Prints the status name, e.g. SERVING; a failure as one line on
// stderr (exit 1): gatewayEnv.ts's uncaughtException handler prints it, as for every
// program here, so there is no catch of its own (it printed the same line twice over).
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl } from "./gatewayEnv.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";

const transport = createGrpcTransport({ baseUrl });
const reply = await createClient(Health, transport).check({ service: "" }, { timeoutMs: 5_000 });
console.log(HealthCheckResponse_ServingStatus[reply.status]);
