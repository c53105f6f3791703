import { defineConfig } from "vitest/config";

// End-to-end tests of the built console in Debian's Chromium against a live mesh. They read
// CALLISTO_CONSOLE_URL (the gateway's /console/), CALLISTO_API_KEY and CALLISTO_SCREENSHOTS
// (where each test saves its final state); tests/e2e/test_console.py runs them in the suite.
export default defineConfig({
  // The tests drive the mesh through @callisto/client too: from its TypeScript source, as the
  // console's build does, so they need no built dist.
  resolve: { conditions: ["source"] },
  ssr: { resolve: { conditions: ["source"] } },
  test: {
    include: ["tests/**/*.test.ts"],
    environment: "node",
    // One browser at a time: the machine has two cores and the mesh's models need them.
    fileParallelism: false,
    testTimeout: 240_000,
    hookTimeout: 60_000,
    reporters: ["verbose"],
  },
});
