#!/usr/bin/env bash
# Packs the library as `npm publish` would, installs the tarball into a fresh
# project beside its peer dependencies (the versions this repository pins), and
# type-checks and runs scripts/package-smoke/consumer.ts there: the published
# entry points (`effect-sd-etcd`, `effect-sd-etcd/testing`) must resolve, their
# declarations must type-check a user's program, and the program must work on
# the in-memory etcd and on a real etcd spawned by the test kit.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/effect-sd-etcd-package.XXXXXX")"
trap 'rm -rf "$work"' EXIT

version_of() { node -p "require('$root/package.json').devDependencies['$1']"; }

cd "$root"
tarball="$(npm pack --silent --pack-destination "$work" | tail -n 1)"
echo "packed $tarball: $(tar -tzf "$work/$tarball" | wc -l) files"

# effect and @effect/platform are the application's (peer dependencies): as dependencies of their
# own, an application on another version would load two copies, whose tags and types do not meet
tar -xzf "$work/$tarball" -C "$work" package/package.json
node -e '
  const manifest = require(process.argv[1])
  const own = Object.keys(manifest.dependencies ?? {}).filter((name) => name === "effect" || name.startsWith("@effect/"))
  const peers = Object.keys(manifest.peerDependencies ?? {})
  if (own.length > 0 || !peers.includes("effect") || !peers.includes("@effect/platform")) {
    console.error(`effect packages must be peer dependencies: dependencies ${own.join(", ") || "none"}, peers ${peers.join(", ") || "none"}`)
    process.exit(1)
  }
' "$work/package/package.json"

mkdir "$work/app"
cp scripts/package-smoke/consumer.ts scripts/package-smoke/tsconfig.json "$work/app/"
cd "$work/app"
echo '{ "name": "package-smoke", "private": true, "type": "module" }' > package.json
npm install --silent --no-audit --no-fund --prefer-offline \
  "$work/$tarball" \
  "effect@$(version_of effect)" \
  "@effect/platform@$(version_of @effect/platform)" \
  "typescript@$(version_of typescript)" \
  "@types/node@$(version_of @types/node)"

# one copy of effect: the library uses the application's, not one of its own
copies="$(find node_modules -path '*/effect/package.json' -not -path '*/effect/*/effect/package.json' | wc -l)"
if [ "$copies" != "1" ]; then
  echo "expected one copy of effect in the application, found $copies:" >&2
  find node_modules -path '*/effect/package.json' >&2
  exit 1
fi

npx tsc -p tsconfig.json
node out/consumer.js
