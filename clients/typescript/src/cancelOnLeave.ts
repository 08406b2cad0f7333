// Leaving a server stream with `break` (or `return`, or a throw) out of `for await`
// cancels its call. Connect's iterable alone does not: it has no return(), so the call
// runs on, the server generating (and the LLM paying for) the rest, until it ends by
// itself; only the call's `signal` cancels it (docs/clients.md#deadlines-leaving-a-stream-closing).
//
//   for await (const { event } of cancelOnLeave((signal) => gateway.streamAsk(request, { signal }))) {
//     if (enough) break;   // cancels the StreamAsk
//   }

/** Starts the call with a signal of its own, aborted when the loop is left (and when
 * `signal`, yours, aborts). */
export async function* cancelOnLeave<T>(
  start: (signal: AbortSignal) => AsyncIterable<T>,
  signal?: AbortSignal,
): AsyncGenerator<T, void, undefined> {
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal?.reason);
  if (signal?.aborted) onAbort();
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    yield* start(controller.signal);
  } finally {
    signal?.removeEventListener("abort", onAbort);
    controller.abort(); // a call already ended is not touched
  }
}
