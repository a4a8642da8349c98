#!/usr/bin/env bash
# Installs the Debian packages livehub needs to build, run and test, when
# they are missing. Idempotent: with everything present it only asks dpkg.
#   scripts/deps.sh          build + run + test dependencies
#   scripts/deps.sh --run    only what `make run` needs
set -euo pipefail

build_pkgs=(cmake make gcc pkg-config protobuf-compiler protobuf-c-compiler libprotobuf-c-dev
	libgrpc-dev libwebsockets-dev libuv1-dev libjwt-dev libjansson-dev libssl-dev libcmocka-dev libhiredis-dev)
test_pkgs=(clang libclang-rt-14-dev clang-format python3 python3-grpcio python3-grpc-tools
	python3-websockets python3-pytest python3-jwt curl chromium redis-server)

pkgs=("${build_pkgs[@]}")
[ "${1:-}" = "--run" ] || pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[ "$status" = "install ok installed" ] || missing+=("$p")
done
# Node tools the tests use (buf: lint, breaking, curl): npm ci from the
# lockfile in tests/npm when node_modules is missing or older than it.
npm_tools() {
	[ "${1:-}" = "--run" ] && return 0
	local dir tests_npm
	dir=$(cd "$(dirname "$0")/.." && pwd)
	tests_npm="$dir/tests/npm"
	if [ -f "$tests_npm/node_modules/.package-lock.json" ] &&
		[ ! "$tests_npm/package-lock.json" -nt "$tests_npm/node_modules/.package-lock.json" ]; then
		return 0
	fi
	echo "deps: npm ci in tests/npm"
	# playwright-core drives Debian's chromium: never download a browser.
	(cd "$tests_npm" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
}

if [ "${1:-}" != "--run" ] && ! command -v npm >/dev/null; then
	missing_npm=(nodejs npm)
else
	missing_npm=()
fi
missing+=("${missing_npm[@]}")
if [ ${#missing[@]} -eq 0 ]; then
	npm_tools "${1:-}"
	exit 0
fi

echo "deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
npm_tools "${1:-}"
