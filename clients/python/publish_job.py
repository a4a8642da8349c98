#!/usr/bin/python3
"""Publish a job's progress to livehub, the way a queue worker would.

    /usr/bin/python3 clients/python/publish_job.py --tenant demo --job 42

A browser subscribed to `job:42` (or to `project:{id}` with --project) sees
one `job:progress` event per step, then `job:completed`. Stubs are generated
from proto/ on first use (livehub_stubs.py). Use /usr/bin/python3: Debian's
grpcio lives there.

When livehub requires API keys (docs/SECURITY.md), set LIVEHUB_API_KEY to a
key with the publish scope: it is sent as `authorization: Bearer <key>`.
For gRPC over TLS, pass --tls-ca (the CA that signed livehub's certificate)
and, for mutual TLS, --tls-cert/--tls-key (this client's certificate).
"""
import argparse
import time
from typing import Optional

import grpc

from livehub_stubs import add_connection_args, call_metadata, load_stubs, open_channel

events_pb2, hub_pb2, hub_pb2_grpc = load_stubs()


class JobReporter:
    """What a worker needs from livehub: report progress, completion or
    failure of one job. Every call returns the ChannelPosition livehub gave
    the event (its offset on job:{id})."""

    def __init__(self, hub: "hub_pb2_grpc.HubServiceStub", tenant: str, job_id: str,
                 project_id: str = "", kind: int = events_pb2.JOB_KIND_SLICE,
                 timeout: float = 10.0) -> None:
        self.hub, self.tenant, self.job_id, self.project_id = hub, tenant, job_id, project_id
        self.kind, self.timeout = kind, timeout
        self.metadata = call_metadata()

    def progress(self, percent: float, message: str = "", eta_seconds: int = 0) -> "hub_pb2.PublishResult":
        reply = self.hub.PublishJobProgress(hub_pb2.PublishJobProgressRequest(
            tenant_id=self.tenant,
            event=events_pb2.JobProgress(job_id=self.job_id, project_id=self.project_id,
                                         kind=self.kind, progress=percent,
                                         eta_seconds=eta_seconds, message=message)),
            timeout=self.timeout, metadata=self.metadata)
        return reply.result

    def completed(self, duration_ms: int) -> "hub_pb2.PublishResult":
        reply = self.hub.PublishJobCompleted(hub_pb2.PublishJobCompletedRequest(
            tenant_id=self.tenant,
            event=events_pb2.JobCompleted(job_id=self.job_id, project_id=self.project_id,
                                          kind=self.kind, duration_ms=duration_ms)),
            timeout=self.timeout, metadata=self.metadata)
        return reply.result

    def failed(self, error: str) -> "hub_pb2.PublishResult":
        reply = self.hub.PublishJobFailed(hub_pb2.PublishJobFailedRequest(
            tenant_id=self.tenant,
            event=events_pb2.JobFailed(job_id=self.job_id, project_id=self.project_id,
                                       kind=self.kind, error=error)),
            timeout=self.timeout, metadata=self.metadata)
        return reply.result


def run_job(channel: grpc.Channel, tenant: str, job: str, project: str, steps: int,
            interval: float, fail_at: Optional[int] = None) -> None:
    """The worker loop: one progress event per step, then completed (or
    failed at step fail_at)."""
    started = time.monotonic()
    jobs = JobReporter(hub_pb2_grpc.HubServiceStub(channel), tenant, job, project)
    for step in range(1, steps + 1):
        if fail_at == step:
            pos = jobs.failed(f"step {step} failed")
            print(f"job:{job} failed  offset={pos.offset}")
            return
        percent = 100.0 * step / steps
        pos = jobs.progress(percent, f"step {step}/{steps}", int((steps - step) * interval))
        print(f"job:{job} {percent:5.1f}%  offset={pos.offset} subscribers={pos.subscribers}")
        time.sleep(interval)
    pos = jobs.completed(int((time.monotonic() - started) * 1000))
    print(f"job:{job} completed  offset={pos.offset}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_args(ap)
    ap.add_argument("--tenant", default="demo")
    ap.add_argument("--job", default="42")
    ap.add_argument("--project", default="", help="also publish on project:{id}")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between steps")
    ap.add_argument("--fail-at", type=int, default=None, help="fail the job at this step")
    args = ap.parse_args()
    with open_channel(args.addr, args.tls_ca, args.tls_cert, args.tls_key) as channel:
        run_job(channel, args.tenant, args.job, args.project, args.steps, args.interval,
                args.fail_at)


if __name__ == "__main__":
    main()
