#!/usr/bin/env bash
# bench/run.sh [--short] [--reps N] [--hubs "livehub node-ws socketio"] [--scenarios "idle broadcast jobs churn"] [--stream] [--rt]
#
# Runs every scenario against each hub in turn (A B C A B C …), each run on a
# freshly started hub pinned to CPU 0 while the load generator runs on CPU 1,
# then prints a table of medians and ratios and the exact command lines.
# docs/BENCHMARKS.md explains the method and what each figure means.
#
# Needs: build/livehub (or LIVEHUB_BIN=…; skipped with a note when missing),
# Node 20 + npm (peers are installed with `npm ci` in bench/), gRPC C core,
# protobuf-c and OpenSSL headers (the load generator is built here).
# Exit status: 0 when every run passed its checks, 1 when one FAILED.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
SHORT=0
REPS=
HUBS="livehub node-ws socketio"
SCENARIOS="idle broadcast jobs churn"
PUB_ARGS=
RT=()
while [ $# -gt 0 ]; do
	case $1 in
	--short) SHORT=1 ;;
	--reps) REPS=$2; shift ;;
	--hubs) HUBS=$2; shift ;;
	--scenarios) SCENARIOS=$2; shift ;;
	--stream) PUB_ARGS=--stream ;; # publish over PublishStream instead of unary calls
	# Every hub and the load generator run SCHED_FIFO (chrt -f 10, needs
	# root or CAP_SYS_NICE), so that neither waits behind kernel threads or
	# each other's time slices: the latency figures then show the hubs, not
	# the scheduler (docs/BENCHMARKS.md "Tail latency and the scheduler").
	--rt) RT=(chrt -f 10) ;;
	-h|--help) sed -n '2,12p' "$0"; exit 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done

LIVEHUB_BIN=${LIVEHUB_BIN:-$ROOT/build/livehub}
# livehub wants an HS256 secret of at least 32 bytes.
SECRET=bench-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d " \n")
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$BENCH/results/$STAMP
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
COMMANDS=$OUT/commands.txt
: >"$RESULTS"
: >"$COMMANDS"

# Two CPUs: the hub gets CPU 0, the load generator CPU 1. With one CPU
# both share it and the figures say so (hub_cpu_pct and lg_cpu_pct).
if [ "$(nproc)" -ge 2 ]; then HUB_CPUS=0; LG_CPUS=1; else HUB_CPUS=0; LG_CPUS=0; fi

log() { printf '%s\n' "$*" >&2; }

build() {
	log "== building the load generator"
	make -s -C "$BENCH/loadgen" >/dev/null
	if [ ! -d "$BENCH/node_modules" ] || [ "$BENCH/package-lock.json" -nt "$BENCH/node_modules/.package-lock.json" ]; then
		log "== npm ci (bench/)"
		(cd "$BENCH" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
	fi
}

# Scenario table: id | scenario | loadgen arguments [| only these hubs].
# Rates are the same for every hub (the same offered load); a hub that
# cannot keep up shows it as latency and a lower deliveries/s, not as a
# different test.
scenarios() {
	local d=10 jd=10 cd=10
	if [ "$SHORT" = 1 ]; then d=5; jd=5; cd=5; fi
	for s in $SCENARIOS; do
		case $s in
		idle)
			echo "idle-1k|idle|--conns 1000 --settle 3"
			echo "idle-10k|idle|--conns 10000 --settle 5"
			[ "$SHORT" = 1 ] || echo "idle-19k|idle|--conns 19000 --workers 2 --settle 5"
			;;
		broadcast)
			echo "bcast-10k-64B|broadcast|--conns 10000 --foreign 100 --rate 4 --duration $d --payload 64"
			echo "bcast-10k-1KB|broadcast|--conns 10000 --foreign 100 --rate 4 --duration $d --payload 1024"
			# 20/s (200k deliveries/s offered) saturates one core: a backlog
			# forms and livehub writes several events per send. The Node
			# peers need up to ~50 s to deliver a 10 s run: a longer drain.
			echo "bcast-10k-64B-20|broadcast|--conns 10000 --foreign 100 --rate 20 --duration $d --payload 64 --drain 60"
			# livehub keeps up with 20/s using its whole core, so that row
			# can show at most the offered 200k/s per CPU-second. 100/s
			# (1M deliveries/s offered) is where livehub saturates; the
			# Node peers cannot run it (their publish calls time out behind
			# the backlog: a failed run), so it is livehub's alone.
			echo "bcast-10k-64B-100|broadcast|--conns 10000 --foreign 100 --rate 100 --duration $d --payload 64 --drain 60|livehub"
			;;
		jobs)
			# 2k/s is a load every hub keeps up with; 10k/s is the target.
			echo "jobs-10k-2k|jobs|--conns 10000 --foreign 100 --rate 2000 --duration $jd --payload 64"
			echo "jobs-10k|jobs|--conns 10000 --foreign 100 --rate 10000 --duration $jd --payload 64"
			;;
		churn)
			echo "churn-200|churn|--conns 200 --duration $cd --src-addrs 32"
			;;
		esac
	done
}

HUB_PID=
HUB_WS=
HUB_GRPC=

start_hub() {
	local name=$1 hublog=$2
	local -a cmd
	case $name in
	# The load generator opens thousands of connections from 8 addresses:
	# the per-address, per-user and rate limits are off, as the peers have none.
	livehub) cmd=("$LIVEHUB_BIN" --ws-host 127.0.0.1 --ws-port 0 --grpc-host 127.0.0.1 --grpc-port 0 --jwt-secret "$SECRET"
		--max-connections-per-ip 0 --max-connections-per-user 0 --rate-limit 0) ;;
	node-ws) cmd=(node "$BENCH/peers/node-ws-hub.mjs" --ws-port 0 --grpc-port 0 --jwt-secret "$SECRET") ;;
	socketio) cmd=(node "$BENCH/peers/socketio-hub.mjs" --ws-port 0 --grpc-port 0 --jwt-secret "$SECRET") ;;
	esac
	echo "${RT[*]}${RT:+ }taskset -c $HUB_CPUS ${cmd[*]}" >"$hublog.cmd"
	LIVEHUB_LOG_LEVEL=warn "${RT[@]}" taskset -c "$HUB_CPUS" "${cmd[@]}" >"$hublog" 2>&1 &
	HUB_PID=$!
	for _ in $(seq 1 150); do
		if grep -q 'livehub ready' "$hublog" 2>/dev/null; then
			local line
			line=$(grep -m1 'livehub ready' "$hublog")
			HUB_WS=$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' <<<"$line" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
			HUB_GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' <<<"$line" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
			return 0
		fi
		kill -0 "$HUB_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "!! $name did not print its ready line; log: $hublog"
	tail -5 "$hublog" >&2 || true
	stop_hub
	return 1
}

stop_hub() {
	if [ -n "$HUB_PID" ]; then
		kill "$HUB_PID" 2>/dev/null || true
		wait "$HUB_PID" 2>/dev/null || true
	fi
	HUB_PID=
}
trap stop_hub EXIT

hub_available() {
	case $1 in
	livehub) [ -x "$LIVEHUB_BIN" ] ;;
	node-ws|socketio) command -v node >/dev/null ;;
	*) return 1 ;;
	esac
}

FAILED=0
run_one() {
	local id=$1 scen=$2 args=$3 hub=$4 rep=$5
	local tag="$id.$hub.$rep" proto=ws
	[ "$hub" = socketio ] && proto=socketio
	start_hub "$hub" "$OUT/$tag.hub.log" || { echo "$id $hub $rep RESULT status=NOSTART" >>"$RESULTS"; FAILED=1; return; }
	sleep 0.5
	local -a lg=("${RT[@]}" taskset -c "$LG_CPUS" "$BENCH/loadgen/build/lg" "$scen" --ws "$HUB_WS" --grpc "$HUB_GRPC"
		--secret "$SECRET" --proto "$proto" --hub-pid "$HUB_PID" --label "$hub")
	# shellcheck disable=SC2206
	lg+=($args)
	case $scen in broadcast|jobs) [ -z "$PUB_ARGS" ] || lg+=("$PUB_ARGS") ;; esac
	printf '%s\t%s\t%s\n' "$id" "$hub" "$(cat "$OUT/$tag.hub.log.cmd") ; ${lg[*]}" >>"$COMMANDS"
	log "-- $tag (load $(cut -d' ' -f1 /proc/loadavg))"
	local rc=0
	"${lg[@]}" >"$OUT/$tag.lg.out" 2>&1 || rc=$?
	stop_hub
	local res
	res=$(grep '^RESULT' "$OUT/$tag.lg.out" | tail -1 || true)
	[ -n "$res" ] || res="RESULT status=ERROR rc=$rc"
	log "   ${res#RESULT }"
	echo "$id $hub $rep $res load1=$(cut -d' ' -f1 /proc/loadavg)" >>"$RESULTS"
	if [ "$rc" != 0 ]; then FAILED=1; grep '^checks' "$OUT/$tag.lg.out" >&2 || tail -3 "$OUT/$tag.lg.out" >&2; fi
}

if [ ${#RT[@]} -gt 0 ] && ! chrt -f 10 true 2>/dev/null; then
	log "!! --rt: chrt -f 10 is not allowed here (root or CAP_SYS_NICE needed)"
	exit 2
fi
build
[ -n "$REPS" ] || { if [ "$SHORT" = 1 ]; then REPS=1; else REPS=3; fi; }
ACTIVE=
for h in $HUBS; do
	if hub_available "$h"; then ACTIVE="$ACTIVE $h"; else log "!! $h not available (livehub: build it into $LIVEHUB_BIN or set LIVEHUB_BIN); skipped"; fi
done
log "== results in $OUT (hub on CPU $HUB_CPUS, load generator on CPU $LG_CPUS; load $(cat /proc/loadavg))"
while IFS='|' read -r id scen args only; do
	for rep in $(seq 1 "$REPS"); do
		for hub in $ACTIVE; do
			[ -z "$only" ] || [[ " $only " == *" $hub "* ]] || continue
			run_one "$id" "$scen" "$args" "$hub" "$rep"
		done
	done
done < <(scenarios)

{
	echo "Run $STAMP: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, kernel $(uname -r), node $(node --version 2>/dev/null || echo none)"
	echo "livehub: $LIVEHUB_BIN; rounds: $REPS; short: $SHORT; publishing: ${PUB_ARGS:-unary}; scheduling: ${RT[*]:-default}; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	/usr/bin/python3 "$BENCH/report.py" "$RESULTS" "$COMMANDS"
} | tee "$OUT/report.md"
[ "$FAILED" = 0 ] || { log "!! at least one run FAILED its checks (see $OUT)"; exit 1; }
