"""Presence, join/leave and online/offline events, client events
(docs/PROTOCOL.md "Presence" and "Client events")."""

import pytest

from hubtest import Hub, aio, hub_pb2, uniq

ENV = {
    "LIVEHUB_PRESENCE_CHANNELS": "board:*, room",
    "LIVEHUB_CLIENT_EVENTS": "board:*",
    "LIVEHUB_CLIENT_EVENT_RATE": "1",
    "LIVEHUB_CLIENT_EVENT_BURST": "3",
}


@pytest.fixture(scope="module")
def phub(tmp_path_factory):
    h = Hub.start(tmp_path_factory.mktemp("presence"), env=ENV)
    try:
        yield h
    finally:
        h.stop_and_check()


def users_of(resp):
    return [(u.user_id, u.connections) for u in resp.users]


@aio
async def test_presence_counts_users_and_their_devices(phub):
    t = uniq()
    a1 = await phub.connect(t, "alice")
    a2 = await phub.connect(t, "alice")
    b = await phub.connect(t, "bob")
    other = await phub.connect(uniq(), "alice")  # another tenant, same names
    for c in (a1, a2, b, other):
        await c.subscribe("board:1")
    for c in (a1, a2, b):
        await c.barrier()  # the join of bob, on alice's devices
    want = {"type": "presence", "channel": "board:1", "connections": 3,
            "users": [{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}],
            "id": "p1"}
    assert await b.request({"type": "presence", "channel": "board:1", "id": "p1"}) == want
    r = phub.rpc("Presence", hub_pb2.PresenceRequest(tenant_id=t, channel="board:1"))
    assert r.connections == 3 and users_of(r) == [("alice", 2), ("bob", 1)]
    # The whole tenant: every connection, also those on no channel.
    c = await phub.connect(t, "carol")
    r = phub.rpc("Presence", hub_pb2.PresenceRequest(tenant_id=t))
    assert r.connections == 4 and users_of(r) == [("alice", 2), ("bob", 1), ("carol", 1)]
    # Tenant presence for clients is off here.
    err = await c.request({"type": "presence", "channel": "$tenant", "id": 2})
    assert (err["code"], err["id"]) == ("CHANNEL_ACCESS_DENIED", 2), err
    # A channel the client is not on is not shown to it.
    err = await c.request({"type": "presence", "channel": "board:1", "id": 3})
    assert (err["type"], err["code"], err["recoverable"], err["id"]) == (
        "error", "CHANNEL_ACCESS_DENIED", True, 3), err
    err = await c.request({"type": "presence", "id": 4})
    assert (err["code"], err["id"]) == ("BAD_REQUEST", 4), err
    # A channel nobody is on.
    r = phub.rpc("Presence", hub_pb2.PresenceRequest(tenant_id=t, channel="board:none"))
    assert r.connections == 0 and users_of(r) == []
    e = phub.rpc_error("Presence", hub_pb2.PresenceRequest(tenant_id=t, channel="bad channel"))
    assert e.code().name == "INVALID_ARGUMENT" and "channel" in e.details()
    e = phub.rpc_error("Presence", hub_pb2.PresenceRequest(channel="board:1"))
    assert e.code().name == "INVALID_ARGUMENT" and "tenant_id" in e.details()
    await other.expect_nothing()


def member(kind, channel, client):
    return {"type": kind, "channel": channel, "user": client.connected["user"],
            "clientId": client.connected["clientId"]}


@aio
async def test_join_and_leave_are_per_user(phub):
    """A user's first connection on the channel joins, the last one leaves;
    a second device neither joins nor leaves. The connection that causes
    the event does not get it."""
    t = uniq()
    bob = await phub.connect(t, "bob")
    await bob.subscribe("board:7")
    a1 = await phub.connect(t, "alice")
    await a1.subscribe("board:7")
    assert await bob.barrier() == [member("presence:join", "board:7", a1)]
    a2 = await phub.connect(t, "alice")
    await a2.subscribe("board:7")
    await bob.expect_nothing()
    # bob joining is announced to both alice devices.
    await a1.expect_nothing()
    carol = await phub.connect(t, "carol")
    await carol.subscribe("board:7")
    assert await a1.barrier() == [member("presence:join", "board:7", carol)]
    assert await a2.barrier() == [member("presence:join", "board:7", carol)]
    # alice's first device goes: she is still there.
    await a1.close()
    await phub.wait_stats(lambda s: True)
    await bob.request({"type": "presence", "channel": "board:7"})  # after the close is seen
    r = phub.rpc("Presence", hub_pb2.PresenceRequest(tenant_id=t, channel="board:7"))
    assert users_of(r) == [("alice", 1), ("bob", 1), ("carol", 1)]
    await bob.barrier()
    # Her last device unsubscribes: leave, naming that device.
    assert await a2.request({"type": "unsubscribe", "channel": "board:7"}) == {
        "type": "unsubscribed", "channel": "board:7"}
    assert await bob.barrier() == [member("presence:leave", "board:7", a2)]
    assert await carol.barrier() == [member("presence:leave", "board:7", a2)]
    # Closing the connection is a leave too.
    await carol.close()
    left = await bob.next()
    assert left == member("presence:leave", "board:7", carol), left
    # Channels outside LIVEHUB_PRESENCE_CHANNELS send nothing.
    await bob.subscribe("job:7")
    a3 = await phub.connect(t, "alice")
    await a3.subscribe("job:7")
    await a3.close()
    await bob.expect_nothing()
    # An exact pattern ("room") matches only that name.
    await bob.subscribe("room")
    await bob.subscribe("roomy")
    d = await phub.connect(t, "dave")
    await d.subscribe("room")
    await d.subscribe("roomy")
    assert await bob.barrier() == [member("presence:join", "room", d)]


@aio
async def test_tenant_online_and_offline(tmp_path):
    phub = Hub.start(tmp_path, env={"LIVEHUB_TENANT_PRESENCE": "1"})
    try:
        await tenant_online_and_offline(phub)
    finally:
        phub.stop_and_check()


async def tenant_online_and_offline(phub):
    t = uniq()
    watcher = await phub.connect(t, "watcher")
    a1 = await phub.connect(t, "alice")
    assert await watcher.barrier() == [member("user:online", "$tenant", a1)]
    await a1.expect_nothing()
    a2 = await phub.connect(t, "alice")
    await watcher.expect_nothing()
    await a1.close()
    await phub.wait_stats(lambda s: True)
    m = await watcher.request({"type": "presence", "channel": "$tenant", "id": 1})
    assert m["users"] == [{"user": "alice", "connections": 1},
                          {"user": "watcher", "connections": 1}], m
    await a2.close()
    assert await watcher.next() == member("user:offline", "$tenant", a2)
    other = await phub.connect(uniq(), "alice")  # another tenant: not announced here
    await watcher.expect_nothing()
    await other.close()
    r = phub.rpc("Presence", hub_pb2.PresenceRequest(tenant_id=t, channel="$tenant"))
    assert r.connections == 1 and users_of(r) == [("watcher", 1)]
    assert phub.stats().presence_events == 2


@aio
async def test_client_events_reach_the_others_on_the_channel(phub):
    t = uniq()
    alice = await phub.connect(t, "alice")
    bob = await phub.connect(t, "bob")
    a2 = await phub.connect(t, "alice")
    stranger = await phub.connect(uniq(), "bob")  # other tenant, same channel name
    for c in (alice, bob, a2, stranger):
        await c.subscribe("board:1")
    for c in (alice, bob, a2):
        await c.barrier()
    # Forged identity fields in data are only data.
    data = {"typing": True, "user": "mallory", "clientId": "c-forged", "text": "a\nb"}
    reply = await alice.request({"type": "publish", "channel": "board:1", "event": "typing",
                                 "data": data, "id": 42, "user": "mallory"})
    assert reply == {"type": "published", "channel": "board:1", "id": 42}, reply
    want = {"type": "client:typing", "channel": "board:1", "user": "alice",
            "clientId": alice.connected["clientId"], "data": data}
    assert await bob.barrier() == [want]
    assert await a2.barrier() == [want]  # the sender's other device too
    await alice.expect_nothing()  # not the sender itself
    await stranger.expect_nothing()
    # Without data: an empty object. No id: none echoed.
    assert await bob.request({"type": "publish", "channel": "board:1", "event": "stop"}) == {
        "type": "published", "channel": "board:1"}
    assert await alice.barrier() == [{"type": "client:stop", "channel": "board:1", "user": "bob",
                                      "clientId": bob.connected["clientId"], "data": {}}]
    s = phub.stats()
    assert s.client_events >= 2


@aio
async def test_client_events_are_refused_where_not_allowed(phub):
    t = uniq()
    alice = await phub.connect(t, "alice")
    bob = await phub.connect(t, "bob")
    await bob.subscribe("job:1")
    await alice.subscribe("job:1")
    await bob.barrier()

    async def refused(msg, code):
        m = await alice.request(msg)
        assert (m["type"], m["code"], m["recoverable"], m.get("id")) == (
            "error", code, True, msg.get("id")), m

    # Not a client-event channel kind.
    await refused({"type": "publish", "channel": "job:1", "event": "x", "id": 1}, "PERMISSION_DENIED")
    # Allowed kind, but not subscribed.
    await refused({"type": "publish", "channel": "board:2", "event": "x", "id": 2},
                  "CHANNEL_ACCESS_DENIED")
    await refused({"type": "publish", "channel": "$tenant", "event": "x", "id": 3},
                  "CHANNEL_ACCESS_DENIED")
    await refused({"type": "publish", "channel": "board:2", "id": 4}, "BAD_REQUEST")
    await refused({"type": "publish", "channel": "board:2", "event": "no spaces", "id": 5},
                  "BAD_REQUEST")
    await refused({"type": "publish", "channel": "board:2", "event": "e" * 58, "id": 6},
                  "BAD_REQUEST")
    await refused({"type": "publish", "channel": "board:2", "event": "x", "data": [1], "id": 7},
                  "BAD_REQUEST")
    await bob.expect_nothing()


@aio
async def test_client_events_are_rate_limited(phub):
    """Burst 3 at 1 per second: of ten events sent back to back, the first
    three go out and later ones are refused with RATE_LIMITED (a token may
    come back meanwhile on a slow machine, so not exactly seven)."""
    t = uniq()
    alice = await phub.connect(t, "alice")
    bob = await phub.connect(t, "bob")
    await alice.subscribe("board:1")
    await bob.subscribe("board:1")
    await alice.barrier()
    before = phub.stats().client_events_rate_limited
    replies = []
    for i in range(10):
        await alice.send({"type": "publish", "channel": "board:1", "event": "typing", "id": i})
    for i in range(10):
        replies.append(await alice.next())
    assert [r["id"] for r in replies] == list(range(10))
    kinds = [r["type"] if r["type"] == "published" else r["code"] for r in replies]
    assert kinds[:3] == ["published"] * 3, kinds
    assert "RATE_LIMITED" in kinds, kinds
    for r in replies:
        if r["type"] == "error":
            assert r["recoverable"] is True and r["code"] == "RATE_LIMITED", r
    got = await bob.barrier()
    assert len(got) == kinds.count("published")
    assert phub.stats().client_events_rate_limited - before == kinds.count("RATE_LIMITED")


@aio
async def test_presence_config_is_checked(tmp_path):
    from hubtest import BIN, clean_env
    import subprocess
    for bad in ("board:**", "a*b", "bad!*", "$tenant"):
        res = subprocess.run([BIN, "--check-config"], capture_output=True, text=True,
                             env=clean_env({"LIVEHUB_PRESENCE_CHANNELS": bad}), timeout=60)
        assert res.returncode != 0 and "LIVEHUB_PRESENCE_CHANNELS" in res.stderr, (bad, res)
    res = subprocess.run([BIN, "--check-config"], capture_output=True, text=True,
                         env=clean_env({"LIVEHUB_CLIENT_EVENTS": "*,board:*"}), timeout=60)
    assert res.returncode == 0, res.stderr


@aio
async def test_control_calls_announce_like_clients(phub):
    """A service-made subscription joins like a client's own; a Disconnect of
    the user's last connection on the channel is a leave."""
    t = uniq()
    bob = await phub.connect(t, "bob")
    await bob.subscribe("board:5")
    a1 = await phub.connect(t, "alice")
    a2 = await phub.connect(t, "alice")
    r = phub.rpc("Subscribe", hub_pb2.SubscribeRequest(tenant_id=t, user_id="alice", channel="board:5"))
    assert r.subscribed == 2
    got = await bob.barrier()
    assert len(got) == 1 and got[0]["type"] == "presence:join" and got[0]["user"] == "alice", got
    assert got[0]["clientId"] in (a1.connected["clientId"], a2.connected["clientId"])
    # alice's devices see their subscribed frame; the join of her second
    # device is no event (she was there already).
    for c in (a1, a2):
        assert [m["type"] for m in await c.barrier()] == ["subscribed"]
    phub.rpc("Disconnect", hub_pb2.DisconnectRequest(tenant_id=t, user_id="alice"))
    left = await bob.next()
    assert (left["type"], left["user"]) == ("presence:leave", "alice"), left
    await bob.expect_nothing()  # one leave for the user, not one per device


@aio
async def test_recovering_an_implicit_channel_announces_nobody(tmp_path):
    """Naming $tenant with `since` (what clients/js does on every reconnect)
    only recovers it: even with presence events on every channel ("*"), no
    one in the tenant hears a presence:join for it."""
    h = Hub.start(tmp_path, env={"LIVEHUB_PRESENCE_CHANNELS": "*", "LIVEHUB_TENANT_PRESENCE": "0"})
    try:
        t = uniq()
        watcher = await h.connect(t, "bob")
        await watcher.subscribe("board:1")
        c = await h.connect(t, "alice")
        r = h.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id=t, type="news"))
        pos = r.result.channels[0]
        await watcher.barrier()  # the news
        await c.barrier()
        for chan in ("$tenant", "$user:alice"):
            m = await c.request({"type": "subscribe", "channel": chan,
                                 "since": {"offset": pos.offset, "epoch": pos.epoch}})
            assert m["type"] == "subscribed", m
        await c.subscribe("board:1")  # a named channel still announces
        got = await watcher.barrier()
        assert [(m["type"], m["channel"]) for m in got] == [("presence:join", "board:1")], got
    finally:
        h.stop_and_check()
