// Bundles the console into dist/: index.html + assets/app-<hash>.js + assets/style-<hash>.css.
// The server serves dist/index.html at "/" (no-cache) and dist/assets/* as static files,
// so content-hashed asset names are safe to cache.
//
// A running server may be serving dist/ while this runs: the new assets are written
// next to the old ones, index.html is replaced atomically, and only then are the
// previous build's files removed.
import { build } from "esbuild";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(root, "dist");
const assets = path.join(dist, "assets");
await mkdir(assets, { recursive: true });

const result = await build({
  absWorkingDir: root,
  entryPoints: { app: "src/main.ts", style: "src/styles.css" },
  outdir: "dist/assets",
  entryNames: "[name]-[hash]",
  bundle: true,
  format: "esm",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  minify: true,
  sourcemap: "linked",
  legalComments: "none",
  metafile: true,
  logLevel: "warning",
});

const outputs = {};
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  if (meta.entryPoint === "src/main.ts") outputs.js = path.basename(file);
  if (meta.entryPoint === "src/styles.css") outputs.css = path.basename(file);
}
if (!outputs.js || !outputs.css) throw new Error(`esbuild outputs not found: ${JSON.stringify(outputs)}`);

const template = await readFile(path.join(root, "index.html"), "utf8");
const html = template.replace("%STYLE%", `/assets/${outputs.css}`).replace("%SCRIPT%", `/assets/${outputs.js}`);
await writeFile(path.join(dist, "index.html.tmp"), html);
await rename(path.join(dist, "index.html.tmp"), path.join(dist, "index.html"));

const current = new Set(Object.keys(result.metafile.outputs).map((file) => path.basename(file)));
for (const name of await readdir(assets)) {
  if (!current.has(name)) await rm(path.join(assets, name), { force: true });
}
console.log(`console built: dist/index.html, dist/assets/${outputs.js}, dist/assets/${outputs.css}`);
