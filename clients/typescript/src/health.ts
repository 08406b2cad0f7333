// gRPC health through the vendored grpc/health/v1/health.proto: every service answers it,
// the gateway for itself. Prints the status name, e.g. SERVING.
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl } from "./gatewayEnv.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";

const transport = createGrpcTransport({ baseUrl });
const reply = await createClient(Health, transport).check({ service: "" }, { timeoutMs: 5_000 });
console.log(HealthCheckResponse_ServingStatus[reply.status]);
