#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for SECONDS (default 300)
# over a scratch copy of its seed corpus in fuzz/corpus/NAME. Crashes are
# written to build-fuzz/artifacts/ and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
CC=clang cmake -S . -B build-fuzz -DLH_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"${JOBS:-$(nproc)}" --target fuzz_pbjson fuzz_client_frame fuzz_reflection fuzz_token fuzz_apikeys fuzz_redis
mkdir -p build-fuzz/artifacts
for t in fuzz_pbjson fuzz_client_frame fuzz_reflection fuzz_token fuzz_apikeys fuzz_redis; do
	name=${t#fuzz_}
	work=build-fuzz/corpus-$name
	mkdir -p "$work"
	echo "fuzz: $t for ${secs}s"
	./build-fuzz/$t -max_total_time="$secs" -print_final_stats=0 \
		-artifact_prefix=build-fuzz/artifacts/ "$work" "fuzz/corpus/$name" 2>&1 | tail -3
done
echo "fuzz: no crashes"
