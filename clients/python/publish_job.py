#!/usr/bin/python3
"""Publish a job's progress to livehub, the way a queue worker would.

    /usr/bin/python3 clients/python/publish_job.py --tenant demo --job 42

Stubs are generated from proto/ on first use (Debian's python3-grpc-tools),
into clients/python/gen/. Use /usr/bin/python3: Debian's grpcio lives there.

When livehub requires API keys (docs/SECURITY.md), set LIVEHUB_API_KEY to a
key with the publish scope: it is sent as `authorization: Bearer <key>`.
For gRPC over TLS, pass --tls-ca (the CA that signed livehub's certificate)
and, for mutual TLS, --tls-cert/--tls-key (this client's certificate).
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GEN = os.path.join(HERE, "gen")


def load_stubs():
    """Generates the Python stubs when missing or older than the protos."""
    protos = [os.path.join(ROOT, "proto", "livehub", "v1", f) for f in ("hub.proto", "events.proto")]
    marker = os.path.join(GEN, "livehub", "v1", "hub_pb2_grpc.py")
    if not os.path.exists(marker) or any(os.path.getmtime(p) > os.path.getmtime(marker) for p in protos):
        os.makedirs(GEN, exist_ok=True)
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
                        "-I", "/usr/include", "--python_out", GEN, "--grpc_python_out", GEN] + protos,
                       check=True)
    sys.path.insert(0, GEN)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default="127.0.0.1:50051", help="livehub's gRPC address")
    ap.add_argument("--tenant", default="demo")
    ap.add_argument("--job", default="42")
    ap.add_argument("--project", default="", help="also publish on project:{id}")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between steps")
    ap.add_argument("--tls-ca", help="PEM CA bundle: connect with TLS, trusting it")
    ap.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    ap.add_argument("--tls-key", help="PEM key of --tls-cert")
    args = ap.parse_args()

    load_stubs()
    import grpc
    from livehub.v1 import events_pb2, hub_pb2, hub_pb2_grpc

    key = os.environ.get("LIVEHUB_API_KEY")
    metadata = [("authorization", "Bearer " + key)] if key else None
    if args.tls_ca:
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(
            read(args.tls_ca), read(args.tls_key) if args.tls_key else None,
            read(args.tls_cert) if args.tls_cert else None)
        channel = grpc.secure_channel(args.addr, creds)
    else:
        channel = grpc.insecure_channel(args.addr)

    with channel:
        hub = hub_pb2_grpc.HubServiceStub(channel)
        for step in range(1, args.steps + 1):
            progress = 100.0 * step / args.steps
            reply = hub.PublishJobProgress(hub_pb2.PublishJobProgressRequest(
                tenant_id=args.tenant,
                event=events_pb2.JobProgress(job_id=args.job, project_id=args.project,
                                             kind=events_pb2.JOB_KIND_SLICE, progress=progress,
                                             eta_seconds=int((args.steps - step) * args.interval),
                                             message=f"step {step}/{args.steps}")),
                metadata=metadata)
            print(f"job:{args.job} {progress:5.1f}%  offset={reply.result.offset} "
                  f"subscribers={reply.result.subscribers}")
            time.sleep(args.interval)
        reply = hub.PublishJobCompleted(hub_pb2.PublishJobCompletedRequest(
            tenant_id=args.tenant,
            event=events_pb2.JobCompleted(job_id=args.job, project_id=args.project,
                                          kind=events_pb2.JOB_KIND_SLICE,
                                          duration_ms=int(args.steps * args.interval * 1000))),
            metadata=metadata)
        print(f"job:{args.job} completed  offset={reply.result.offset}")


if __name__ == "__main__":
    main()
