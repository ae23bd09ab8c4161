#!/usr/bin/env bash
# Fails when the committed TypeScript code (clients/typescript/src/gen) differs from what
# buf.gen.yaml generates from protos/ now.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-tools/node_modules/.bin/buf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$BUF" generate --output "$tmp"
if ! diff -r "$tmp/clients/typescript/src/gen" clients/typescript/src/gen >/dev/null; then
  diff -r "$tmp/clients/typescript/src/gen" clients/typescript/src/gen | head -20 >&2 || true
  echo "stale generated TypeScript: clients/typescript/src/gen (run 'make ts-gen' and commit)" >&2
  exit 1
fi
