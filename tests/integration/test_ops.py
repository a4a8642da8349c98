"""The operations surface: gRPC health (Check, Watch), HTTP probes,
/metrics, and GetStats' operational fields."""

import re
import signal
import threading
import time

import grpc

import opstest
from opstest import http_get, metrics
from hubtest import RECV_TIMEOUT, RPC_TIMEOUT, Hub, aio, hub_pb2, uniq

H = opstest.health_pb2


def test_health_check(hub):
    stub = opstest.health_pb2_grpc.HealthStub(hub.channel)
    for service in ("", "livehub.v1.HubService", "grpc.health.v1.Health"):
        r = stub.Check(H.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert r.status == H.HealthCheckResponse.SERVING, service
    try:
        stub.Check(H.HealthCheckRequest(service="no.Such"), timeout=RPC_TIMEOUT)
        raise AssertionError("unknown service must be NOT_FOUND")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_unknown_service_and_cancel(hub):
    stub = opstest.health_pb2_grpc.HealthStub(hub.channel)
    call = stub.Watch(H.HealthCheckRequest(service="no.Such"), timeout=RPC_TIMEOUT)
    assert next(call).status == H.HealthCheckResponse.SERVICE_UNKNOWN
    call.cancel()
    # The hub keeps serving Watch after a cancelled one.
    call = stub.Watch(H.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
    assert next(call).status == H.HealthCheckResponse.SERVING
    call.cancel()


def test_watch_sees_not_serving_at_shutdown(tmp_path):
    h = Hub.start(tmp_path)
    try:
        stub = opstest.health_pb2_grpc.HealthStub(h.channel)
        call = stub.Watch(H.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
        assert next(call).status == H.HealthCheckResponse.SERVING
        got = []

        def read():
            try:
                for m in call:
                    got.append(m.status)
            except grpc.RpcError as e:
                got.append(e.code())

        t = threading.Thread(target=read)
        t.start()
        h.proc.send_signal(signal.SIGTERM)
        t.join(RECV_TIMEOUT)
        assert got[:1] == [H.HealthCheckResponse.NOT_SERVING], got
        assert got[-1] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), got
    finally:
        h.stop_and_check()


def test_probes(hub):
    assert http_get(hub, "/healthz")[0] == 200
    assert http_get(hub, "/readyz")[0] == 200


def test_readyz_is_503_while_shutting_down(tmp_path):
    """A client that does not read holds the hub in its shutdown (queued
    frames go out before the close, up to the shutdown timeout), long enough
    to see /readyz turn 503 while /healthz stays 200."""
    import socket
    from google.protobuf import struct_pb2
    secret = "r" * 40
    h = Hub.start(tmp_path, args=["--ws-host", "127.0.0.1", "--ws-port", "0",
                                  "--grpc-host", "127.0.0.1", "--grpc-port", "0",
                                  "--shutdown-timeout", "6"], secret=secret,
                  # Room for all ~9 MB in the send queue: over the default
                  # 4 MiB bound the client is closed as a slow consumer at
                  # once, and the hub then exits before /readyz is asked.
                  env={"LIVEHUB_JWT_SECRET": secret, "LIVEHUB_SENDQ_MAX_BYTES": str(64 << 20)})
    try:
        t = uniq()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((h.ws_host, h.ws_port))
        s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n" % h.token(t, "u")).encode())
        assert b" 101 " in s.recv(4096)
        data = struct_pb2.Struct()
        data.update({"blob": "x" * 60000})
        for _ in range(150):  # ~9 MB: more than the socket buffers hold
            h.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id=t, type="big",
                                                                    data=data))
        assert http_get(h, "/readyz")[0] == 200
        h.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 4
        seen = []
        while time.monotonic() < deadline:
            seen.append(http_get(h, "/readyz")[0])
            if seen[-1] == 503:
                break
            time.sleep(0.02)
        assert seen[-1] == 503, seen
        assert http_get(h, "/healthz")[0] == 200
        m, _ = metrics(h)
        assert m[("livehub_ready", "")] == 0
        s.close()
    finally:
        h.stop_and_check()


@aio
async def test_metrics_count_what_happens(fresh_hub):
    h = fresh_hub
    m0, _ = metrics(h)
    assert m0[("livehub_ready", "")] == 1
    assert m0[("livehub_connections", "")] == 0
    t = uniq()
    c = await h.connect(t, "alice")
    await c.subscribe("job:1")
    await c.send({"type": "nope"})
    await c.next()
    assert await h.handshake_status(token="not-a-token") == 401
    assert await h.handshake_status(token=h.token(t, "a", secret="x" * 40)) == 401
    h.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="job:1", type="x"))
    await c.next()
    m, body = metrics(h)
    assert m[("livehub_connections", "")] == 1
    assert m[("livehub_subscriptions", "")] == 1
    assert m[("livehub_connections_opened_total", "")] == 1
    assert m[("livehub_messages_in_total", '{type="subscribe"}')] == 1
    assert m[("livehub_messages_in_total", '{type="invalid"}')] == 1
    assert m[("livehub_messages_out_total", '{type="connected"}')] == 1
    assert m[("livehub_messages_out_total", '{type="event"}')] == 1
    assert m[("livehub_messages_out_total", '{type="error"}')] == 1
    assert m[("livehub_handshake_refusals_total", '{reason="auth"}')] == 2
    assert m[("livehub_auth_failures_total", '{reason="malformed"}')] == 1
    assert m[("livehub_auth_failures_total", '{reason="signature"}')] == 1
    assert m[("livehub_bytes_out_total", "")] > 0
    pub = '{method="/livehub.v1.HubService/Publish",code="OK"}'
    assert m[("livehub_grpc_calls_total", pub)] == 1
    assert m[("livehub_grpc_call_duration_seconds_count",
              '{method="/livehub.v1.HubService/Publish"}')] == 1
    assert m[("livehub_publish_latency_seconds_count", "")] == 1
    # One event written in one send; the connected frame and the error reply
    # came from no publish call and are not observed.
    assert m[("livehub_publish_to_write_seconds_count", "")] == 1
    for name in ("livehub_messages_dropped_total", "livehub_messages_conflated_total",
                 "livehub_rate_limited_total"):
        assert m[(name, "")] == 0
    # Bounded labels: no tenant, user or channel names in any series.
    assert t not in body and "alice" not in body and "job:1" not in body
    await c.close()
    await h.wait_stats(lambda s: s.connections == 0)
    m, _ = metrics(h)
    assert m[("livehub_connections_closed_total", '{reason="client"}')] == 1


@aio
async def test_stats_operational_fields(fresh_hub):
    h = fresh_hub
    a, b = uniq("a"), uniq("b")
    clients = [await h.connect(a, "u%d" % i) for i in range(3)]
    clients.append(await h.connect(b, "x"))
    assert await h.handshake_status(token="junk") == 401
    # The per-tenant snapshot is taken every 5 s.
    deadline = time.monotonic() + 15
    while True:
        s = h.stats()
        top = [(t.tenant_id, t.connections) for t in s.top_tenants]
        if top == [(a, 3), (b, 1)] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert top == [(a, 3), (b, 1)]
    assert s.handshake_refusals == 1 and s.auth_failures == 1
    assert s.messages_out >= 4  # the four `connected` frames
    assert s.grpc_calls >= 1
    assert s.version == "0.1.0"
    assert s.messages_dropped == s.messages_conflated == s.rate_limited == 0
    for c in clients:
        await c.close()
    s = await h.wait_stats(lambda s: s.connections == 0)
    assert s.connections_closed == 4


def test_metrics_families_present(hub):
    _, body = metrics(hub)
    for fam in ("livehub_connections", "livehub_connections_opened_total",
                "livehub_connections_closed_total", "livehub_handshake_refusals_total",
                "livehub_subscriptions", "livehub_channels", "livehub_messages_in_total",
                "livehub_messages_out_total", "livehub_bytes_out_total",
                "livehub_messages_dropped_total", "livehub_messages_conflated_total",
                "livehub_slow_consumer_disconnects_total", "livehub_rate_limited_total",
                "livehub_auth_failures_total", "livehub_handoff_queue_depth",
                "livehub_send_queue_frames", "livehub_grpc_calls_total",
                "livehub_grpc_call_duration_seconds", "livehub_publish_latency_seconds",
                "livehub_publish_to_write_seconds"):
        assert re.search(r"^# TYPE %s " % fam, body, re.M), fam
