"""Several livehub nodes over one real redis-server (issue 7).

Every test runs its own redis-server (the `redis` fixture) and its own
nodes (redistest.cluster): publish anywhere, deliver everywhere exactly
once and in order with the same offset and epoch on every node; tenant
isolation across nodes; a client moved to another node, or whose node was
SIGKILLed, recovers exactly what it missed; Redis going away and coming
back. Without LIVEHUB_REDIS_URL (every other test file) the hub is the
single node it always was, with no Redis anywhere.

Cross-node delivery is asynchronous (the publish call returns when Redis
has the publication, not when every node has delivered it), so "exactly
once" is proved with fences, never with sleeps: after its publications a
test publishes a fence event on each channel and reads until the fence;
delivery is in order per channel, so everything published before the
fence has arrived by then, and a ping/pong barrier after it shows that
nothing else (no duplicate) is queued. "Nothing crossed" from another
tenant uses the same node's fan-out: a node hands one message from Redis
to all its local subscribers at once, so once the right tenant's client on
that node has it, a barrier on the other tenant's client on the same node
proves that no copy was queued there.
"""

import asyncio
import threading

import grpc

import hubtest
import opstest
import redistest
from hubtest import aio, check_event, hub_pb2, uniq

H = opstest.health_pb2


def publish(hub, tenant, channel, etype="n", **data):
    return hubtest.publish(hub, tenant, channel, etype, **data)


def since(offset, epoch):
    return {"offset": offset, "epoch": epoch}


def fence(hub, tenant, channel):
    return publish(hub, tenant, channel, "fence")


async def read_until_fences(client, channels):
    """Reads event frames until a `fence` event has come on every channel
    in channels; returns {channel: [events, fence last]}. Any frame that is
    not an event of one of those channels fails."""
    got = {ch: [] for ch in channels}
    open_ = set(channels)
    while open_:
        m = await client.next()
        ch = m.get("channel")
        assert ch in got, "unexpected frame %r (want events of %s)" % (m, sorted(channels))
        assert ch in open_, "event after the fence on %s: %r" % (ch, m)
        got[ch].append(m)
        if m["type"] == "fence":
            open_.discard(ch)
    return got


def positions(events):
    return [(m["offset"], m["epoch"]) for m in events]


def result_positions(results):
    return [(r.offset, r.epoch) for r in results]


def health(hub):
    stub = opstest.health_pb2_grpc.HealthStub(hub.channel)
    return stub.Check(H.HealthCheckRequest(service=""), timeout=30).status


def shard_subscribers(redis, tenant, channel, prefix="livehub"):
    """How many Redis connections (nodes) are subscribed to the channel's
    sharded pub/sub channel P:{T:C}."""
    name = "%s:{%s:%s}" % (prefix, tenant, channel)
    reply = redis.cli("PUBSUB", "SHARDNUMSUB", name)
    assert reply[0] == name, reply
    return reply[1]


# -- publish anywhere, deliver everywhere ----------------------------------

@aio
async def test_publish_on_node1_reaches_nodes_2_and_3_once_in_order(redis):
    c = redistest.cluster(3, redis)
    t = uniq()
    chans = ["board:" + uniq("b"), "job:" + uniq("j"), "order:" + uniq("o"), "project:" + uniq("p")]
    # On every node: one client on all four channels, and one per channel.
    everyone, single, sub_epochs = [], [], {ch: set() for ch in chans}
    for node in c:
        a = await node.connect(t, "alice")
        for ch in chans:
            sub = await a.subscribe(ch)
            assert sub["offset"] == 0, sub  # new channels, cluster-wide
            sub_epochs[ch].add(sub["epoch"])
        everyone.append(a)
        for k, ch in enumerate(chans):
            s = await node.connect(t, "u%d" % k)
            await s.subscribe(ch)
            single.append((s, ch))
    # Each channel's sharded pub/sub channel has exactly one subscriber per node.
    for ch in chans:
        assert shard_subscribers(redis, t, ch) == 3, ch

    # 50 publications per channel, interleaved over channels, all on node 1.
    results = {ch: [] for ch in chans}
    for i in range(50):
        for ch in chans:
            results[ch].append(publish(c[0], t, ch, seq=i))
    for ch in chans:
        results[ch].append(fence(c[0], t, ch))
        # Offsets assigned in Redis: 1..51, one epoch per channel.
        assert [r.offset for r in results[ch]] == list(range(1, 52)), ch
        # One epoch per channel: the one every node's `subscribed` gave,
        # so a client that saw offset 0 there can recover from it.
        assert {r.epoch for r in results[ch]} == sub_epochs[ch], ch

    for a in everyone:
        got = await read_until_fences(a, chans)
        for ch in chans:
            assert positions(got[ch]) == result_positions(results[ch]), ch
            assert [m["data"].get("seq") for m in got[ch][:-1]] == list(range(50)), ch
            for m, r in zip(got[ch], results[ch]):
                check_event(m, "fence" if "seq" not in m["data"] else "n", ch, r.channels[0],
                            m["data"])
        assert await a.barrier() == [], "more than once"
    for s, ch in single:
        got = await read_until_fences(s, [ch])
        assert positions(got[ch]) == result_positions(results[ch]), ch
        assert [m["data"].get("seq") for m in got[ch][:-1]] == list(range(50)), ch
        assert await s.barrier() == []


@aio
async def test_concurrent_publishers_on_all_nodes_give_one_order_everywhere(redis):
    """Three publishers (one per node) on one channel at once: offsets are
    unique and contiguous, and every client on every node sees the same
    sequence, each publisher's own publications in its order."""
    c = redistest.cluster(3, redis)
    t, ch = uniq(), "board:" + uniq("b")
    clients = []
    for node in c:
        for u in ("alice", "bob"):
            cl = await node.connect(t, u)
            await cl.subscribe(ch)
            clients.append(cl)
    N = 40
    results = [[] for _ in c]

    def publisher(k):
        for i in range(N):
            results[k].append(publish(c[k], t, ch, node=k, seq=i))

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(len(c))]
    for th in threads:
        th.start()
    await asyncio.to_thread(lambda: [th.join() for th in threads])
    for k in range(len(c)):
        assert len(results[k]) == N, "publisher %d failed" % k
        offs = [r.offset for r in results[k]]
        assert offs == sorted(offs), "one publisher's calls out of order: %r" % offs
    by_offset = {r.offset: (k, i) for k in range(len(c)) for i, r in enumerate(results[k])}
    assert sorted(by_offset) == list(range(1, 3 * N + 1)), "offsets not unique and contiguous"
    epochs = {r.epoch for rs in results for r in rs}
    assert len(epochs) == 1, epochs
    f = fence(c[1], t, ch)
    assert f.offset == 3 * N + 1
    want = [{"node": float(by_offset[o][0]), "seq": float(by_offset[o][1])}
            for o in range(1, 3 * N + 1)]
    for cl in clients:
        got = (await read_until_fences(cl, [ch]))[ch]
        assert [m["offset"] for m in got] == list(range(1, 3 * N + 2))
        assert {m["epoch"] for m in got} == epochs
        assert [m["data"] for m in got[:-1]] == want
        assert await cl.barrier() == []


@aio
async def test_nodes_subscribe_in_redis_only_to_channels_with_local_subscribers(redis):
    c = redistest.cluster(3, redis)
    t, ch, other = uniq(), "job:" + uniq("j"), "job:" + uniq("k")
    a = await c[1].connect(t, "alice")
    await a.subscribe(ch)
    assert shard_subscribers(redis, t, ch) == 1  # node 2 only
    assert shard_subscribers(redis, t, other) == 0
    b = await c[1].connect(t, "bob")
    await b.subscribe(ch)
    assert shard_subscribers(redis, t, ch) == 1  # still one per node
    d = await c[2].connect(t, "dan")
    await d.subscribe(ch)
    assert shard_subscribers(redis, t, ch) == 2
    r = publish(c[0], t, ch, seq=1)
    for cl in (a, b, d):
        check_event(await cl.next(), "n", ch, r.channels[0], {"seq": 1})
    # Node 1 has no subscriber: the publication was not delivered there.
    assert r.subscribers == 0
    # The last local subscriber leaving unsubscribes the node.
    assert (await d.request({"type": "unsubscribe", "channel": ch, "id": 1}))["type"] == "unsubscribed"
    redistest.wait_until(lambda: shard_subscribers(redis, t, ch) == 1, "node 3 unsubscribed")
    await a.close()
    await b.close()
    redistest.wait_until(lambda: shard_subscribers(redis, t, ch) == 0, "node 2 unsubscribed")


# -- tenant isolation ------------------------------------------------------

@aio
async def test_tenant_isolation_across_nodes(redis):
    """Two tenants, the same channel and user names, clients of both on
    every node; each tenant publishes on a different node. Every client gets
    exactly its own tenant's publications (channel, $tenant, $user)."""
    c = redistest.cluster(3, redis)
    ta, tb = uniq("ta"), uniq("tb")
    names = ["board:1", "job:7"]
    clients = {ta: [], tb: []}
    for node in c:
        for t in (ta, tb):
            cl = await node.connect(t, "alice")
            for ch in names:
                await cl.subscribe(ch)
            clients[t].append(cl)
    results = {ta: {}, tb: {}}
    for t, node in ((ta, c[0]), (tb, c[1])):
        for ch in names:
            results[t][ch] = [publish(node, t, ch, tn=t, seq=i) for i in range(20)]
        results[t]["$tenant"] = [node.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(
            tenant_id=t, type="n")).result for _ in range(5)]
        results[t]["$user:alice"] = [node.rpc("SendToUser", hub_pb2.SendToUserRequest(
            tenant_id=t, user_id="alice", type="n")).result for _ in range(5)]
    # Fences only for tenant A: B's clients must see nothing more than
    # their own, which they have all read before A's fences are checked.
    for t, node in ((ta, c[0]), (tb, c[1])):
        for ch in names:
            results[t][ch].append(fence(node, t, ch))
        results[t]["$tenant"].append(node.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(
            tenant_id=t, type="fence")).result)
        results[t]["$user:alice"].append(node.rpc("SendToUser", hub_pb2.SendToUserRequest(
            tenant_id=t, user_id="alice", type="fence")).result)
    all_chans = names + ["$tenant", "$user:alice"]
    for t in (ta, tb):
        for cl in clients[t]:
            got = await read_until_fences(cl, all_chans)
            for ch in all_chans:
                assert positions(got[ch]) == result_positions(results[t][ch]), (t, ch)
            for ch in names:
                assert all(m["data"].get("tn") in (t, None) for m in got[ch]), (t, ch)
                assert [m["data"].get("seq") for m in got[ch][:-1]] == list(range(20))
    # Both tenants' fences have arrived on every node: no copy of the other
    # tenant's frames is queued anywhere.
    for t in (ta, tb):
        for cl in clients[t]:
            assert await cl.barrier() == [], t


# -- recovery on another node ----------------------------------------------

@aio
async def test_client_moved_from_node2_to_node3_recovers_exactly_what_it_missed(redis):
    c = redistest.cluster(3, redis)
    t, ch = uniq(), "job:" + uniq("j")
    a = await c[1].connect(t, "alice")
    sub = await a.subscribe(ch)
    assert sub["offset"] == 0
    seen = []
    for i in range(10):
        r = publish(c[0], t, ch, seq=i)
        m = await a.next()
        check_event(m, "n", ch, r.channels[0], {"seq": i})
        seen.append(m)
    last = seen[-1]
    await a.close()
    missed = [publish(c[0], t, ch, seq=i) for i in range(10, 30)]

    b = await c[2].connect(t, "alice")
    reply = await b.request({"type": "subscribe", "channel": ch, "id": "m1",
                             "since": since(last["offset"], last["epoch"])})
    assert reply == {"type": "subscribed", "channel": ch, "id": "m1", "recovered": True,
                     "offset": missed[-1].offset, "epoch": last["epoch"]}, reply
    for i, r in enumerate(missed):
        check_event(await b.next(), "n", ch, r.channels[0], {"seq": i + 10})
    # Then live, from node 1, continuing the offsets.
    live = publish(c[0], t, ch, seq=30)
    assert live.offset == missed[-1].offset + 1
    check_event(await b.next(), "n", ch, live.channels[0], {"seq": 30})
    assert await b.barrier() == []


@aio
async def test_recovery_on_another_node_while_publishing_goes_on(redis):
    """The hand-over from replay to live delivery on the new node, with a
    publisher running on node 1 all along: every publication after the last
    one seen arrives exactly once, in order, offsets contiguous."""
    c = redistest.cluster(3, redis)
    t, ch = uniq(), "board:" + uniq("b")
    a = await c[1].connect(t, "u")
    await a.subscribe(ch)
    publish(c[0], t, ch, seq=0)
    first = await a.next()
    await a.close()
    for i in range(1, 20):
        publish(c[0], t, ch, seq=i)
    b = await c[2].connect(t, "u")
    stop = threading.Event()
    published = []

    def publisher():
        i = 20
        while not stop.is_set() and i < 400:
            published.append(publish(c[0], t, ch, seq=i))
            i += 1

    th = threading.Thread(target=publisher)
    th.start()
    try:
        while len(published) < 5:  # the publisher is going
            await asyncio.sleep(0.01)
        reply = await b.request({"type": "subscribe", "channel": ch,
                                 "since": since(first["offset"], first["epoch"])})
        assert reply["recovered"] is True, reply
        # Let live publications overlap the replay (a wait on progress).
        k = len(published)
        while len(published) < k + 20 and th.is_alive():
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await asyncio.to_thread(th.join)
    f = fence(c[0], t, ch)
    got = (await read_until_fences(b, [ch]))[ch]
    n = len(published) + 20  # seq 1..19 and the publisher's, and the fence
    assert [m["offset"] for m in got] == list(range(first["offset"] + 1, f.offset + 1))
    assert len(got) == n
    assert [m["data"].get("seq") for m in got[:-1]] == list(range(1, n))
    assert await b.barrier() == []


@aio
async def test_sigkill_of_a_node_loses_nothing_within_history(redis):
    c = redistest.cluster(3, redis)
    t = uniq()
    chans = ["job:" + uniq("j"), "board:" + uniq("b")]
    users = ["alice", "bob", "carol"]
    victims = []
    for u in users:
        v = await c[1].connect(t, u)
        for ch in chans:
            await v.subscribe(ch)
        victims.append(v)
    last = {}
    for i in range(5):
        for ch in chans:
            publish(c[0], t, ch, seq=i)
    fences = {ch: fence(c[0], t, ch) for ch in chans}
    for v in victims:
        got = await read_until_fences(v, chans)
        last[id(v)] = {ch: got[ch][-1] for ch in chans}
        for ch in chans:
            assert got[ch][-1]["offset"] == fences[ch].offset

    c.kill(1)
    for v in victims:
        code, _ = await v.expect_close()
        assert code in (None, 1006), code  # the TCP connection just went away
    # Publishing goes on on node 1 while node 2 is gone.
    missed = {ch: [publish(c[0], t, ch, seq=i) for i in range(5, 25)] for ch in chans}
    for k, v in enumerate(victims):
        node = c[0] if k % 2 == 0 else c[2]
        n = await node.connect(t, users[k])
        for ch in chans:
            seen = last[id(v)][ch]
            reply = await n.request({"type": "subscribe", "channel": ch,
                                     "since": since(seen["offset"], seen["epoch"])})
            assert reply["recovered"] is True and reply["offset"] == missed[ch][-1].offset, reply
            for i, r in enumerate(missed[ch]):
                check_event(await n.next(), "n", ch, r.channels[0], {"seq": i + 5})
        assert await n.barrier() == []
    # The killed node comes back under its id: history and epochs were in
    # Redis, so a client recovers there too.
    h = c.replace(1)
    n = await h.connect(t, "dave")
    seen = last[id(victims[0])][chans[0]]
    reply = await n.request({"type": "subscribe", "channel": chans[0],
                             "since": since(seen["offset"], seen["epoch"])})
    assert reply["recovered"] is True and reply["epoch"] == seen["epoch"], reply
    got = [await n.next() for _ in missed[chans[0]]]
    assert positions(got) == result_positions(missed[chans[0]])
    r = publish(c[2], t, chans[0], seq=99)
    check_event(await n.next(), "n", chans[0], r.channels[0], {"seq": 99})


# -- Redis going away and coming back --------------------------------------

@aio
async def test_redis_down_keeps_clients_and_readiness_false_and_heals(redis):
    """Redis stops (what redis-core decided, docs/SCALING.md "Failure
    behaviour"): WebSocket connections stay open and served; /readyz 503
    and gRPC health NOT_SERVING on every node (/healthz stays 200);
    publishes fail UNAVAILABLE "redis unavailable: …" since offsets come
    from Redis; what does not need Redis keeps going on each node: client
    events reach the same node's subscribers (and only them). Redis comes
    back (empty: no persistence) and the nodes heal by themselves: ready
    again, subscriptions re-established, cross-node delivery in a new epoch."""
    c = redistest.cluster(2, redis, LIVEHUB_CLIENT_EVENTS="board:*")
    t, ch = uniq(), "board:" + uniq("b")
    alice = await c[0].connect(t, "alice")
    carol = await c[0].connect(t, "carol")  # alice's node
    bob = await c[1].connect(t, "bob")
    clients = [alice, carol, bob]
    for cl in clients:
        await cl.subscribe(ch)
    r0 = publish(c[0], t, ch, seq=0)
    for cl in clients:
        check_event(await cl.next(), "n", ch, r0.channels[0], {"seq": 0})
    for node in c:
        assert redistest.readyz(node) == 200
        assert health(node) == H.HealthCheckResponse.SERVING

    redis.stop()
    for node in c:
        redistest.wait_until(lambda: redistest.readyz(node) == 503, "/readyz 503 without Redis")
        assert health(node) == H.HealthCheckResponse.NOT_SERVING
        assert opstest.http_get(node, "/healthz")[0] == 200  # alive, just not ready
        # A publish needs Redis (its offset is assigned there): UNAVAILABLE, said so.
        for k in range(3):
            e = node.rpc_error("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="n"))
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            assert e.details().startswith("redis unavailable"), e.details()
    # Local delivery goes on: a client event reaches alice's node's subscribers.
    reply = await alice.request({"type": "publish", "channel": ch, "event": "typing", "id": 1})
    assert reply == {"type": "published", "channel": ch, "id": 1}, reply
    assert await carol.next() == {"type": "client:typing", "channel": ch, "user": "alice",
                                  "clientId": alice.connected["clientId"], "data": {}}
    # Every connection is still open and answering.
    for cl in clients:
        assert await cl.barrier() == []

    redis.start()  # same port, empty: the history is gone with it
    for node in c:
        redistest.wait_until(lambda: redistest.readyz(node) == 200, "/readyz 200 again")
        assert health(node) == H.HealthCheckResponse.SERVING
    # The subscriptions came back by themselves: node 1 reaches node 2.
    r1 = publish(c[0], t, ch, seq=1)
    # Redis lost the channel's history, so its epoch changed: a client
    # cannot mistake the new offsets for the old ones.
    assert r1.epoch != r0.epoch, (r0, r1)
    # The next frame on node 2 is r1: the outage's client event never
    # crossed (late) and no failed publish was delivered after all.
    for cl in clients:
        check_event(await cl.next(), "n", ch, r1.channels[0], {"seq": 1})
    r2 = publish(c[1], t, ch, seq=2)
    for cl in clients:
        check_event(await cl.next(), "n", ch, r2.channels[0], {"seq": 2})
        assert await cl.barrier() == []
    # A client still at the old epoch learns that it missed something.
    d = await c[1].connect(t, "alice")
    m = await d.request({"type": "subscribe", "channel": ch, "since": since(r0.offset, r0.epoch)})
    assert m["recovered"] is False and m["epoch"] == r2.epoch and m["offset"] == r2.offset, m
    assert await d.barrier() == []


@aio
async def test_node_started_without_redis_is_not_ready_until_redis_comes(redis):
    redis.stop()
    c = redistest.cluster(1, redis)
    assert redistest.readyz(c[0]) == 503
    assert health(c[0]) == H.HealthCheckResponse.NOT_SERVING
    redis.start()
    redistest.wait_until(lambda: redistest.readyz(c[0]) == 200, "/readyz 200 once Redis is up")
    t, ch = uniq(), "job:" + uniq("j")
    cl = await c[0].connect(t, "alice")
    await cl.subscribe(ch)
    r = publish(c[0], t, ch, seq=0)
    check_event(await cl.next(), "n", ch, r.channels[0], {"seq": 0})


# -- client events ---------------------------------------------------------

@aio
async def test_client_events_cross_nodes_once_and_not_to_the_sender(redis):
    c = redistest.cluster(3, redis, LIVEHUB_CLIENT_EVENTS="board:*")
    t, ch = uniq(), "board:" + uniq("b")
    alice = await c[0].connect(t, "alice")
    bob = await c[1].connect(t, "bob")
    a2 = await c[2].connect(t, "alice")  # the sender's other device
    carol = await c[0].connect(t, "carol")  # on the sender's node
    stranger = await c[1].connect(uniq(), "bob")  # another tenant, same channel name
    for cl in (alice, bob, a2, carol, stranger):
        await cl.subscribe(ch)
    data = {"card": "c9", "user": "mallory"}
    for ev, d in (("typing", data), ("fence", {})):
        reply = await alice.request({"type": "publish", "channel": ch, "event": ev, "data": d,
                                     "id": ev})
        assert reply == {"type": "published", "channel": ch, "id": ev}, reply
    want = [{"type": "client:" + ev, "channel": ch, "user": "alice",
             "clientId": alice.connected["clientId"], "data": d}
            for ev, d in (("typing", data), ("fence", {}))]
    for cl in (bob, a2, carol):
        got = [await cl.next(), await cl.next()]
        assert got == want
        assert await cl.barrier() == []
    # Every node had both frames: none for the sender, none for the other tenant.
    assert await alice.barrier() == []
    assert await stranger.barrier() == []


# -- connection settings ------------------------------------------

@aio
async def test_a_node_on_the_unix_socket_joins_the_others(redis):
    c = redistest.cluster(1, redis)
    c.add(LIVEHUB_REDIS_URL=redis.unix_url)
    t, ch = uniq(), "job:" + uniq("j")
    a = await c[1].connect(t, "alice")
    b = await c[0].connect(t, "bob")
    for cl in (a, b):
        await cl.subscribe(ch)
    for k, node in enumerate(c):
        p = publish(node, t, ch, seq=k)
        for cl in (a, b):
            check_event(await cl.next(), "n", ch, p.channels[0], {"seq": k})

