// Where the gateway is and the caller's API key, under the names the Python client and the
// gensearch CLI read, so one shell serves every client:
// - GENSEARCH_ADDRESS: host:port as for the CLI (http:// is put in front; a host without a
//   port is refused), or a URL (http://
//   or https://, taken as is: TypeScript only, the Python and Go clients want host:port).
//   Default http://localhost:50050.
// - GENSEARCH_API_KEY: sent as `authorization: Bearer <key>`; unset where no keys are configured.
// The examples' former names, GENSEARCH_URL and GENSEARCH_KEY, are still read, with a warning
// on stderr, when the new name is unset: deprecated, they go in the next release.
// A program that imports this module and fails on a call prints that call's error as one line
// (exit 1), as health.js and the Go programs do.
import { ConnectError } from "@connectrpc/connect";
import { GensearchError } from "./rpcError.js";

function deprecated(old: string, name: string, value: string | undefined): string | undefined {
  if (value) console.error(`gensearch: ${old} is deprecated and goes in the next release: set ${name}`);
  return value || undefined;
}

// A scheme (http://, https://) says the value is a URL already. A host without a port is
// refused here, naming the variable, as the Python and Go clients and the CLI refuse it: put
// behind http:// it meant port 80, and every call failed unavailable with no word why.
const address = process.env.GENSEARCH_ADDRESS || undefined;
const isUrl = address !== undefined && /^[a-z][a-z0-9+.-]*:\/\//i.test(address);
if (address !== undefined && !isUrl && !/:\d+$/.test(address)) {
  console.error(`gensearch: GENSEARCH_ADDRESS ${JSON.stringify(address)} has no port: set host:port (or a URL)`);
  process.exit(2);
}
export const baseUrl = address === undefined
  ? deprecated("GENSEARCH_URL", "GENSEARCH_ADDRESS", process.env.GENSEARCH_URL) ?? "http://localhost:50050"
  : isUrl ? address : `http://${address}`;

// Set but empty, GENSEARCH_API_KEY means no key, as for the Python client: the old name is not read.
export const key: string | undefined =
  process.env.GENSEARCH_API_KEY ?? deprecated("GENSEARCH_KEY", "GENSEARCH_API_KEY", process.env.GENSEARCH_KEY);

// The examples await their calls at the top level, so a failed call ended them with Node's
// dump of the ConnectError: ~40 lines of stack and detail bytes for a wrong key, and for a
// gateway not up only Node's "connect ECONNREFUSED", not the address and what to check that
// GensearchError words. Anything but a failed call keeps its stack: that is a bug. Either
// way the program ends at once, as Node ends it by default.
process.on("uncaughtException", (err) => {
  if (err instanceof ConnectError || err instanceof GensearchError) {
    const error = GensearchError.from(err);
    console.error(`${error.reason}: ${error.message}`);
  } else {
    console.error(err);
  }
  process.exit(1);
});
