#!/usr/bin/env bash
# `buf breaking` for protos/ against the previous commit (HEAD~1): in CI the checkout is main
# with the submitted commit at HEAD, so this compares the contract with main before it.
# BUF_BREAKING_AGAINST=<git ref> compares with another ref (e.g. a tag or origin/main).
# Without a previous commit (a shallow `--depth 1` clone, or the first commit) it compares
# with the newest tag if there is one, else it says so and passes: there is nothing to break.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-tools/node_modules/.bin/buf}
ref=${BUF_BREAKING_AGAINST:-}
if [ -z "$ref" ]; then
  if git rev-parse --verify --quiet 'HEAD~1^{commit}' >/dev/null; then
    ref=HEAD~1
  elif tag=$(git for-each-ref --sort=-creatordate --count=1 --format='%(refname:short)' \
      refs/tags) && [ -n "$tag" ]; then
    ref=$tag
  else
    echo "buf breaking: skipped, no previous commit or tag to compare with (shallow clone?" \
      "fetch with --depth 2, or set BUF_BREAKING_AGAINST)" >&2
    exit 0
  fi
fi
git rev-parse --verify --quiet "$ref^{commit}" >/dev/null \
  || { echo "buf breaking: no commit $ref" >&2; exit 2; }
# subdir=protos: the module root, whether or not that commit had a buf.yaml yet.
"$BUF" breaking protos --against ".git#ref=$ref,subdir=protos"
echo "buf breaking: protos/ compatible with $ref"
