// What the tests share: the live mesh's address and keys, and a fetch that drops connections.
import { CallistoClient, type ClientOptions } from "../src/index.js";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/e2e/test_typescript_client.py sets it)`);
  return value;
}

export const GATEWAY = required("CALLISTO_GATEWAY_URL");
export const KEY = required("CALLISTO_API_KEY");
export const OTHER_KEY = required("CALLISTO_OTHER_API_KEY");

export function client(options: Partial<ClientOptions> = {}): CallistoClient {
  return new CallistoClient({ baseUrl: GATEWAY, apiKey: KEY, ...options });
}

/**
 * A real fetch whose response bodies of the first `drops` calls to a path containing `path`
 * break after `bytes` bytes, as a connection that goes away mid-stream does. Counts the calls.
 */
export function droppingFetch(path: string, bytes: number, drops = 1) {
  const calls: string[] = [];
  let dropped = 0;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    calls.push(url);
    const response = await globalThis.fetch(input, init);
    if (!url.includes(path) || dropped >= drops || response.body === null) return response;
    dropped += 1;
    const reader = response.body.getReader();
    let passed = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) return controller.close();
        if (passed + value.byteLength >= bytes) {
          controller.enqueue(value.slice(0, Math.max(0, bytes - passed)));
          await reader.cancel();
          controller.error(new TypeError("network error: the connection was reset"));
          return;
        }
        passed += value.byteLength;
        controller.enqueue(value);
      },
      cancel: (reason) => reader.cancel(reason),
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  return { fetch, calls };
}
