#!/usr/bin/env node
// Generate the TypeScript code for proto/ (and the vendored google.rpc error protos) into
// src/gen with buf and protoc-gen-es (buf.gen.yaml), or check that the committed code is current.
//
//   npm run generate          regenerate src/gen (after any change in proto/)
//   npm run generate:check    exit 1 when src/gen differs from what proto/ generates (drift)
//
// buf is the one tools/ installs (scripts/test does it; or `cd tools && npm install`).
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, cpSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const buf = join(here, "..", "..", "tools", "node_modules", ".bin", "buf");
const plugin = join(here, "node_modules", ".bin", "protoc-gen-es");
const committed = join(here, "src", "gen");
const regenerate = "npm --prefix clients/typescript run generate";

function fail(message) {
  console.error(message);
  process.exit(1);
}

function files(root) {
  const out = new Map();
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else out.set(relative(root, path), readFileSync(path));
    }
  };
  if (existsSync(root)) walk(root);
  return out;
}

if (!existsSync(buf)) fail(`buf is missing: run (cd tools && npm install) first (scripts/test does)`);
if (!existsSync(plugin)) fail(`protoc-gen-es is missing: run (cd clients/typescript && npm ci) first`);

const out = mkdtempSync(join(tmpdir(), "statekeeper-ts-gen-"));
try {
  execFileSync(buf, ["generate", "--output", out], { cwd: here, stdio: "inherit" });
  const fresh = files(join(out, "src", "gen"));
  if (process.argv.includes("--check")) {
    const current = files(committed);
    const stale = [...new Set([...fresh.keys(), ...current.keys()])]
      .filter((name) => !(fresh.has(name) && current.has(name) && fresh.get(name).equals(current.get(name))))
      .sort();
    if (stale.length > 0) {
      fail(`TypeScript generated code is out of date: ${stale.join(", ")}; run ${regenerate}`);
    }
    console.log(`TypeScript generated code is up to date (${fresh.size} files)`);
  } else {
    rmSync(committed, { recursive: true, force: true });
    cpSync(join(out, "src", "gen"), committed, { recursive: true });
    console.log(`generated ${fresh.size} files into ${relative(process.cwd(), committed) || "."}`);
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}
