#!/usr/bin/python3
"""bench/cluster_presence.py [--conns N] [--channels K] [--ttl S]

What presence across nodes costs Redis (docs/SCALING.md "Presence across
nodes"): one redis-server (own port and directory, no persistence) and one
livehub node with LIVEHUB_REDIS_URL; N WebSocket connections open and each
subscribes to one of K channels, as fast as this one Python client goes.
Prints the presence changes the node wrote, the EVALs that carried them
(GetStats presence_writes / presence_write_batches), Redis's own EVAL count
over the same time (the broker's subscribe scripts included), then the same
over one idle refresh period (TTL/3), and Redis's memory.

A program, not a test: it asserts nothing about time. Needs LIVEHUB_BIN
(default build/livehub), redis-server and /usr/bin/python3 with grpcio and
websockets (the integration tests' harness is reused).
"""

import argparse
import asyncio
import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("LIVEHUB_BIN", os.path.join(ROOT, "build", "livehub"))

import conftest  # noqa: E402,F401  (generates the gRPC stubs)
import hubtest  # noqa: E402
import redistest  # noqa: E402
from hubtest import hub_pb2  # noqa: E402


def evals(r):
    for ln in r.cli("INFO", "commandstats").splitlines():
        if ln.startswith("cmdstat_eval:") or ln.startswith("cmdstat_evalsha:"):
            yield int(ln.split("calls=")[1].split(",")[0])


def eval_calls(r):
    return sum(evals(r))


async def run(args):
    r = redistest.RedisServer().start()
    c = redistest.cluster(1, r, LIVEHUB_PRESENCE_TTL=str(args.ttl),
                          LIVEHUB_MAX_CONNECTIONS_PER_IP="0")
    try:
        node = c[0]
        redistest.wait_until(lambda: redistest.readyz(node) == 200, "node ready")
        s0, e0 = node.stats(), eval_calls(r)
        sem = asyncio.Semaphore(200)
        t = "bench"

        async def one(i):
            async with sem:
                cl = await node.connect(t, "u%d" % i)
                await cl.subscribe("job:%d" % (i % args.channels))

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(args.conns)))
        dt = time.monotonic() - t0
        redistest.wait_until(
            lambda: node.rpc("Presence", hub_pb2.PresenceRequest(tenant_id=t)).connections
            == args.conns, "every entry written", timeout=120)
        s1, e1 = node.stats(), eval_calls(r)
        print("%d connections + %d subscriptions (%d channels) opened in %.1f s: "
              "presence_writes=%d presence_write_batches=%d redis_evals=%d"
              % (args.conns, args.conns, args.channels, dt,
                 s1.presence_writes - s0.presence_writes,
                 s1.presence_write_batches - s0.presence_write_batches, e1 - e0))
        period = args.ttl / 3.0
        time.sleep(period + 1)
        s2 = node.stats()
        print("idle %.1f s (refresh every %.1f s): presence_writes=%d presence_write_batches=%d"
              % (period + 1, period, s2.presence_writes - s1.presence_writes,
                 s2.presence_write_batches - s1.presence_write_batches))
        mem = [ln for ln in r.cli("INFO", "memory").splitlines()
               if ln.startswith("used_memory_human")]
        print("redis %s" % mem[0])
    finally:
        await hubtest.close_all_clients()
        c.close()
        r.close()
    print("reproduce: %s" % " ".join([sys.argv[0]] + sys.argv[1:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--conns", type=int, default=3000)
    ap.add_argument("--channels", type=int, default=500)
    ap.add_argument("--ttl", type=int, default=30)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
