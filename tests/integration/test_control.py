"""Control RPCs: Disconnect, server-side Subscribe/Unsubscribe, ListChannels
(docs/API.md), and the lifecycle around them: SIGTERM with calls in flight."""

import asyncio
import signal
import threading

import grpc

from hubtest import RPC_TIMEOUT, Hub, aio, closed_with, hub_pb2, uniq


def disconnect(hub, tenant, **kw):
    return hub.rpc("Disconnect", hub_pb2.DisconnectRequest(tenant_id=tenant, **kw)).disconnected


@aio
async def test_disconnect_user_closes_all_their_devices(hub):
    t = uniq()
    a1 = await hub.connect(t, "alice")
    a2 = await hub.connect(t, "alice")
    bob = await hub.connect(t, "bob")
    other = await hub.connect(uniq(), "alice")  # same user name, other tenant
    assert disconnect(hub, t, user_id="alice", reason="account suspended") == 2
    assert await closed_with(a1) == (4501, "account suspended")
    assert await closed_with(a2) == (4501, "account suspended")
    await bob.expect_nothing()
    await other.expect_nothing()
    # Nobody left to close: 0, not an error.
    assert disconnect(hub, t, user_id="alice") == 0


@aio
async def test_disconnect_one_client_may_reconnect(hub):
    t = uniq()
    a1 = await hub.connect(t, "alice")
    a2 = await hub.connect(t, "alice")
    assert disconnect(hub, t, client_id=a1.connected["clientId"], reconnect=True) == 1
    assert await closed_with(a1) == (4100, "DISCONNECTED")
    await a2.expect_nothing()
    # Another tenant cannot name this tenant's connection.
    assert disconnect(hub, uniq(), client_id=a2.connected["clientId"]) == 0
    assert disconnect(hub, t, client_id="c-none") == 0
    await a2.expect_nothing()


@aio
async def test_disconnect_tenant_closes_only_that_tenant(hub):
    t = uniq()
    clients = [await hub.connect(t, u) for u in ("a", "b", "c")]
    other = await hub.connect(uniq(), "a")
    assert disconnect(hub, t, reason="maintenance", reconnect=True) == 3
    for c in clients:
        assert await closed_with(c) == (4100, "maintenance")
    await other.expect_nothing()


def test_disconnect_rejects_bad_requests(hub):
    def bad(req, field):
        e = hub.rpc_error("Disconnect", req)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert field in e.details(), e.details()

    bad(hub_pb2.DisconnectRequest(user_id="alice"), "tenant_id")
    bad(hub_pb2.DisconnectRequest(tenant_id="t", user_id="alice", client_id="c1"), "client_id")
    bad(hub_pb2.DisconnectRequest(tenant_id="t", user_id="bad user"), "user_id")
    bad(hub_pb2.DisconnectRequest(tenant_id="t", reason="r" * 124), "reason")
    bad(hub_pb2.DisconnectRequest(tenant_id="t", client_id="c" * 40), "client_id")
    # Invalid UTF-8 in the reason (protobuf-c does not check it; livehub must).
    body = b"\x0a\x01t\x22\x02\xc3\x28"
    code, details, _ = hub.raw_call("/livehub.v1.HubService/Disconnect", body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in details, (code, details)


@aio
async def test_server_side_subscribe_reaches_every_device(hub):
    t = uniq()
    a1 = await hub.connect(t, "alice")
    a2 = await hub.connect(t, "alice")
    bob = await hub.connect(t, "bob")
    pub = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="board:9", type="x")).result
    r = hub.rpc("Subscribe", hub_pb2.SubscribeRequest(tenant_id=t, user_id="alice", channel="board:9"))
    assert (r.subscribed, r.already_subscribed, r.refused) == (2, 0, 0), r
    assert (r.offset, r.epoch) == (pub.offset, pub.epoch), (r, pub)
    want = {"type": "subscribed", "channel": "board:9", "offset": pub.offset, "epoch": pub.epoch}
    assert await a1.barrier() == [want]  # server-initiated: no id
    assert await a2.barrier() == [want]
    pub2 = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="board:9", type="y")).result
    assert pub2.subscribers == 2
    for c in (a1, a2):
        got = await c.barrier()
        assert [(m["type"], m["offset"]) for m in got] == [("y", pub2.offset)], got
    await bob.expect_nothing()
    # Again: nothing changes, nobody is told.
    r = hub.rpc("Subscribe", hub_pb2.SubscribeRequest(tenant_id=t, user_id="alice", channel="board:9"))
    assert (r.subscribed, r.already_subscribed) == (0, 2), r
    await a1.expect_nothing()
    # A client's own unsubscribe works on a server-made subscription.
    assert await a2.request({"type": "unsubscribe", "channel": "board:9", "id": 1}) == {
        "type": "unsubscribed", "channel": "board:9", "id": 1}
    r = hub.rpc("Unsubscribe", hub_pb2.UnsubscribeRequest(tenant_id=t, user_id="alice", channel="board:9"))
    assert r.unsubscribed == 1
    assert await a1.barrier() == [{"type": "unsubscribed", "channel": "board:9"}]
    await a2.expect_nothing()
    pub3 = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="board:9", type="z")).result
    assert pub3.subscribers == 0
    # A user with no connection: nothing to do.
    r = hub.rpc("Subscribe", hub_pb2.SubscribeRequest(tenant_id=t, user_id="nobody", channel="board:9"))
    assert (r.subscribed, r.already_subscribed, r.refused) == (0, 0, 0)


@aio
async def test_server_side_subscribe_respects_the_subscription_limit(tmp_path):
    h = Hub.start(tmp_path, env={"LIVEHUB_MAX_SUBSCRIPTIONS": "1"})
    try:
        full = await h.connect("acme", "alice")
        free = await h.connect("acme", "alice")
        await full.subscribe("job:1")
        r = h.rpc("Subscribe", hub_pb2.SubscribeRequest(tenant_id="acme", user_id="alice", channel="job:2"))
        assert (r.subscribed, r.refused) == (1, 1), r
        assert (await free.barrier())[0]["channel"] == "job:2"
        await full.expect_nothing()
    finally:
        h.stop_and_check()


def test_subscribe_rejects_bad_requests(hub):
    for method, cls in (("Subscribe", hub_pb2.SubscribeRequest),
                        ("Unsubscribe", hub_pb2.UnsubscribeRequest)):
        for req, field in ((cls(user_id="a", channel="c"), "tenant_id"),
                           (cls(tenant_id="t", channel="c"), "user_id"),
                           (cls(tenant_id="t", user_id="a"), "channel"),
                           (cls(tenant_id="t", user_id="a", channel="$tenant"), "channel"),
                           (cls(tenant_id="t", user_id="a", channel="a b"), "channel")):
            e = hub.rpc_error(method, req)
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.details(), (method, e)


@aio
async def test_list_channels(hub):
    t = uniq()
    a = await hub.connect(t, "alice")
    b = await hub.connect(t, "bob")
    x = await hub.connect(uniq(), "x")
    for ch in ("board:2", "board:1", "job:1"):
        await a.subscribe(ch)
    await b.subscribe("board:1")
    await x.subscribe("board:3")  # another tenant
    hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="board:empty", type="x"))

    def names(**kw):
        r = hub.rpc("ListChannels", hub_pb2.ListChannelsRequest(tenant_id=t, **kw))
        return [(c.channel, c.subscribers) for c in r.channels], r.truncated

    assert names() == ([("board:1", 2), ("board:2", 1), ("job:1", 1)], False)
    assert names(prefix="board:") == ([("board:1", 2), ("board:2", 1)], False)
    assert names(prefix="board:", limit=1) == ([("board:1", 2)], True)
    assert names(prefix="order:") == ([], False)
    await a.request({"type": "unsubscribe", "channel": "job:1"})
    assert names() == ([("board:1", 2), ("board:2", 1)], False)
    for req, field in ((hub_pb2.ListChannelsRequest(tenant_id=t, limit=10001), "limit"),
                       (hub_pb2.ListChannelsRequest(tenant_id=t, prefix="$"), "prefix"),
                       (hub_pb2.ListChannelsRequest(), "tenant_id")):
        e = hub.rpc_error("ListChannels", req)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.details(), e


@aio
async def test_sigterm_with_calls_in_flight_closes_1001_and_exits_0(tmp_path):
    """SIGTERM while three publishers keep calling and one client has
    stopped reading: every reading client gets its events in order and then
    1001, every call ends (OK, or UNAVAILABLE once the hub stops taking
    calls), and the exit status is 0. (test_lifecycle.py shows the deadline
    dropping a client whose socket is full.)"""
    h = Hub.start(tmp_path, env={"LIVEHUB_SHUTDOWN_TIMEOUT": "4"})
    clients = [await h.connect("acme", "u%d" % i) for i in range(3)]
    for c in clients:
        await c.subscribe("feed")
    stalled = await h.connect("acme", "stalled")
    await stalled.subscribe("feed")
    stalled.ws.transport.pause_reading()
    stop = threading.Event()
    results = []

    def publisher():
        stub_channel = grpc.insecure_channel("%s:%d" % (h.grpc_host, h.grpc_port))
        from livehub.v1 import hub_pb2_grpc
        stub = hub_pb2_grpc.HubServiceStub(stub_channel)
        while not stop.is_set():
            try:
                req = hub_pb2.PublishRequest(tenant_id="acme", channel="feed", type="tick")
                req.data.update({"pad": "x" * 2000})
                stub.Publish(req, timeout=30)
                results.append("OK")
            except grpc.RpcError as e:
                results.append(e.code().name)
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
        stub_channel.close()

    threads = [threading.Thread(target=publisher) for _ in range(3)]
    for th in threads:
        th.start()
    while len(results) < 30:
        await asyncio.sleep(0.01)
    h.proc.send_signal(signal.SIGTERM)
    codes = []
    for c in clients:
        code, got = await c.expect_close(timeout=30)
        codes.append(code)
        offsets = [m["offset"] for m in got if m.get("type") == "tick"]
        assert offsets == sorted(offsets), "events out of order"
    status = await asyncio.get_running_loop().run_in_executor(None, h.terminate)
    stalled.ws.transport.abort()  # it never read its close frame
    stop.set()
    for th in threads:
        th.join(30)
    assert codes == [1001, 1001, 1001], codes
    assert status == 0, "exit status %r\n%s" % (status, h.stderr_tail())
    assert set(results) <= {"OK", "UNAVAILABLE", "CANCELLED"}, set(results)
    assert "OK" in results


def metric(hub, line_prefix):
    """The value of the /metrics sample whose name and labels are line_prefix."""
    import http.client
    conn = http.client.HTTPConnection(hub.ws_host, hub.ws_port, timeout=RPC_TIMEOUT)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    for line in body.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    raise AssertionError("no sample %r in /metrics" % line_prefix)


@aio
async def test_disconnects_are_counted(fresh_hub):
    h = fresh_hub
    a1 = await h.connect("acme", "alice")
    a2 = await h.connect("acme", "alice")
    assert disconnect(h, "acme", user_id="alice") == 2
    await closed_with(a1)
    await closed_with(a2)
    s = await h.wait_stats(lambda s: s.connections == 0, "no connection")
    assert (s.disconnects, s.control_commands) == (2, 1)
    assert metric(h, "livehub_disconnects_total") == 2
    assert metric(h, 'livehub_connections_closed_total{reason="disconnected"}') == 2


@aio
async def test_control_calls_need_admin_and_stay_in_their_tenant(tmp_path):
    """With API keys: a publish key may not call the control methods; an
    admin key limited to one tenant may act only there."""
    pub_key, admin_key = "pub-Zq3v9LkWm2XyTt8Rq", "acadm-Mn7Bv5Cx3Zl1Kj9Hq"
    keys = "jobs:publish=%s,acme-ops:admin:acme=%s" % (pub_key, admin_key)
    h = Hub.start(tmp_path, env={"LIVEHUB_API_KEYS": keys})
    try:
        a = await h.connect("acme", "alice")
        g = await h.connect("globex", "alice")

        def call(method, req, key):
            md = [("authorization", "Bearer " + key)]
            return getattr(h.stub, method)(req, timeout=RPC_TIMEOUT, metadata=md)

        for method, req in (
                ("Disconnect", hub_pb2.DisconnectRequest(tenant_id="acme")),
                ("Presence", hub_pb2.PresenceRequest(tenant_id="acme")),
                ("Subscribe", hub_pb2.SubscribeRequest(tenant_id="acme", user_id="alice", channel="x")),
                ("Unsubscribe", hub_pb2.UnsubscribeRequest(tenant_id="acme", user_id="alice", channel="x")),
                ("ListChannels", hub_pb2.ListChannelsRequest(tenant_id="acme"))):
            try:
                call(method, req, pub_key)
                raise AssertionError("%s with a publish key succeeded" % method)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (method, e)
        try:
            call("Disconnect", hub_pb2.DisconnectRequest(tenant_id="globex"), admin_key)
            raise AssertionError("Disconnect of another tenant succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
            assert "tenant_id" in e.details(), e.details()
        assert call("Presence", hub_pb2.PresenceRequest(tenant_id="acme"), admin_key).connections == 1
        assert call("Disconnect", hub_pb2.DisconnectRequest(tenant_id="acme"), admin_key).disconnected == 1
        assert (await closed_with(a))[0] == 4501
        await g.expect_nothing()
    finally:
        h.stop_and_check()
