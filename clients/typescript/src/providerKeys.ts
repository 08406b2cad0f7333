// A caller's own provider keys, as the Python client's llm_keys and key_urls send them
// (docs/clients.md#your-own-provider-keys): each key as x-<provider>-api-key, and the URL your
// embedding / rerank key is meant for as x-embedding-base-url / x-rerank-base-url
// (retrieval sends that key to a URL a collection's admin set only when the two agree;
// otherwise PERMISSION_DENIED, reason KEY_DESTINATION_UNCONFIRMED).
import type { Interceptor } from "@connectrpc/connect";

export interface ProviderKeysOptions {
  /** Keys by provider: `{ openai: "sk-…", embedding: "…", rerank: "…" }`, sent as x-<provider>-api-key. */
  llmKeys?: Record<string, string>;
  /** The base URL your embedding / rerank key is meant for: x-embedding-base-url, x-rerank-base-url. */
  keyUrls?: { embedding?: string; rerank?: string };
}

// The services' provider names (services/common/model_names.py; case is folded): each
// must make a header name.
const PROVIDER = /^[a-z][a-z0-9_-]{0,62}$/;
const KEY_URL_KINDS = ["embedding", "rerank"];

/** gRPC metadata values are printable ASCII: refused here, naming the option and never
 * the value (a key), rather than by the HTTP/2 layer at the first call. */
function metadataValue(value: string, what: string): string {
  if (!/^[\x20-\x7e]*$/.test(value)) {
    throw new TypeError(`${what} must be printable ASCII (it travels as gRPC metadata): `
      + "check for a pasted character such as '\u2026' or a line break");
  }
  return value;
}

/** The headers the options make, checked (a TypeError names a bad option). */
export function providerKeyHeaders(options: ProviderKeysOptions): [string, string][] {
  const headers: [string, string][] = [];
  for (const [provider, key] of Object.entries(options.llmKeys ?? {}).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (!PROVIDER.test(provider.toLowerCase())) {
      throw new TypeError(`llmKeys: ${JSON.stringify(provider)} is no provider name (e.g. "openai")`);
    }
    if (headers.some(([name]) => name === `x-${provider.toLowerCase()}-api-key`)) {
      throw new TypeError(`llmKeys: ${JSON.stringify(provider)} names a provider twice (case is folded)`);
    }
    headers.push([`x-${provider.toLowerCase()}-api-key`, metadataValue(key, `llmKeys[${JSON.stringify(provider)}]`)]);
  }
  for (const [kind, url] of Object.entries(options.keyUrls ?? {}).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (url === undefined) continue;
    if (!KEY_URL_KINDS.includes(kind)) {
      throw new TypeError(`keyUrls: ${JSON.stringify(kind)} must be "embedding" or "rerank"`);
    }
    headers.push([`x-${kind}-base-url`, metadataValue(url, `keyUrls[${JSON.stringify(kind)}]`)]);
  }
  return headers;
}

/** An interceptor adding the keys and key URLs to every call, streams included:
 * `createGrpcTransport({ baseUrl, interceptors: [auth, providerKeys({ llmKeys, keyUrls })] })`.
 * Checks the options at once (a TypeError names a bad one). */
export function providerKeys(options: ProviderKeysOptions): Interceptor {
  const headers = providerKeyHeaders(options);
  return (next) => (req) => {
    for (const [name, value] of headers) req.header.set(name, value);
    return next(req);
  };
}
