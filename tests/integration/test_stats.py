"""GetStats counts exactly (each test has a hub of its own), disconnects,
and shutdown."""

import signal

from hubtest import RECV_TIMEOUT, Closed, Hub, aio, events_pb2, hub_pb2


def counts(s):
    return {k: getattr(s, k) for k in ("connections", "users", "tenants", "subscriptions",
                                       "connections_total", "messages_published",
                                       "messages_delivered", "messages_received")}


@aio
async def test_stats_count_exactly(fresh_hub):
    h = fresh_hub
    s = h.stats()
    assert counts(s) == dict.fromkeys(counts(s), 0)
    assert s.version == "0.1.0"

    a1 = await h.connect("acme", "alice")
    a2 = await h.connect("acme", "alice")
    b = await h.connect("globex", "bob")
    clients = (a1, a2, b)
    assert counts(h.stats()) == {
        "connections": 3, "users": 2, "tenants": 2, "subscriptions": 0, "connections_total": 3,
        "messages_published": 0, "messages_delivered": 0, "messages_received": 0}

    await a1.subscribe("job:1")
    await a1.subscribe("job:2")
    await a2.subscribe("job:1")
    await a2.subscribe("job:1")  # idempotent: still one subscription
    await b.subscribe("job:1")

    r = h.rpc("Publish", hub_pb2.PublishRequest(tenant_id="acme", channel="job:1", type="x")).result
    assert r.subscribers == 2
    r = h.rpc("PublishJobProgress", hub_pb2.PublishJobProgressRequest(
        tenant_id="acme", event=events_pb2.JobProgress(job_id="2", project_id="p"))).result
    assert r.subscribers == 1 and len(r.channels) == 2
    r = h.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id="acme", type="hi")).result
    assert r.subscribers == 2
    r = h.rpc("SendToUser", hub_pb2.SendToUserRequest(tenant_id="globex", user_id="bob", type="dm")).result
    assert r.subscribers == 1
    r = h.rpc("SendToUser", hub_pb2.SendToUserRequest(tenant_id="acme", user_id="nobody", type="dm")).result
    assert r.subscribers == 0

    assert [m["type"] for m in await a1.barrier()] == ["x", "job:progress", "hi"]
    assert [m["type"] for m in await a2.barrier()] == ["x", "hi"]
    assert [m["type"] for m in await b.barrier()] == ["dm"]

    s = h.stats()
    assert counts(s) == {
        "connections": 3, "users": 2, "tenants": 2, "subscriptions": 4, "connections_total": 3,
        "messages_published": 6, "messages_delivered": 6,
        "messages_received": sum(c.sent for c in clients)}
    # acme job:1, job:2, project:p and globex job:1 exist; the implicit
    # channels may or may not be counted.
    assert 4 <= s.channels <= 9, s.channels

    await b.close()
    s = await h.wait_stats(lambda s: s.connections == 2, "2 connections")
    assert (s.users, s.tenants, s.subscriptions, s.connections_total) == (1, 1, 3, 3)
    await a2.close()
    s = await h.wait_stats(lambda s: s.connections == 1, "1 connection")
    assert (s.users, s.tenants, s.subscriptions, s.connections_total) == (1, 1, 2, 3)

    # Delivery goes only to who is left.
    r = h.rpc("Publish", hub_pb2.PublishRequest(tenant_id="acme", channel="job:1", type="y")).result
    assert [(p.channel, p.subscribers) for p in r.channels] == [("job:1", 1)]
    assert (await a1.next())["type"] == "y"
    s = h.stats()
    assert (s.messages_published, s.messages_delivered) == (7, 7)


@aio
async def test_abrupt_disconnect_stops_delivery(fresh_hub):
    """A client that vanishes without a close handshake is removed too."""
    h = fresh_hub
    a = await h.connect("acme", "alice")
    b = await h.connect("acme", "bob")
    await a.subscribe("board:1")
    await b.subscribe("board:1")
    r = h.rpc("Publish", hub_pb2.PublishRequest(tenant_id="acme", channel="board:1", type="x")).result
    assert r.subscribers == 2
    b.ws.transport.abort()
    s = await h.wait_stats(lambda s: s.connections == 1, "1 connection")
    assert (s.users, s.subscriptions) == (1, 1)
    r2 = h.rpc("Publish", hub_pb2.PublishRequest(tenant_id="acme", channel="board:1", type="x")).result
    assert r2.subscribers == 1 and r2.offset == r.offset + 1
    assert [m["offset"] for m in await a.barrier()] == [r.offset, r2.offset]


@aio
async def test_sigterm_closes_clients_1001_and_exits_0(fresh_hub):
    """Graceful shutdown: frames already queued are still delivered, then
    every client gets close code 1001, and the process exits with 0."""
    h = fresh_hub
    a = await h.connect("acme", "alice")
    b = await h.connect("globex", "bob")
    await a.subscribe("job:1")
    offs = [h.rpc("Publish", hub_pb2.PublishRequest(tenant_id="acme", channel="job:1", type="x")).result.offset
            for _ in range(3)]
    h.proc.send_signal(signal.SIGTERM)
    code_a, got_a = await a.expect_close()
    code_b, got_b = await b.expect_close()
    assert [m["offset"] for m in got_a] == offs
    assert got_b == []
    assert (code_a, code_b) == (1001, 1001)
    status = h.terminate()
    assert status == 0, "exit status %r\n%s" % (status, h.stderr_tail())


@aio
async def test_slow_consumer_is_closed_4000_and_others_keep_receiving(tmp_path):
    """A client that reads nothing overflows its send queue (bound set to 16
    frames here) and is closed with 4000; a client reading along on the
    same channel (each publish waits until it got the previous event) gets
    every event, in order."""
    h = Hub.start(tmp_path, env={"LIVEHUB_SENDQ_MAX_FRAMES": "16"})
    try:
        slow = await h.connect("acme", "slow")
        fast = await h.connect("acme", "fast")
        await slow.subscribe("feed")
        await fast.subscribe("feed")
        blob = "p" * 200_000
        replies = []
        for i in range(2000):  # ~100 are needed; the bound only stops a broken hub
            req = hub_pb2.PublishRequest(tenant_id="acme", channel="feed", type="chunk")
            req.data.update({"i": i, "blob": blob})
            r = h.rpc("Publish", req).result
            replies.append(r)
            m = await fast.next()
            assert (m["offset"], m["data"]["i"]) == (r.offset, i)
            if r.subscribers == 1:
                break
        assert [r.subscribers for r in replies][-1] == 1, "the slow client was never dropped"
        first = replies[0].offset
        assert [r.offset for r in replies] == list(range(first, first + len(replies)))
        await fast.expect_nothing()

        code, slow_got = await slow.expect_close()
        events = [m for m in slow_got if m.get("type") == "chunk"]
        assert [m["offset"] for m in events] == list(range(first, first + len(events)))
        assert len(events) < len(replies)
        for m in slow_got:
            if m.get("type") == "error":
                assert (m["code"], m["recoverable"]) == ("SLOW_CONSUMER", False), m
        assert code == 4000, (code, len(events))
        s = await h.wait_stats(lambda s: s.connections == 1, "1 connection")
        assert s.subscriptions == 1
    finally:
        h.stop_and_check()


@aio
async def test_heartbeat_hangs_up_on_a_silent_client(tmp_path):
    """With a 1 s ping interval and 3 s timeout: a client that stops reading
    (so never answers the hub's pings) is hung up on; one that answers
    stays. Both connect together, so when the silent one is gone the
    timeout has passed for the other too."""
    h = Hub.start(tmp_path, env={"LIVEHUB_PING_INTERVAL": "1", "LIVEHUB_PING_TIMEOUT": "3"})
    try:
        alive = await h.connect("acme", "alive")
        silent = await h.connect("acme", "silent")
        assert alive.connected["heartbeat"] == {"pingInterval": 1, "pingTimeout": 3}
        silent.ws.transport.pause_reading()
        await h.wait_stats(lambda s: s.connections == 1, "the silent client hung up on")
        silent.ws.transport.resume_reading()
        try:
            while True:
                await silent.next(RECV_TIMEOUT)
        except Closed:
            pass
        assert await alive.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        assert h.stats().connections == 1
    finally:
        h.stop_and_check()
