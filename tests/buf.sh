#!/usr/bin/env bash
# Contract hygiene for proto/ (a stage of `make test`):
#   buf lint      the STANDARD rules (buf.yaml)
#   buf breaking  against the newest release tag v*, once one exists: a
#                 field renumbered, removed or retyped fails the run.
# buf comes from npm (tests/npm, installed by scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=tests/npm/node_modules/.bin/buf
if [ ! -x "$BUF" ]; then
	echo "buf: $BUF is missing; run scripts/deps.sh" >&2
	exit 1
fi
"$BUF" lint
echo "buf lint: clean"
tag=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true)
if [ -z "$tag" ]; then
	echo "buf breaking: skipped (no v* tag yet to compare with)"
	exit 0
fi
"$BUF" breaking --against ".git#tag=$tag,subdir=proto"
echo "buf breaking: no breaking change since $tag"
