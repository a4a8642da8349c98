#!/usr/bin/env bash
# Tenant-isolation soak: runs tests/integration/test_isolation.py in rounds
# (a new random layout of 100 clients in 4 tenants each round, ~124k events
# a round) for DURATION seconds against the real binary, and prints the
# rounds, the events delivered and the seed. Any cross-tenant frame, lost
# or reordered event fails it.
#
#   scripts/isolation-soak.sh [DURATION_SECONDS]       (default 600)
#   LIVEHUB_BIN=build-asan/livehub scripts/isolation-soak.sh 300
#   ISOLATION_SEED=1234 scripts/isolation-soak.sh 60   (replay a layout)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-600}"
if ! [[ "$duration" =~ ^[0-9]+$ ]]; then
	echo "usage: $0 [DURATION_SECONDS]" >&2
	exit 2
fi
bin="${LIVEHUB_BIN:-build/livehub}"
if [ ! -x "$bin" ]; then
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build -j2 --target livehub
fi
LIVEHUB_BIN="$(realpath "$bin")" ISOLATION_SECONDS="$duration" \
	/usr/bin/python3 -m pytest tests/integration/test_isolation.py -q -s -p no:cacheprovider
