// Rich errors: the server's google.rpc.Status details (grpc-status-details-bin), read with
// the generated google.rpc types. A collection name with a space is INVALID_ARGUMENT with
// ErrorInfo reason BAD_NAME and a BadRequest naming the field.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { baseUrl, key } from "./gatewayEnv.js";
import { RetrievalService } from "./gen/gensearch/retrieval/v1/retrieval_service_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

const transport = createGrpcTransport({ baseUrl,
  interceptors: key ? [(next) => (req) => { req.header.set("authorization", `Bearer ${key}`); return next(req); }] : [] });
const retrieval = createClient(RetrievalService, transport);
try {
  await retrieval.createCollection({ collection: { name: "my books" } });
} catch (err) {
  const error = ConnectError.from(err);
  const [info] = error.findDetails(ErrorInfoSchema);
  const [bad] = error.findDetails(BadRequestSchema);
  console.log(JSON.stringify({ code: Code[error.code], message: error.rawMessage, reason: info?.reason,
    domain: info?.domain, metadata: info?.metadata, fields: bad?.fieldViolations.map((v) => v.field) }));
}
