#!/usr/bin/env bash
# `make test`: every check livehub ships with, in order.
#   1. format check (.clang-format), and buf lint / buf breaking over proto/
#   2. normal build + unit tests (ctest)
#   3. ASan+UBSan build + unit tests
#   4. integration tests (pytest, real gRPC and WebSocket peers) against the normal binary
#   5. the same integration tests against the ASan+UBSan binary (leaks fail the run)
#   6. the same against a TSan binary (any race report fails the run)
#   7. fuzz smoke: each libFuzzer target briefly over its seed corpus
#   8. clients (node unit): clients/js with a mock WebSocket (node --test);
#      clients (types): livehub.d.ts and react.d.ts compile (tsc --noEmit, strict)
#   9. browser (chromium): the demo page and the React hooks in real Chromium,
#      and the client in Node, against the normal binary (tests/browser)
# Ends with one line "checks: N passed, M failed"; exits non-zero when any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
PY=/usr/bin/python3
passed=0 failed=0 failures=()

stage() { # stage NAME COMMAND...
	local name=$1
	shift
	echo
	echo "=== $name"
	if "$@"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failures+=("$name")
		echo "=== $name: FAILED"
	fi
}

build() { # build DIR CMAKE_ARGS...
	local dir=$1
	shift
	cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null &&
		cmake --build "$dir" -j"$JOBS"
}

format_check() {
	clang-format --dry-run --Werror src/*.c src/*.h include/*.h tests/unit/*.c tests/support/*.h fuzz/*.c
}

integration() { # integration BINARY
	LIVEHUB_BIN=$1 $PY -m pytest tests/integration -q -p no:cacheprovider
}

browser_tests() { # browser_tests BINARY
	if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
		echo "no chromium at ${CHROMIUM:-/usr/bin/chromium} (scripts/deps.sh installs it)"
		return 1
	fi
	LIVEHUB_BIN=$1 node --experimental-websocket --test --test-concurrency=1 tests/browser/
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=23}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# gRPC's Debian libraries are not TSan-instrumented: tests/tsan.supp ignores
# reports whose frames are all inside them (never our own code).
export TSAN_OPTIONS=${TSAN_OPTIONS:-suppressions=$PWD/tests/tsan.supp:halt_on_error=0:exitcode=66}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp}

stage "format" format_check
stage "contract (buf lint, breaking)" bash tests/buf.sh
stage "build" build build
stage "unit" ctest --test-dir build --output-on-failure
stage "build (asan+ubsan)" build build-asan -DLH_SANITIZE=ON
stage "unit (asan+ubsan)" ctest --test-dir build-asan --output-on-failure
stage "integration" integration "$PWD/build/livehub"
stage "integration (asan+ubsan)" integration "$PWD/build-asan/livehub"
stage "build (tsan)" build build-tsan -DLH_TSAN=ON
stage "integration (tsan)" integration "$PWD/build-tsan/livehub"
stage "fuzz smoke" bash tests/fuzz.sh "${FUZZ_SMOKE_SECONDS:-15}"
stage "clients (node unit)" node --test clients/js/test/
stage "clients (types)" tests/npm/node_modules/.bin/tsc -p clients/js/test/tsconfig.json
stage "browser (chromium)" browser_tests "$PWD/build/livehub"

echo
for f in "${failures[@]}"; do echo "failed: $f"; done
echo "checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
