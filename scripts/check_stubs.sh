#!/usr/bin/env bash
# Fails when the committed stubs differ from what protos/ generates now.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/gen_protos.sh "$tmp"
status=0
for f in "$tmp"/entitlements/v1/*; do
  name=clients/python/entitlements/v1/$(basename "$f")
  if ! cmp -s "$f" "$name"; then
    echo "stale generated stub: $name (run 'make protos' and commit)" >&2
    status=1
  fi
done
for f in clients/python/entitlements/v1/*_pb2*.py*; do
  [ -e "$tmp/${f#clients/python/}" ] || { echo "generated stub without a proto: $f" >&2; status=1; }
done
exit $status
