"""Presence across nodes (issue 7, docs/SCALING.md "Presence across nodes").

Real redis-server, two or three livehub nodes (redistest.cluster). Presence
writes are batched and asynchronous, so every "node 2 sees what node 1 did"
is polled with a generous timeout (redistest.wait_until), never timed.
LIVEHUB_PRESENCE_TTL is small here so that a SIGKILLed node's entries
expire within the test.
"""

import asyncio
import os

import grpc

import opstest
import redistest
from hubtest import aio, closed_with, hub_pb2, uniq

TTL = "2"  # seconds: entries refreshed every ~0.7 s, a dead node's gone within 2 s
ENV = {"LIVEHUB_PRESENCE_TTL": TTL, "LIVEHUB_PRESENCE_CHANNELS": "board:*",
       "LIVEHUB_TENANT_PRESENCE": "1"}
QUIET = {"LIVEHUB_PRESENCE_TTL": TTL}  # no join/leave or online/offline frames


def start(n, redis, env):
    """n nodes, each connected to Redis (ready) before the test goes on:
    a node that has just started may not have subscribed to P:ctl yet."""
    c = redistest.cluster(n, redis, **env)
    for node in c:
        redistest.wait_until(lambda: redistest.readyz(node) == 200, "node ready")
    return c


def rpc_presence(hub, tenant, channel=""):
    r = hub.rpc("Presence", hub_pb2.PresenceRequest(tenant_id=tenant, channel=channel))
    return r.connections, {u.user_id: u.connections for u in r.users}


async def ws_presence(client, channel, rid=7):
    """The client's presence request; returns (connections, {user: n}, frame)."""
    reply = await client.request({"type": "presence", "channel": channel, "id": rid})
    assert reply["type"] == "presence" and reply["id"] == rid, reply
    return reply["connections"], {u["user"]: u["connections"] for u in reply["users"]}, reply


def wait_rpc_presence(hub, tenant, channel, want, what):
    return redistest.wait_until(lambda: rpc_presence(hub, tenant, channel) == want or None,
                                "%s (last %r)" % (what, rpc_presence(hub, tenant, channel)))


async def wait_ws_presence(client, channel, want):
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        n, users, reply = await ws_presence(client, channel)
        if (n, users) == want:
            return reply
        assert asyncio.get_running_loop().time() < deadline, "presence never %r: %r" % (want, reply)
        await asyncio.sleep(0.05)


def events(msgs, etype):
    return [m for m in msgs if m.get("type") == etype]


async def collect(client, etype, n):
    """The users of etype frames until n distinct users came (frames from
    other nodes travel on pub/sub and may come after a barrier), plus any
    that are already queued behind them: a duplicate shows up twice."""
    got = []
    while len(set(got)) < n:
        got.append((await client.wait_for(lambda m: m.get("type") == etype))["user"])
    got += [m["user"] for m in events(await client.barrier(), etype)]
    return got


# -- presence reads -----------------------------------------------------------

@aio
async def test_presence_on_node2_lists_user_connected_on_node1(redis):
    c = start(2, redis, QUIET)
    t, ch = uniq(), "job:" + uniq("j")  # not an announcing channel
    alice = await c[0].connect(t, "alice")
    await alice.subscribe(ch)
    bob = await c[1].connect(t, "bob")
    await bob.subscribe(ch)
    # The client request and the RPC, on node 2, see both nodes.
    reply = await wait_ws_presence(bob, ch, (2, {"alice": 1, "bob": 1}))
    assert "partial" not in reply, reply
    assert reply["users"] == [{"user": "alice", "connections": 1}, {"user": "bob", "connections": 1}]
    wait_rpc_presence(c[1], t, ch, (2, {"alice": 1, "bob": 1}), "channel presence on node 2")
    wait_rpc_presence(c[0], t, "", (2, {"alice": 1, "bob": 1}), "tenant presence on node 1")
    # A second device of alice on node 2: counted per user, cluster-wide.
    alice2 = await c[1].connect(t, "alice")
    await alice2.subscribe(ch)
    wait_rpc_presence(c[0], t, ch, (3, {"alice": 2, "bob": 1}), "alice's two devices")
    # Leaving removes it: unsubscribe on node 1, close on node 2.
    assert (await alice.request({"type": "unsubscribe", "channel": ch}))["type"] == "unsubscribed"
    wait_rpc_presence(c[1], t, ch, (2, {"alice": 1, "bob": 1}), "alice's node-1 device left")
    await alice2.close()
    await wait_ws_presence(bob, ch, (1, {"bob": 1}))
    wait_rpc_presence(c[1], t, "", (2, {"alice": 1, "bob": 1}), "tenant: alice still on node 1")
    await alice.close()
    wait_rpc_presence(c[1], t, "", (1, {"bob": 1}), "tenant: alice gone")
    # Another tenant sees none of it.
    assert rpc_presence(c[1], uniq(), ch) == (0, {})


@aio
async def test_join_and_leave_events_cross_nodes_once_per_user(redis):
    c = start(2, redis, ENV)
    t, ch = uniq(), "board:" + uniq("b")
    bob = await c[1].connect(t, "bob")
    await bob.subscribe(ch)
    watcher = await c[1].connect(t, "watcher")  # on $tenant: online/offline
    # Their own user:online frames are out before alice comes.
    wait_rpc_presence(c[0], t, "", (2, {"bob": 1, "watcher": 1}), "bob and watcher online")
    alice = await c[0].connect(t, "alice")
    online = await watcher.wait_for(lambda m: m.get("type") == "user:online" and m["user"] == "alice")
    assert online == {"type": "user:online", "channel": "$tenant", "user": "alice",
                      "clientId": alice.connected["clientId"]}
    await alice.subscribe(ch)
    join = await bob.wait_for(lambda m: m.get("type") == "presence:join")
    assert join == {"type": "presence:join", "channel": ch, "user": "alice",
                    "clientId": alice.connected["clientId"]}
    # Alice's second device (node 2): she is on the channel already, no join.
    alice2 = await c[1].connect(t, "alice")
    await alice2.subscribe(ch)
    wait_rpc_presence(c[0], t, ch, (3, {"alice": 2, "bob": 1}), "second device written")
    got = await bob.barrier()
    assert events(got, "presence:join") == [], got
    assert events(await watcher.barrier(), "user:online") == []
    # Her first device goes: she is still there, no leave.
    await alice.close()
    wait_rpc_presence(c[0], t, ch, (2, {"alice": 1, "bob": 1}), "first device removed")
    assert events(await bob.barrier(), "presence:leave") == []
    assert events(await watcher.barrier(), "user:offline") == []
    # Her last device goes: leave on the channel, offline on the tenant.
    await alice2.close()
    leave = await bob.wait_for(lambda m: m.get("type") == "presence:leave")
    assert leave == {"type": "presence:leave", "channel": ch, "user": "alice",
                     "clientId": alice2.connected["clientId"]}
    off = await watcher.wait_for(lambda m: m.get("type") == "user:offline")
    assert off["user"] == "alice" and off["clientId"] == alice2.connected["clientId"], off
    assert events(await bob.barrier(), "presence:leave") == []  # exactly once


@aio
async def test_sigkill_of_node1_drops_its_entries_within_the_ttl(redis):
    c = start(2, redis, ENV)
    t, ch = uniq(), "board:" + uniq("b")
    alice = await c[0].connect(t, "alice")
    await alice.subscribe(ch)
    # Her user:online is out before bob comes (bob's replies come in order).
    wait_rpc_presence(c[1], t, ch, (1, {"alice": 1}), "alice present")
    bob = await c[1].connect(t, "bob")
    await bob.subscribe(ch)
    wait_rpc_presence(c[1], t, ch, (2, {"alice": 1, "bob": 1}), "both present")
    redistest.wait_until(lambda: c[1].stats().cluster_nodes == 2, "two nodes alive")
    c.kill(0)
    # No leave from a dead node: the entries expire, whoever reads purges.
    wait_rpc_presence(c[1], t, ch, (1, {"bob": 1}), "alice's entry expired")
    wait_rpc_presence(c[1], t, "", (1, {"bob": 1}), "alice's tenant entry expired")
    leave = await bob.wait_for(lambda m: m.get("type") == "presence:leave")
    assert leave["user"] == "alice" and leave["channel"] == ch, leave
    s = redistest.wait_until(lambda: (lambda s: s if s.cluster_nodes == 1 else None)(c[1].stats()),
                             "node 1's heartbeat expired")
    assert s.cluster_connections == 1 and s.presence_expired >= 1, s
    # What Redis holds is the schema of docs/SCALING.md.
    key = "livehub:{%s:%s}:presence" % (t, ch)
    assert redis.cli("HKEYS", key) == [bob.connected["clientId"]]
    assert redis.cli("HGET", key + ":users", "bob") == "1"
    assert redis.cli("EXISTS", "livehub:node:node1") == 0
    assert redis.cli("EXISTS", "livehub:node:node2") == 1


# -- control commands ---------------------------------------------------------

@aio
async def test_disconnect_user_closes_their_connections_on_every_node(redis):
    c = start(3, redis, QUIET)
    t = uniq()
    devices = [await c[k].connect(t, "alice") for k in (0, 1, 2, 2)]
    bob = await c[0].connect(t, "bob")
    r = c[1].rpc("Disconnect", hub_pb2.DisconnectRequest(tenant_id=t, user_id="alice",
                                                         reason="account suspended"))
    assert r.disconnected == 4, r  # node 2's one, plus nodes 1 and 3
    for d in devices:
        assert await closed_with(d) == (4501, "account suspended")
    await bob.expect_nothing()
    # One connection by its id, on another node, may reconnect.
    b2 = await c[2].connect(t, "bob")
    r = c[0].rpc("Disconnect", hub_pb2.DisconnectRequest(
        tenant_id=t, client_id=b2.connected["clientId"], reconnect=True))
    assert r.disconnected == 1, r
    assert await closed_with(b2) == (4100, "DISCONNECTED")
    await bob.expect_nothing()
    s = c[2].stats()
    assert s.cluster_commands_applied == 2 and c[0].stats().cluster_commands_sent == 1, s


@aio
async def test_subscribe_rpc_puts_user_on_channel_on_every_node(redis):
    c = start(2, redis, QUIET)
    t, ch = uniq(), "board:" + uniq("b")
    a1 = await c[0].connect(t, "alice")
    a2 = await c[1].connect(t, "alice")
    bob = await c[1].connect(t, "bob")
    # The channel has a position in Redis that neither node follows yet.
    for _ in range(3):
        before = c[1].rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch,
                                                            type="w")).result.channels[0]
    assert before.offset == 3
    r = c[0].rpc("Subscribe", hub_pb2.SubscribeRequest(tenant_id=t, user_id="alice", channel=ch))
    assert (r.subscribed, r.already_subscribed, r.refused) == (2, 0, 0), r
    assert (r.offset, r.epoch) == (3, before.epoch), r
    for a in (a1, a2):
        m = await a.wait_for(lambda m: m.get("type") == "subscribed")
        assert m == {"type": "subscribed", "channel": ch, "offset": 3, "epoch": before.epoch}, m
    # Both devices are on it: a publication on node 2 reaches both.
    pub = c[1].rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="x")).result
    for a in (a1, a2):
        m = await a.wait_for(lambda m: m.get("type") == "x")
        assert m["offset"] == pub.channels[0].offset, m
    wait_rpc_presence(c[1], t, ch, (2, {"alice": 2}), "server-side subscriptions in presence")
    # Again: nothing changes anywhere.
    r = c[1].rpc("Subscribe", hub_pb2.SubscribeRequest(tenant_id=t, user_id="alice", channel=ch))
    assert (r.subscribed, r.already_subscribed) == (0, 2), r
    assert (r.offset, r.epoch) == (pub.channels[0].offset, before.epoch), r
    await a1.expect_nothing()
    r = c[1].rpc("Unsubscribe", hub_pb2.UnsubscribeRequest(tenant_id=t, user_id="alice", channel=ch))
    assert r.unsubscribed == 2, r
    for a in (a1, a2):
        m = await a.wait_for(lambda m: m.get("type") == "unsubscribed")
        assert m == {"type": "unsubscribed", "channel": ch}, m
    await bob.expect_nothing()


@aio
async def test_list_channels_gathers_every_node(redis):
    c = start(3, redis, QUIET)
    t = uniq()
    on = {0: ["board:1", "board:2"], 1: ["board:2", "board:3", "job:9"], 2: ["board:4"]}
    for k, chans in on.items():
        cl = await c[k].connect(t, "u%d" % k)
        for ch in chans:
            await cl.subscribe(ch)
    other = await c[2].connect(uniq(), "x")
    await other.subscribe("board:0")  # another tenant: never listed

    def listing(node, prefix="", limit=0):
        r = node.rpc("ListChannels", hub_pb2.ListChannelsRequest(tenant_id=t, prefix=prefix,
                                                                 limit=limit))
        return [(ch.channel, ch.subscribers) for ch in r.channels], r.truncated

    want = [("board:1", 1), ("board:2", 2), ("board:3", 1), ("board:4", 1)]
    assert listing(c[2], "board:") == (want, False)
    assert listing(c[0], "") == (want + [("job:9", 1)], False)
    # The first 2 by name of the cluster, from nodes that each had more.
    assert listing(c[1], "board:", 2) == (want[:2], True)
    assert listing(c[0], "nothing:") == ([], False)


# -- counts and failure -------------------------------------------------------

@aio
async def test_cluster_counts_in_getstats_and_metrics(redis):
    c = start(3, redis, QUIET)
    t = uniq()
    clients = [await c[k].connect(t, "u%d" % k) for k in (0, 1, 1, 2)]
    s = redistest.wait_until(
        lambda: (lambda s: s if (s.cluster_nodes, s.cluster_connections) == (3, 4) else None)(
            c[0].stats()), "3 nodes, 4 connections")
    assert s.presence_writes >= 1 and s.presence_write_batches >= 1, s
    status, _, body = opstest.http_get(c[2], "/metrics")
    assert status == 200
    lines = dict(ln.split(" ", 1) for ln in body.splitlines() if ln and not ln.startswith("#"))
    assert lines["livehub_cluster_nodes"] == "3", body
    assert lines["livehub_cluster_connections"] == "4", body
    # Every cluster presence metric and GetStats field (63-70) is documented.
    root = os.path.join(os.path.dirname(__file__), "..", "..", "docs")
    ops = open(os.path.join(root, "OPERATIONS.md")).read()
    api = open(os.path.join(root, "API.md")).read()
    names = {n.split("{")[0] for n in lines
             if n.startswith(("livehub_cluster_", "livehub_presence_")) and n != "livehub_presence_events_total"}
    assert len(names) == 7, names
    for n in names:
        assert "`%s`" % n in ops, "docs/OPERATIONS.md does not document %s" % n
    for f in hub_pb2.GetStatsResponse.DESCRIPTOR.fields:
        if 63 <= f.number <= 70:
            assert "`%s` (%d)" % (f.name, f.number) in api, "docs/API.md: GetStats %s" % f.name
    c.stop(2)  # a clean stop leaves at once, no TTL wait needed
    redistest.wait_until(lambda: (c[0].stats().cluster_nodes, c[0].stats().cluster_connections)
                         == (2, 3), "node 3 left")
    assert clients


@aio
async def test_redis_down_presence_answers_partial_and_rpc_unavailable(redis):
    c = start(2, redis, QUIET)
    t, ch = uniq(), "job:" + uniq("j")
    alice = await c[0].connect(t, "alice")
    await alice.subscribe(ch)
    bob = await c[1].connect(t, "bob")
    await bob.subscribe(ch)
    await wait_ws_presence(bob, ch, (2, {"alice": 1, "bob": 1}))
    redis.stop()
    redistest.wait_until(lambda: redistest.readyz(c[1]) == 503, "node 2 not ready")
    # The client keeps an answer: this node's connections, flagged partial.
    n, users, reply = await ws_presence(bob, ch)
    assert (n, users, reply.get("partial")) == (1, {"bob": 1}, True), reply
    e = c[1].rpc_error("Presence", hub_pb2.PresenceRequest(tenant_id=t, channel=ch))
    assert e.code() == grpc.StatusCode.UNAVAILABLE and "redis unavailable" in e.details(), e
    e = c[1].rpc_error("Disconnect", hub_pb2.DisconnectRequest(tenant_id=t, user_id="nobody"))
    assert e.code() == grpc.StatusCode.UNAVAILABLE and "this node only" in e.details(), e
    # Redis comes back empty: every node writes its entries again.
    redis.start()
    redistest.wait_until(lambda: redistest.readyz(c[1]) == 200, "node 2 ready again")
    await wait_ws_presence(bob, ch, (2, {"alice": 1, "bob": 1}))


@aio
async def test_clean_stop_leaves_at_once(redis):
    # A TTL far beyond the wait below: only the stopping node's own removal
    # can make its users leave in time.
    c = start(2, redis, dict(ENV, LIVEHUB_PRESENCE_TTL="300"))
    t, ch = uniq(), "board:" + uniq("b")
    alice = await c[0].connect(t, "alice")
    await alice.subscribe(ch)
    wait_rpc_presence(c[1], t, ch, (1, {"alice": 1}), "alice present")
    bob = await c[1].connect(t, "bob")
    await bob.subscribe(ch)
    c.stop(0)
    got = {}
    while len(got) < 2:  # in either order
        m = await bob.wait_for(lambda m: m.get("type") in ("presence:leave", "user:offline"))
        got[m["type"]] = m
    cid = alice.connected["clientId"]
    assert got["presence:leave"] == {"type": "presence:leave", "channel": ch, "user": "alice",
                                     "clientId": cid}, got
    assert got["user:offline"] == {"type": "user:offline", "channel": "$tenant", "user": "alice",
                                   "clientId": cid}, got
    assert rpc_presence(c[1], t, ch) == (1, {"bob": 1})
    assert redis.cli("EXISTS", "livehub:node:node1") == 0


@aio
async def test_sighup_keeps_presence_across_nodes(redis, tmp_path):
    """A reload replaces the presence settings: the new ones are wired to
    the cluster again (announcements, Subscribe with Redis's position)."""
    import json
    import signal
    cfg = tmp_path / "livehub.json"
    cfg.write_text(json.dumps({"presence_channels": "room:*"}))
    c = start(2, redis, dict(QUIET, LIVEHUB_CONFIG=str(cfg)))
    t = uniq()
    cfg.write_text(json.dumps({"presence_channels": "board:*"}))
    for node in c:
        node.proc.send_signal(signal.SIGHUP)
    for node in c:
        redistest.wait_until(lambda: "event=reload_applied" in node.stderr_text(), "reloaded")
    ch = "board:" + uniq("b")
    bob = await c[1].connect(t, "bob")
    await bob.subscribe(ch)
    alice = await c[0].connect(t, "alice")
    await alice.subscribe(ch)
    join = await bob.wait_for(lambda m: m.get("type") == "presence:join")
    assert join["user"] == "alice", join
    pub = c[1].rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="job:x", type="w"))
    r = c[0].rpc("Subscribe", hub_pb2.SubscribeRequest(tenant_id=t, user_id="alice",
                                                       channel="job:x"))
    assert (r.subscribed, r.offset, r.epoch) == (1, 1, pub.result.channels[0].epoch), r
    wait_rpc_presence(c[1], t, ch, (2, {"alice": 1, "bob": 1}), "both present")


@aio
async def test_concurrent_devices_give_one_join_and_one_leave_per_user(redis):
    c = start(3, redis, ENV)
    t, ch = uniq(), "board:" + uniq("b")
    watcher = await c[0].connect(t, "watcher")
    await watcher.subscribe(ch)
    users = ["u%d" % i for i in range(10)]
    # Each user has a device on every node; all subscribe at once.
    devices = await asyncio.gather(*(c[k].connect(t, u) for u in users for k in range(3)))
    await asyncio.gather(*(d.send({"type": "subscribe", "channel": ch}) for d in devices))
    want = {u: 3 for u in users}
    want["watcher"] = 1
    wait_rpc_presence(c[1], t, ch, (31, want), "every device present")
    assert sorted(await collect(watcher, "presence:join", len(users))) == users
    # All go at once: one leave per user, when their last device went.
    await asyncio.gather(*(d.close() for d in devices))
    wait_rpc_presence(c[2], t, ch, (1, {"watcher": 1}), "every device gone")
    assert sorted(await collect(watcher, "presence:leave", len(users))) == users
    key = "livehub:{%s:%s}:presence" % (t, ch)
    assert redis.cli("HGETALL", key + ":users") == ["watcher", "1"]
    assert redis.cli("ZCARD", key + ":exp") == 1
