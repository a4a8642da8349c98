#!/usr/bin/env bash
# bench/cluster.sh [--reps N] [--nodes "mem 1 2 3"] [--scenarios "broadcast jobs"] [--duration S]
#                  [--conns N] [--bcast-rate R] [--jobs-rate R] [--hub-cpus LIST] [--lg-cpus LIST]
#
# livehub scaled out over Redis (issue 7): for each node count, a fresh
# redis-server (own port and directory, no persistence) and N livehub nodes
# with LIVEHUB_REDIS_URL; the load generator spreads its WebSocket
# connections round-robin over the N nodes (lg --ws A,B,C) and publishes to
# node 1 only (--grpc), so with N nodes (N-1)/N of the deliveries cross a
# node boundary through Redis. "mem" is the reference: one node, no Redis
# (the memory broker, `make run`). Runs alternate (every node count once,
# then again) and the table shows medians.
#
# Pinning (this machine has 2 CPUs): every livehub node and redis-server
# share --hub-cpus (default CPU 0), the load generator gets --lg-cpus
# (default CPU 1). So more nodes do NOT mean more CPU here: the figures show
# what scale-out costs per delivery (hub CPU-s summed over the nodes, and
# redis-server's CPU), and the cross-node latency, not a speed-up.
#
# Needs a livehub built with the Redis broker (LIVEHUB_BIN, default
# build/livehub), redis-server (scripts/deps.sh), gRPC C core, protobuf-c
# and OpenSSL headers (the load generator is built here).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
REPS=3
NODES="mem 1 2 3"
SCENARIOS="broadcast jobs"
DURATION=10
CONNS=6000
BCAST_RATE=8
JOBS_RATE=3000
HUB_CPUS=0
LG_CPUS=1
[ "$(nproc)" -ge 2 ] || LG_CPUS=0
while [ $# -gt 0 ]; do
	case $1 in
	--reps) REPS=$2; shift ;;
	--nodes) NODES=$2; shift ;;
	--scenarios) SCENARIOS=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	--conns) CONNS=$2; shift ;;
	--bcast-rate) BCAST_RATE=$2; shift ;;
	--jobs-rate) JOBS_RATE=$2; shift ;;
	--hub-cpus) HUB_CPUS=$2; shift ;;
	--lg-cpus) LG_CPUS=$2; shift ;;
	-h|--help) sed -n '2,22p' "$0"; exit 0 ;;
	*) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done

LIVEHUB_BIN=${LIVEHUB_BIN:-$ROOT/build/livehub}
REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}
[ -x "$LIVEHUB_BIN" ] || { echo "cluster.sh: no livehub at $LIVEHUB_BIN (build it or set LIVEHUB_BIN)" >&2; exit 2; }
[ -x "$REDIS_SERVER" ] || { echo "cluster.sh: no redis-server (scripts/deps.sh installs it)" >&2; exit 2; }
SECRET=bench-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d " \n")
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$BENCH/results/cluster-$STAMP
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
COMMANDS=$OUT/commands.txt
: >"$RESULTS"
: >"$COMMANDS"

log() { printf '%s\n' "$*" >&2; }

free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Everything this script started, by PID, so that it stops exactly those.
REDIS_PID=
REDIS_DIR=
HUB_PIDS=()

stop_all() {
	local p
	for p in "${HUB_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${HUB_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	HUB_PIDS=()
	if [ -n "$REDIS_PID" ]; then
		kill "$REDIS_PID" 2>/dev/null || true
		wait "$REDIS_PID" 2>/dev/null || true
	fi
	REDIS_PID=
	[ -z "$REDIS_DIR" ] || rm -rf "$REDIS_DIR"
	REDIS_DIR=
}
trap stop_all EXIT

start_redis() {
	local port
	REDIS_DIR=$(mktemp -d /tmp/lh-bench-redis-XXXXXX)
	for _ in 1 2 3 4 5; do
		port=$(free_port)
		taskset -c "$HUB_CPUS" "$REDIS_SERVER" --bind 127.0.0.1 --port "$port" --dir "$REDIS_DIR" \
			--save "" --appendonly no --daemonize no --protected-mode no \
			--logfile "$REDIS_DIR/redis.log" &
		REDIS_PID=$!
		for _ in $(seq 1 100); do
			if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
				REDIS_URL=redis://127.0.0.1:$port
				return 0
			fi
			kill -0 "$REDIS_PID" 2>/dev/null || break
			sleep 0.05
		done
		kill "$REDIS_PID" 2>/dev/null || true
		wait "$REDIS_PID" 2>/dev/null || true
		REDIS_PID=
	done
	log "!! redis-server did not start"
	return 1
}

WS_LIST=
GRPC1=
start_nodes() { # start_nodes N TAG (N=0: one node, memory broker)
	local n=$1 tag=$2 k count=$1
	[ "$n" = 0 ] && count=1
	WS_LIST=
	GRPC1=
	for k in $(seq 1 "$count"); do
		local hublog=$OUT/$tag.node$k.log
		local -a env=(LIVEHUB_LOG_LEVEL=warn)
		[ "$n" = 0 ] || env+=(LIVEHUB_REDIS_URL="$REDIS_URL" LIVEHUB_NODE_ID="node$k")
		# The load generator opens thousands of connections from 8 addresses:
		# the per-address, per-user and rate limits are off.
		local -a cmd=("$LIVEHUB_BIN" --ws-host 127.0.0.1 --ws-port 0 --grpc-host 127.0.0.1 --grpc-port 0
			--jwt-secret "$SECRET" --max-connections-per-ip 0 --max-connections-per-user 0 --rate-limit 0)
		echo "${env[*]} taskset -c $HUB_CPUS ${cmd[*]}" >>"$OUT/$tag.cmd"
		env "${env[@]}" taskset -c "$HUB_CPUS" "${cmd[@]}" >"$hublog" 2>&1 &
		HUB_PIDS+=($!)
		local ok=0
		for _ in $(seq 1 150); do
			if grep -q 'livehub ready' "$hublog" 2>/dev/null; then ok=1; break; fi
			kill -0 "${HUB_PIDS[-1]}" 2>/dev/null || break
			sleep 0.1
		done
		if [ "$ok" = 0 ]; then
			log "!! node $k did not print its ready line; log: $hublog"
			tail -5 "$hublog" >&2 || true
			return 1
		fi
		local line ws grpc
		line=$(grep -m1 'livehub ready' "$hublog")
		ws=$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' <<<"$line" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
		grpc=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' <<<"$line" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
		WS_LIST=${WS_LIST:+$WS_LIST,}$ws
		[ -n "$GRPC1" ] || GRPC1=$grpc
	done
	# Ready means Redis is connected too (/readyz 200 on every node).
	local u
	for u in ${WS_LIST//,/ }; do
		for _ in $(seq 1 100); do
			[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$u/readyz")" = 200 ] && break
			sleep 0.1
		done
	done
}

scenario_args() {
	local foreign=$((CONNS / 100))
	case $1 in
	# Every publication goes to every connection ($tenant): each node
	# receives each publication once from Redis and fans it out locally.
	broadcast) echo "--conns $CONNS --foreign $foreign --rate $BCAST_RATE --duration $DURATION --payload 64" ;;
	# One job channel per connection: each publication has one subscriber,
	# on one node; only that node subscribes to its channel in Redis.
	jobs) echo "--conns $CONNS --foreign $foreign --rate $JOBS_RATE --duration $DURATION --payload 64" ;;
	esac
}

FAILED=0
run_one() {
	local scen=$1 nodes=$2 rep=$3
	local n=$nodes label
	[ "$nodes" = mem ] && n=0
	label=$([ "$n" = 0 ] && echo "mem" || echo "redis-${n}n")
	local tag=$scen.$label.$rep
	if [ "$n" != 0 ]; then start_redis || { FAILED=1; return; }; fi
	if ! start_nodes "$n" "$tag"; then
		echo "$scen $label $rep RESULT status=NOSTART" >>"$RESULTS"
		FAILED=1
		stop_all
		return
	fi
	sleep 0.5
	local pids
	pids=$(IFS=,; echo "${HUB_PIDS[*]}")
	local -a lg=(taskset -c "$LG_CPUS" "$BENCH/loadgen/build/lg" "$scen" --ws "$WS_LIST" --grpc "$GRPC1"
		--pub-hub 0 --secret "$SECRET" --hub-pid "$pids" --label "$label")
	[ -z "$REDIS_PID" ] || lg+=(--redis-pid "$REDIS_PID")
	# shellcheck disable=SC2207
	lg+=($(scenario_args "$scen"))
	printf '%s\t%s\t%s\n' "$scen" "$label" "${lg[*]}" >>"$COMMANDS"
	log "-- $tag (load $(cut -d' ' -f1 /proc/loadavg))"
	local rc=0
	"${lg[@]}" >"$OUT/$tag.lg.out" 2>&1 || rc=$?
	stop_all
	local res
	res=$(grep '^RESULT' "$OUT/$tag.lg.out" | tail -1 || true)
	[ -n "$res" ] || res="RESULT status=ERROR rc=$rc"
	log "   ${res#RESULT }"
	echo "$scen $label $rep $res load1=$(cut -d' ' -f1 /proc/loadavg)" >>"$RESULTS"
	if [ "$rc" != 0 ]; then FAILED=1; grep '^checks' "$OUT/$tag.lg.out" >&2 || tail -3 "$OUT/$tag.lg.out" >&2; fi
}

log "== building the load generator"
make -s -C "$BENCH/loadgen" >/dev/null
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "== results in $OUT (hubs and redis-server on CPU $HUB_CPUS, load generator on CPU $LG_CPUS; load $LOAD_START)"
for rep in $(seq 1 "$REPS"); do
	for scen in $SCENARIOS; do
		for nodes in $NODES; do run_one "$scen" "$nodes" "$rep"; done
	done
done

{
	echo "Run $STAMP: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, kernel $(uname -r)"
	echo "livehub: $LIVEHUB_BIN; redis: $("$REDIS_SERVER" --version | cut -d' ' -f3); rounds: $REPS; hubs+redis on CPU $HUB_CPUS, lg on CPU $LG_CPUS"
	echo "load average at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	/usr/bin/python3 - "$RESULTS" <<'EOF'
import collections, statistics, sys
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    scen, label, rep, rest = line.split(" ", 3)
    kv = dict(f.split("=", 1) for f in rest.split() if "=" in f)
    rows.setdefault((scen, label), []).append(kv)

def med(runs, key, scale=1.0):
    vals = [float(r[key]) * scale for r in runs if key in r and r.get("status") == "OK"]
    return "%.0f" % statistics.median(vals) if vals else "-"

def redis_pct(runs):
    vals = [100 * float(r["redis_cpu_s"]) / float(r["wall_s"]) for r in runs
            if "redis_cpu_s" in r and r.get("status") == "OK"]
    return "%.0f" % statistics.median(vals) if vals else "-"

print("| scenario | nodes | runs ok | deliveries/s | deliveries per hub CPU-s | hub CPU % (all nodes) "
      "| redis CPU % | p50 µs | p99 µs | cross-node p50 µs | cross-node p99 µs | load1 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for (scen, label), runs in rows.items():
    ok = sum(1 for r in runs if r.get("status") == "OK")
    print("| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        scen, label, ok, len(runs), med(runs, "deliv_per_s"), med(runs, "deliv_per_cpu_s"),
        med(runs, "hub_cpu_pct"), redis_pct(runs), med(runs, "p50_us"), med(runs, "p99_us"),
        med(runs, "xnode_p50_us"), med(runs, "xnode_p99_us"),
        "/".join(r.get("load1", "?") for r in runs)))
EOF
	echo
	echo "Commands: $COMMANDS"
} | tee "$OUT/report.md"
[ "$FAILED" = 0 ] || { log "!! at least one run FAILED its checks (see $OUT)"; exit 1; }
