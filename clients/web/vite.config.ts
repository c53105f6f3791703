import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The console is static files the gateway serves under /console/ on its own origin: every asset
// is bundled (no CDN), file names carry content hashes (cached for good; index.html never is).
export default defineConfig({
  base: "/console/",
  plugins: [react()],
  resolve: {
    // Build @callisto/client from its TypeScript source rather than its published dist.
    conditions: ["source"],
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    // One bundle per entry is plenty for a console; the gateway routes every emitted file.
    chunkSizeWarningLimit: 2048,
  },
  server: {
    // The sample workflow is bundled from deploy/samples (outside this workspace).
    fs: { allow: ["..", "../../deploy/samples"] },
    // `npm run dev` against a running mesh: calls go to the gateway (CALLISTO_GATEWAY).
    proxy: {
      "^/(callisto|grpc)\\.": process.env.CALLISTO_GATEWAY ?? "http://127.0.0.1:8080",
    },
  },
});
