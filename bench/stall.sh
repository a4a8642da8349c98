#!/usr/bin/env bash
# bench/stall.sh [--reps N] [--stalled K] [-- extra lg arguments]
#
# Does one stalled client change the delivery of the others? Runs the same
# broadcast load against a fresh livehub with 0 and with K stalled
# connections (extra connections on the same tenant channel that stop
# reading once connected: lg --stalled), alternating, N times each, and
# prints the RESULT lines plus the hub's slow-consumer and dropped counters
# from /metrics. The measured connections must see every event in order
# (lg's checks) in both cases, and their latency should not move.
# docs/BENCHMARKS.md "One stalled client" has the figures.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=3
STALLED=10
while [ $# -gt 0 ]; do
	case $1 in
	--reps) REPS=$2; shift ;;
	--stalled) STALLED=$2; shift ;;
	--) shift; break ;;
	-h|--help) sed -n '2,12p' "$0"; exit 0 ;;
	*) echo "stall.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
LIVEHUB_BIN=${LIVEHUB_BIN:-$ROOT/build/livehub}
LG=$ROOT/bench/loadgen/build/lg
make -s -C "$ROOT/bench/loadgen" >/dev/null
SECRET=bench-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d " \n")
if [ "$(nproc)" -ge 2 ]; then HUB_CPUS=0; LG_CPUS=1; else HUB_CPUS=0; LG_CPUS=0; fi
# A 256 KiB send-queue bound so that the stalled clients are closed during
# the run (at the default 4 MiB they would only be after ~40 s of this load).
HUB_ENV=(LIVEHUB_LOG_LEVEL=warn LIVEHUB_SENDQ_MAX_BYTES=262144)
LG_ARGS=(broadcast --conns 200 --rate 100 --duration 15 --payload 4096 "$@")
LOG=$(mktemp -d)
HUB_PID=
stop_hub() { [ -z "$HUB_PID" ] || { kill "$HUB_PID" 2>/dev/null || true; wait "$HUB_PID" 2>/dev/null || true; }; HUB_PID=; }
trap 'stop_hub; rm -rf "$LOG"' EXIT

run() {
	local stalled=$1
	env "${HUB_ENV[@]}" taskset -c $HUB_CPUS "$LIVEHUB_BIN" --ws-host 127.0.0.1 --ws-port 0 \
		--grpc-host 127.0.0.1 --grpc-port 0 --jwt-secret "$SECRET" >"$LOG/hub.out" 2>"$LOG/hub.err" &
	HUB_PID=$!
	for _ in $(seq 1 100); do grep -q 'livehub ready' "$LOG/hub.out" && break; sleep 0.1; done
	local line ws grpc
	line=$(grep -m1 'livehub ready' "$LOG/hub.out")
	ws=$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' <<<"$line")
	grpc=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' <<<"$line")
	local cmd=(taskset -c $LG_CPUS "$LG" "${LG_ARGS[@]}" --stalled "$stalled" --ws "$ws" --grpc "$grpc"
		--secret "$SECRET" --hub-pid "$HUB_PID" --label "livehub-stalled$stalled")
	"${cmd[@]}" 2>/dev/null | grep '^RESULT' || echo "RESULT stalled=$stalled status=lg-failed"
	local m
	m=$(curl -s "http://$ws/metrics")
	printf '  slow_consumer_disconnects=%s messages_dropped=%s\n' \
		"$(awk '/^livehub_slow_consumer_disconnects_total /{print $2}' <<<"$m")" \
		"$(awk '/^livehub_messages_dropped_total /{print $2}' <<<"$m")"
	stop_hub
}

echo "# env ${HUB_ENV[*]} taskset -c $HUB_CPUS livehub …; taskset -c $LG_CPUS lg ${LG_ARGS[*]} --stalled {0,$STALLED}"
for _ in $(seq 1 "$REPS"); do
	run 0
	run "$STALLED"
done
