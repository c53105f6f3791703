import { defineConfig } from "vitest/config";

// The client's tests run in Node against a live mesh: CALLISTO_GATEWAY_URL, CALLISTO_API_KEY and
// CALLISTO_OTHER_API_KEY (another tenant's); tests/e2e/test_typescript_client.py sets them.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
    testTimeout: 120_000,
    reporters: ["verbose"],
  },
});
