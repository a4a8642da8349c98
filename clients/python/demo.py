#!/usr/bin/python3
"""Feed the demo page (http://127.0.0.1:8080/?token=… as `make run` prints):
three jobs whose progress bars move for about --duration seconds, and price
ticks for the ticker.

    /usr/bin/python3 clients/python/demo.py [--addr 127.0.0.1:50051] [--duration 30]

Jobs are published with project_id "demo", so they reach the page's channel
`project:demo`; prices go to every connection of the tenant. LIVEHUB_API_KEY
and the TLS flags work as in publish_job.py.
"""
import argparse
import random
import time
from typing import Dict


from livehub_stubs import add_connection_args, call_metadata, load_stubs, open_channel
from publish_job import JobReporter

events_pb2, hub_pb2, hub_pb2_grpc = load_stubs()

JOBS = [("video-1", events_pb2.JOB_KIND_VIDEO, 1.0), ("slice-2", events_pb2.JOB_KIND_SLICE, 1.6),
        ("export-3", events_pb2.JOB_KIND_EXPORT, 0.7)]
ITEMS = {"PLA-1kg": 2490, "PETG-1kg": 2890, "resin-1l": 4590}


def publish_price(hub: "hub_pb2_grpc.HubServiceStub", tenant: str, item: str, amount: int,
                  previous: int) -> None:
    hub.PublishPriceUpdated(hub_pb2.PublishPriceUpdatedRequest(
        tenant_id=tenant,
        event=events_pb2.PriceUpdated(item_id=item, currency="EUR", amount_minor=amount,
                                      previous_amount_minor=previous, config_version="demo")),
        timeout=10, metadata=call_metadata())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_args(ap)
    ap.add_argument("--tenant", default="demo")
    ap.add_argument("--project", default="demo")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds the jobs take")
    ap.add_argument("--tick", type=float, default=0.5, help="seconds between updates")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    with open_channel(args.addr, args.tls_ca, args.tls_cert, args.tls_key) as channel:
        hub = hub_pb2_grpc.HubServiceStub(channel)
        reporters = {j: JobReporter(hub, args.tenant, j, args.project, kind) for j, kind, _ in JOBS}
        speed = {j: s for j, _, s in JOBS}
        progress: Dict[str, float] = {j: 0.0 for j, _, _ in JOBS}
        prices = dict(ITEMS)
        steps = max(1, int(args.duration / args.tick))
        started = time.monotonic()
        for step in range(1, steps + 1):
            for job, rep in reporters.items():
                if progress[job] >= 100:
                    continue
                progress[job] = min(100.0, round(100.0 * step * speed[job] / steps, 1))
                if progress[job] >= 100:
                    rep.completed(int((time.monotonic() - started) * 1000))
                else:
                    left = (100 - progress[job]) / (100.0 * speed[job] / steps) * args.tick
                    rep.progress(progress[job], f"step {step}/{steps}", int(left))
            item = rnd.choice(sorted(prices))
            old = prices[item]
            prices[item] = max(100, old + rnd.randint(-60, 60))
            publish_price(hub, args.tenant, item, prices[item], old)
            done = sum(1 for p in progress.values() if p >= 100)
            print(f"\rstep {step}/{steps}  jobs done {done}/{len(JOBS)}  {item} {prices[item] / 100:.2f} EUR ",
                  end="", flush=True)
            time.sleep(args.tick)
        for job, rep in reporters.items():
            if progress[job] < 100:
                rep.completed(int((time.monotonic() - started) * 1000))
        print("\ndone")


if __name__ == "__main__":
    main()
