"""History and recovery: subscribe with `since` replays exactly the missed
publications, in order, before live ones; `recovered: false` when the
epoch is wrong or the history is gone; the History RPC; idempotent
publishes."""

import asyncio
import json
import signal
import subprocess
import time

import grpc
import pytest

import hubtest
from hubtest import aio, check_event, events_pb2, hub_pb2, hub_pb2_grpc, no_pos, publish, uniq


def since(offset, epoch):
    return {"offset": offset, "epoch": epoch}


@aio
async def test_resubscribe_with_since_gets_exactly_the_missed_ones_in_order(hub):
    t, ch = uniq(), "job:" + uniq("j")
    a = await hub.connect(t, "alice")
    sub = await a.subscribe(ch)
    assert sub["offset"] == 0  # a new channel
    seen = []
    for i in range(3):
        publish(hub, t, ch, "step", i=i)
        seen.append(await a.next())
    last = seen[-1]
    await a.close()

    missed = [publish(hub, t, ch, "step", i=i) for i in range(3, 10)]
    b = await hub.connect(t, "alice")
    reply = await b.request({"type": "subscribe", "channel": ch, "id": "r1",
                             "since": since(last["offset"], last["epoch"])})
    assert no_pos(reply) == {"type": "subscribed", "channel": ch, "recovered": True, "id": "r1"}
    assert reply["offset"] == missed[-1].offset and reply["epoch"] == last["epoch"]
    for i, r in enumerate(missed):
        check_event(await b.next(), "step", ch, r.channels[0], {"i": i + 3})
    # Then live, continuing the same offsets.
    live = publish(hub, t, ch, "step", i=10)
    check_event(await b.next(), "step", ch, live.channels[0], {"i": 10})
    assert live.offset == missed[-1].offset + 1
    await b.expect_nothing()


@aio
async def test_recovery_keeps_publish_order_while_publishing_goes_on(hub):
    t, ch = uniq(), "board:" + uniq("b")
    a = await hub.connect(t, "u")
    await a.subscribe(ch)
    publish(hub, t, ch, "n", i=0)
    first = await a.next()
    await a.close()
    for i in range(1, 20):
        publish(hub, t, ch, "n", i=i)
    b = await hub.connect(t, "u")

    async def publisher():
        for i in range(20, 60):
            await asyncio.to_thread(publish, hub, t, ch, "n", i=i)

    task = asyncio.ensure_future(publisher())
    reply = await b.request({"type": "subscribe", "channel": ch,
                             "since": since(first["offset"], first["epoch"])})
    assert reply["recovered"] is True, reply
    got = [await b.next() for _ in range(59)]
    await task
    # Every publication after the one seen, each once, in publish order.
    assert [m["data"]["i"] for m in got] == list(range(1, 60))
    assert [m["offset"] for m in got] == list(range(first["offset"] + 1, first["offset"] + 60))
    await b.expect_nothing()


@aio
async def test_wrong_epoch_or_future_offset_is_not_recovered(hub):
    t, ch = uniq(), "order:" + uniq("o")
    a = await hub.connect(t, "u")
    sub = await a.subscribe(ch)
    r = publish(hub, t, ch)
    await a.next()
    m = await a.request({"type": "subscribe", "channel": ch,
                         "since": since(0, "0123456789abcdef")})
    assert m["recovered"] is False and m["offset"] == r.offset and m["epoch"] == sub["epoch"], m
    m = await a.request({"type": "subscribe", "channel": ch, "since": since(r.offset + 5, r.epoch)})
    assert m["recovered"] is False, m
    await a.expect_nothing()  # nothing replayed
    # Up to date: recovered, nothing to replay.
    m = await a.request({"type": "subscribe", "channel": ch, "since": since(r.offset, r.epoch)})
    assert m["recovered"] is True, m
    await a.expect_nothing()


@aio
async def test_since_is_validated(hub):
    c = await hub.connect(uniq(), "u")
    for bad in [5, "x", {"offset": -1, "epoch": "a"}, {"offset": 1}, {"epoch": "e"},
                {"offset": "1", "epoch": "e"}, {"offset": 1, "epoch": "e" * 33}]:
        m = await c.request({"type": "subscribe", "channel": "c", "since": bad, "id": 4})
        assert m["type"] == "error" and m["code"] == "BAD_REQUEST" and m["id"] == 4, (bad, m)
        assert m["recoverable"] is True


@aio
async def test_implicit_channels_are_recovered_not_subscribed(hub):
    t = uniq()
    a = await hub.connect(t, "alice")
    b1 = hub.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id=t, type="news")).result
    u1 = hub.rpc("SendToUser", hub_pb2.SendToUserRequest(tenant_id=t, user_id="alice", type="dm")).result
    assert (await a.next())["type"] == "news"
    assert (await a.next())["type"] == "dm"
    await a.close()
    b2 = hub.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id=t, type="news")).result
    u2 = hub.rpc("SendToUser", hub_pb2.SendToUserRequest(tenant_id=t, user_id="alice", type="dm")).result
    c = await hub.connect(t, "alice")
    m = await c.request({"type": "subscribe", "channel": "$tenant", "since": since(b1.offset, b1.epoch)})
    assert no_pos(m) == {"type": "subscribed", "channel": "$tenant", "recovered": True}
    check_event(await c.next(), "news", "$tenant", b2.channels[0], {})
    m = await c.request({"type": "subscribe", "channel": "$user", "since": since(u1.offset, u1.epoch)})
    assert m["recovered"] is True and m["offset"] == u2.offset, m
    check_event(await c.next(), "dm", "$user:alice", u2.channels[0], {})
    m = await c.request({"type": "subscribe", "channel": "$user:alice", "since": since(u2.offset, u2.epoch)})
    assert m["recovered"] is True, m
    # Someone else's user channel, or another reserved name: refused.
    for ch in ["$user:bob", "$other"]:
        m = await c.request({"type": "subscribe", "channel": ch, "since": since(0, "x"), "id": 1})
        assert m["type"] == "error" and m["code"] == "CHANNEL_ACCESS_DENIED", (ch, m)
        assert m["recoverable"] is True and m["id"] == 1, m
    # Without since they stay refused, as before.
    m = await c.request({"type": "subscribe", "channel": "$tenant"})
    assert m["code"] == "CHANNEL_ACCESS_DENIED", m
    await c.expect_nothing()
    assert hub.stats().subscriptions >= 0


@pytest.fixture
def short_history_hub(tmp_path_factory):
    h = hubtest.Hub.start(tmp_path_factory.mktemp("hist"),
                          env={"LIVEHUB_HISTORY_TTL": "1", "LIVEHUB_HISTORY_SIZE": "5"})
    try:
        yield h
    finally:
        h.stop_and_check()


@aio
async def test_not_recovered_after_history_is_gone(short_history_hub):
    hub = short_history_hub
    t, ch, ch2 = uniq(), "job:" + uniq("j"), "job:" + uniq("k")
    a = await hub.connect(t, "u")
    await a.subscribe(ch)
    publish(hub, t, ch, i=0)
    first = await a.next()
    # More than the history size: the oldest are gone.
    for i in range(1, 8):
        publish(hub, t, ch, i=i)
        await a.next()
    m = await a.request({"type": "subscribe", "channel": ch, "since": since(first["offset"], first["epoch"])})
    assert m["recovered"] is False, m
    await a.expect_nothing()
    # Past the TTL (1 s): gone as well.
    await a.subscribe(ch2)
    publish(hub, t, ch2, i=0)
    e = await a.next()
    publish(hub, t, ch2, i=1)
    await a.next()
    m = await a.request({"type": "subscribe", "channel": ch2, "since": since(e["offset"], e["epoch"])})
    assert m["recovered"] is True, m  # still held, and replayed once more
    assert (await a.next())["offset"] == e["offset"] + 1
    await a.expect_nothing()
    await asyncio.sleep(1.5)
    m = await a.request({"type": "subscribe", "channel": ch2, "since": since(e["offset"], e["epoch"])})
    assert m["recovered"] is False, m
    await a.expect_nothing()
    s = hub.stats()
    assert s.recovery_misses == 2 and s.recoveries == 1, s


@aio
async def test_history_rpc(hub):
    t, ch = uniq(), "job:" + uniq("j")
    rs = [publish(hub, t, ch, "step", i=i) for i in range(6)]
    h = hub.rpc("History", hub_pb2.HistoryRequest(tenant_id=t, channel=ch, limit=3))
    assert h.channel == ch and h.offset == rs[-1].offset and h.epoch == rs[0].epoch
    assert not h.recovered
    assert [p.offset for p in h.publications] == [r.offset for r in rs[3:]]
    p = h.publications[0]
    assert p.type == "step" and json.loads(p.data_json) == {"i": 3} and p.epoch == rs[0].epoch
    assert p.ts_ms > 0
    # since: the oldest after it, up to the limit.
    h = hub.rpc("History", hub_pb2.HistoryRequest(
        tenant_id=t, channel=ch, limit=2,
        since=hub_pb2.StreamPosition(offset=rs[0].offset, epoch=rs[0].epoch)))
    assert h.recovered and [p.offset for p in h.publications] == [rs[1].offset, rs[2].offset]
    h = hub.rpc("History", hub_pb2.HistoryRequest(
        tenant_id=t, channel=ch, since=hub_pb2.StreamPosition(offset=0, epoch="nope")))
    assert not h.recovered and len(h.publications) == 0
    # Another tenant's channel of the same name is its own (empty).
    h = hub.rpc("History", hub_pb2.HistoryRequest(tenant_id=uniq(), channel=ch))
    assert h.epoch == "" and len(h.publications) == 0 and h.offset == 0
    # What clients got is what History returns.
    c = await hub.connect(t, "u")
    await c.subscribe(ch)
    r = publish(hub, t, ch, "final", ok=True, n=1.5)
    ev = await c.next()
    h = hub.rpc("History", hub_pb2.HistoryRequest(tenant_id=t, channel=ch, limit=1))
    assert json.loads(h.publications[0].data_json) == ev["data"] and h.publications[0].ts_ms == ev["ts"]
    assert h.publications[0].offset == r.offset
    st = hub.stats()
    assert st.history_publications >= 7 and st.history_bytes > 7 * 100, st


def test_history_rpc_errors(hub):
    for req, code, text in [
        (hub_pb2.HistoryRequest(channel="c"), grpc.StatusCode.INVALID_ARGUMENT, "tenant_id"),
        (hub_pb2.HistoryRequest(tenant_id="t"), grpc.StatusCode.INVALID_ARGUMENT, "channel"),
        (hub_pb2.HistoryRequest(tenant_id="t", channel="a b"), grpc.StatusCode.INVALID_ARGUMENT, "channel"),
        (hub_pb2.HistoryRequest(tenant_id="t", channel="c", limit=1001), grpc.StatusCode.INVALID_ARGUMENT, "limit"),
    ]:
        e = hub.rpc_error("History", req)
        assert e.code() == code and e.details().startswith(text), (req, e.details())


@aio
async def test_idempotency_key_deduplicates(hub):
    t, ch = uniq(), "board:" + uniq("b")
    c = await hub.connect(t, "u")
    await c.subscribe(ch)
    r1 = publish(hub, t, ch, "once", key="k-1", v=1)
    r2 = publish(hub, t, ch, "once", key="k-1", v=1)  # a retry: the first result
    assert not r1.duplicate and r2.duplicate
    assert (r2.offset, r2.epoch, r2.subscribers) == (r1.offset, r1.epoch, r1.subscribers)
    assert list(r2.channels) == list(r1.channels)
    check_event(await c.next(), "once", ch, r1.channels[0], {"v": 1})
    await c.expect_nothing()
    # The same key for another publication is refused, and publishes nothing.
    req = hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="once", idempotency_key="k-1")
    req.data.update({"v": 2})
    e = hub.rpc_error("Publish", req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    assert e.details().startswith("idempotency_key: already used"), e.details()
    await c.expect_nothing()
    # Another key, or the same key in another tenant, publishes.
    r3 = publish(hub, t, ch, "once", key="k-2", v=3)
    assert not r3.duplicate and r3.offset == r1.offset + 1
    check_event(await c.next(), "once", ch, r3.channels[0], {"v": 3})
    assert not publish(hub, uniq(), ch, "once", key="k-1").duplicate
    # Typed publish methods and stream items carry the key too.
    job = uniq("j")
    await c.subscribe("job:" + job)
    req = hub_pb2.PublishJobProgressRequest(
        tenant_id=t, idempotency_key="p-1", event=events_pb2.JobProgress(job_id=job, progress=5))
    a = hub.rpc("PublishJobProgress", req).result
    b = hub.rpc("PublishJobProgress", req).result
    assert b.duplicate and b.offset == a.offset
    s = hub.rpc("PublishStream", iter([hub_pb2.PublishStreamRequest(job_progress=req)]))
    assert s.accepted == 1
    assert (await c.next())["data"]["progress"] == 5
    await c.expect_nothing()
    assert hub.stats().publishes_deduplicated >= 2


def test_idempotency_key_is_validated(hub):
    for bad in ["has space", "x" * 129, "caf\u00e9"]:
        e = hub.rpc_error("Publish", hub_pb2.PublishRequest(
            tenant_id="t", channel="c", type="x", idempotency_key=bad))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert e.details().startswith("idempotency_key:"), e.details()


def _write(path, obj):
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _wait_log(hub, text):
    deadline = time.monotonic() + hubtest.RECV_TIMEOUT
    while time.monotonic() < deadline:
        with open(hub.stderr_path) as f:
            if f.read().count(text):
                return
        time.sleep(0.05)
    raise AssertionError("log never had %r\n%s" % (text, hub.stderr_tail()))


def test_history_kinds_are_checked_and_reloaded(tmp_path):
    bad = subprocess.run([hubtest.BIN, "--check-config", "--history-kinds", "job:x"],
                         capture_output=True, text=True, env=hubtest.clean_env(), timeout=30)
    assert bad.returncode == 2 and "LIVEHUB_HISTORY_KINDS" in bad.stderr, bad.stderr
    secret = "recovery-test-secret-0123456789abcdef"
    base = {"ws_host": "127.0.0.1", "ws_port": 0, "grpc_host": "127.0.0.1", "grpc_port": 0,
            "jwt_secret": secret, "history_kinds": "job:2"}
    cfg = _write(tmp_path / "live.json", base)
    h = hubtest.Hub.start(tmp_path, args=["--config", cfg], secret=secret)
    try:
        t, ch = uniq(), "job:" + uniq("j")

        def held():
            return len(h.rpc("History", hub_pb2.HistoryRequest(tenant_id=t, channel=ch)).publications)

        for i in range(4):
            publish(h, t, ch, i=i)
        assert held() == 2
        # Other kinds keep the default size.
        for i in range(4):
            publish(h, t, "order:" + ch, i=i)
        assert len(h.rpc("History", hub_pb2.HistoryRequest(
            tenant_id=t, channel="order:" + ch)).publications) == 4
        base["history_kinds"] = "job:5/600"
        _write(cfg, base)
        h.proc.send_signal(signal.SIGHUP)
        _wait_log(h, "event=reload_applied")
        for i in range(4, 10):
            publish(h, t, ch, i=i)
        assert held() == 5
        # A bad list at reload changes nothing.
        base["history_kinds"] = "job"
        _write(cfg, base)
        h.proc.send_signal(signal.SIGHUP)
        _wait_log(h, "event=reload_failed")
        publish(h, t, ch, i=10)
        assert held() == 5
    finally:
        h.stop_and_check()


def test_history_needs_the_admin_scope_and_the_tenant(tmp_path):
    """History is an administrative read: a publish-only key is refused, and
    a tenant-restricted admin key reads only its own tenants."""
    acme, other = "acme-" + uniq("t")[2:], uniq()
    admin, pub, acme_admin = ("hist-admin-Qe6Ry1Tu3Io9Pa2S", "hist-pub-Zq3v9LkWm2XyTt8R",
                              "hist-acadm-Mn7Bv5Cx3Zl1Kj9H")
    keys = "ops:admin=%s,jobs:publish=%s,acme-ops:admin:%s=%s" % (admin, pub, acme, acme_admin)
    h = hubtest.Hub.start(tmp_path, api_key=admin, env={"LIVEHUB_API_KEYS": keys})
    try:
        publish(h, acme, "job:1")
        req = hub_pb2.HistoryRequest(tenant_id=acme, channel="job:1")
        assert len(h.rpc("History", req).publications) == 1

        def code_with(key, r):
            ch = h.new_channel(key)
            try:
                hub_pb2_grpc.HubServiceStub(ch).History(r, timeout=hubtest.RPC_TIMEOUT)
                return grpc.StatusCode.OK
            except grpc.RpcError as e:
                return e.code()
            finally:
                ch.close()

        assert code_with(pub, req) == grpc.StatusCode.PERMISSION_DENIED
        assert code_with(acme_admin, req) == grpc.StatusCode.OK
        assert code_with(acme_admin, hub_pb2.HistoryRequest(
            tenant_id=other, channel="job:1")) == grpc.StatusCode.PERMISSION_DENIED
        assert code_with(None, req) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        h.stop_and_check()
