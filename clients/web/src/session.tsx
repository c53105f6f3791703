import { CallistoClient } from "@callisto/client";
import { createContext, type ReactNode, useCallback, useContext, useEffect, useState } from "react";

/** Session storage only: the key lives as long as the tab, never on disk or in another tab. */
const KEY_STORAGE = "callisto.apiKey";

export interface Session {
  client: CallistoClient;
  tenant: string;
  signOut: () => void;
}

const SessionContext = createContext<Session | null>(null);

/** The signed-in session; pages render only inside one. */
export function useSession(): Session {
  const session = useContext(SessionContext);
  if (session === null) throw new Error("useSession outside a signed-in console");
  return session;
}

/** A client for this page's own origin (the gateway that served it). */
export function clientFor(apiKey: string): CallistoClient {
  return new CallistoClient({ baseUrl: window.location.origin, apiKey });
}

async function signIn(apiKey: string): Promise<Session> {
  const client = clientFor(apiKey);
  const { tenant } = await client.getCaller();
  return {
    client,
    tenant,
    signOut: () => {
      sessionStorage.removeItem(KEY_STORAGE);
      window.location.reload();
    },
  };
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function SessionGate({ children }: { children: ReactNode }) {
  const [session, setSession] = useState<Session | null>(null);
  const [checking, setChecking] = useState(() => sessionStorage.getItem(KEY_STORAGE) !== null);
  const [error, setError] = useState("");
  const [key, setKey] = useState("");

  const attempt = useCallback(async (apiKey: string) => {
    setError("");
    try {
      const started = await signIn(apiKey.trim());
      sessionStorage.setItem(KEY_STORAGE, apiKey.trim());
      setSession(started);
    } catch (caught) {
      sessionStorage.removeItem(KEY_STORAGE);
      setError(`Sign-in failed: ${errorText(caught)}`);
    } finally {
      setChecking(false);
    }
  }, []);

  useEffect(() => {
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved !== null) void attempt(saved);
  }, [attempt]);

  if (session !== null) {
    return <SessionContext.Provider value={session}>{children}</SessionContext.Provider>;
  }
  if (checking) return <p className="centered" role="status">Signing in…</p>;
  return (
    <main className="sign-in">
      <h1>Callisto console</h1>
      <form
        onSubmit={(event) => {
          event.preventDefault();
          void attempt(key);
        }}
      >
        <label htmlFor="api-key">API key</label>
        <input
          id="api-key"
          name="api-key"
          type="password"
          autoComplete="off"
          spellCheck={false}
          placeholder="cal_…"
          required
          value={key}
          onChange={(event) => setKey(event.target.value)}
        />
        <p className="hint">
          The key printed by <code>callisto up</code>; it decides your tenant and stays in this
          tab only.
        </p>
        <button type="submit">Sign in</button>
        {error && (
          <p className="error" role="alert">
            {error}
          </p>
        )}
      </form>
    </main>
  );
}
