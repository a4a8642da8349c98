#!/usr/bin/env bash
# Installs the Debian packages livehub needs to build, run and test, when
# they are missing. Idempotent: with everything present it only asks dpkg.
#   scripts/deps.sh          build + run + test dependencies
#   scripts/deps.sh --run    only what `make run` needs
set -euo pipefail

build_pkgs=(cmake make gcc pkg-config protobuf-compiler protobuf-c-compiler libprotobuf-c-dev
	libgrpc-dev libwebsockets-dev libjwt-dev libjansson-dev libssl-dev libcmocka-dev)
test_pkgs=(clang libclang-rt-14-dev clang-format python3 python3-grpcio python3-grpc-tools
	python3-websockets python3-pytest python3-jwt curl)

pkgs=("${build_pkgs[@]}")
[ "${1:-}" = "--run" ] || pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[ "$status" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
