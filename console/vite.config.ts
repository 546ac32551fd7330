import { defineConfig } from "vite";

// Everything the strict CSP needs (docs/console.md): files under /console/assets/ with content
// hashes, no inline <script> or <style>, no data: URIs, no module-preload polyfill snippet.
export default defineConfig({
  base: "/console/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    target: "es2022",
  },
});
