"""Redis mode, the broker underneath (redis-core): History and idempotency
across nodes, epochs that outlive a node, a stream that lost entries, the
publish script reloaded after SCRIPT FLUSH, AUTH and SELECT from the URL,
subscribes while Redis is down, the Redis stats. The issue's end-to-end list
(delivery on three nodes, isolation, moved and killed clients, Redis down
and back) is test_cluster.py's (redis-test).
"""

import grpc

import opstest
import redistest
from hubtest import aio, check_event, hub_pb2, uniq


def cluster(n, redis, **kw):
    """redistest.cluster, once every node has reached Redis (a node starts
    before it has, and says so with /readyz)."""
    c = redistest.cluster(n, redis, **kw)
    for node in c:
        redistest.wait_until(lambda: redistest.readyz(node) == 200, "node ready")
    return c


def publish(hub, tenant, channel, etype="n", key="", **data):
    req = hub_pb2.PublishRequest(tenant_id=tenant, channel=channel, type=etype,
                                 idempotency_key=key)
    req.data.update(data)
    return hub.rpc("Publish", req)


def history(hub, tenant, channel, limit=0, since=None):
    req = hub_pb2.HistoryRequest(tenant_id=tenant, channel=channel, limit=limit)
    if since is not None:
        req.since.offset, req.since.epoch = since
    return hub.rpc("History", req)


@aio
async def test_history_rpc_reads_the_stream_from_any_node(redis):
    c = cluster(2, redis)
    t, ch = uniq(), "job:" + uniq("j")
    results = [publish(c[0], t, ch, seq=i).result for i in range(5)]
    epoch = results[0].epoch
    assert [r.offset for r in results] == [1, 2, 3, 4, 5]
    # Node 2 never had a subscriber on the channel: it reads Redis.
    h = history(c[1], t, ch)
    assert (h.offset, h.epoch) == (5, epoch)
    assert [(p.offset, p.epoch, p.type) for p in h.publications] == [
        (i, epoch, "n") for i in range(1, 6)]
    assert '"seq": 2' in h.publications[2].data_json.replace('":', '": ')
    assert [p.offset for p in history(c[1], t, ch, limit=2).publications] == [4, 5]
    got = history(c[1], t, ch, limit=2, since=(1, epoch))
    assert got.recovered and [p.offset for p in got.publications] == [2, 3]
    got = history(c[1], t, ch, since=(5, epoch))
    assert got.recovered and list(got.publications) == []
    got = history(c[1], t, ch, since=(2, "0123456789abcdef"))
    assert not got.recovered and list(got.publications) == []
    empty = history(c[1], t, "job:" + uniq("none"))
    assert (empty.offset, list(empty.publications)) == (0, [])


@aio
async def test_idempotency_key_holds_across_nodes(redis):
    c = cluster(2, redis)
    t, ch = uniq(), "board:" + uniq("b")
    cl = await c[1].connect(t, "bob")
    await cl.subscribe(ch)
    first = publish(c[0], t, ch, key="k-1", seq=1)
    again = publish(c[1], t, ch, key="k-1", seq=1)  # a retry through another node
    assert not first.result.duplicate and again.result.duplicate
    assert (again.result.offset, again.result.epoch) == (first.result.offset, first.result.epoch)
    check_event(await cl.next(), "n", ch, first.result.channels[0], {"seq": 1})
    assert await cl.barrier() == [], "the retry was delivered again"
    e = c[1].rpc_error("Publish", hub_pb2.PublishRequest(
        tenant_id=t, channel=ch, type="n", idempotency_key="k-1"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e


@aio
async def test_epoch_and_offsets_outlive_the_node(redis):
    c = cluster(1, redis)
    t, ch = uniq(), "order:" + uniq("o")
    a = await c[0].connect(t, "alice")
    sub = await a.subscribe(ch)
    r = [publish(c[0], t, ch, seq=i).result for i in range(3)]
    assert r[0].epoch == sub["epoch"]
    for i in range(3):
        check_event(await a.next(), "n", ch, r[i].channels[0], {"seq": i})
    c.stop(0)
    node = c.replace(0)
    redistest.wait_until(lambda: redistest.readyz(node) == 200, "restarted node ready")
    # The restarted node knows the channel from Redis: same epoch, and a
    # client that saw offset 1 recovers 2 and 3.
    b = await node.connect(t, "alice")
    m = await b.request({"type": "subscribe", "channel": ch,
                         "since": {"offset": 1, "epoch": r[0].epoch}})
    assert (m["type"], m["offset"], m["epoch"], m["recovered"]) == ("subscribed", 3, r[0].epoch,
                                                                   True), m
    for i in (1, 2):
        check_event(await b.next(), "n", ch, r[i].channels[0], {"seq": i})
    r3 = publish(node, t, ch, seq=3).result
    assert (r3.offset, r3.epoch) == (4, r[0].epoch)
    check_event(await b.next(), "n", ch, r3.channels[0], {"seq": 3})
    assert await b.barrier() == []


@aio
async def test_entries_missing_from_the_stream_give_recovered_false(redis):
    c = cluster(2, redis)
    t, ch = uniq(), "job:" + uniq("j")
    r = [publish(c[0], t, ch, seq=i).result for i in range(4)]
    # Entry 2 is gone (as if trimmed): a recovery from 1 cannot be whole.
    redis.cli("XDEL", "livehub:{%s:%s}:stream" % (t, ch), "2-0")
    b = await c[1].connect(t, "bob")
    m = await b.request({"type": "subscribe", "channel": ch,
                         "since": {"offset": 1, "epoch": r[0].epoch}})
    assert (m["offset"], m["epoch"], m["recovered"]) == (4, r[0].epoch, False), m
    assert await b.barrier() == [], "something was replayed"
    # From 2 on, the stream is whole again.
    d = await c[1].connect(t, "dave")
    m = await d.request({"type": "subscribe", "channel": ch,
                         "since": {"offset": 2, "epoch": r[0].epoch}})
    assert m["recovered"] is True, m
    for i in (2, 3):
        check_event(await d.next(), "n", ch, r[i].channels[0], {"seq": i})
    # Live events follow, once, on both.
    r4 = publish(c[0], t, ch, seq=4).result
    for cl in (b, d):
        check_event(await cl.next(), "n", ch, r4.channels[0], {"seq": 4})
        assert await cl.barrier() == []


@aio
async def test_publish_script_is_loaded_again_after_script_flush(redis):
    c = cluster(2, redis)
    t, ch = uniq(), "board:" + uniq("b")
    b = await c[1].connect(t, "bob")
    await b.subscribe(ch)
    r1 = publish(c[0], t, ch, seq=1).result
    redis.cli("SCRIPT", "FLUSH")  # as after a Redis failover
    r2 = publish(c[0], t, ch, seq=2).result
    assert (r2.offset, r2.epoch) == (2, r1.epoch)
    check_event(await b.next(), "n", ch, r1.channels[0], {"seq": 1})
    check_event(await b.next(), "n", ch, r2.channels[0], {"seq": 2})


@aio
async def test_url_password_and_database_are_used():
    r = redistest.RedisServer(password="s3cret-pw").start()
    try:
        url = "redis://:s3cret-pw@127.0.0.1:%d/2" % r.port
        with cluster(2, r, LIVEHUB_REDIS_URL=url, LIVEHUB_REDIS_PREFIX="px") as c:
            t, ch = uniq(), "board:" + uniq("b")
            b = await c[1].connect(t, "bob")
            await b.subscribe(ch)
            res = publish(c[0], t, ch, seq=1).result
            check_event(await b.next(), "n", ch, res.channels[0], {"seq": 1})
            # The keys are in database 2, under the prefix.
            key = "px:{%s:%s}:meta" % (t, ch)
            assert r.pipeline([("SELECT", "2"), ("HGET", key, "top")])[1] == "1"
            assert r.cli("EXISTS", key) == 0  # not in database 0
            for node in c:
                s = node.stats()
                assert s.redis_up and s.node_id == node.node_id, s
        # A wrong password: the node runs, not ready, and says why.
        bad = "redis://:wrong@127.0.0.1:%d" % r.port
        with redistest.cluster(1, r, LIVEHUB_REDIS_URL=bad) as c:
            assert redistest.readyz(c[0]) == 503
            e = c[0].rpc_error("Publish", hub_pb2.PublishRequest(
                tenant_id="t", channel="board:1", type="n"))
            assert e.code() == grpc.StatusCode.UNAVAILABLE
            redistest.wait_until(lambda: "WRONGPASS" in c[0].stderr_text()
                                 or "invalid password" in c[0].stderr_text(),
                                 "the AUTH refusal is logged")
            assert "wrong" not in c[0].stderr_text().replace("WRONGPASS", "")
    finally:
        redistest.close_clusters_on(r)
        r.close()


@aio
async def test_subscribe_while_redis_is_down(redis):
    c = cluster(2, redis)
    t, ch = uniq(), "job:" + uniq("j")
    a = await c[0].connect(t, "alice")
    sub = await a.subscribe(ch)
    r1 = publish(c[1], t, ch, seq=1).result
    check_event(await a.next(), "n", ch, r1.channels[0], {"seq": 1})
    redis.stop()
    redistest.wait_until(lambda: redistest.readyz(c[0]) == 503, "/readyz 503")
    # A node that knew the channel answers from what it saw; recovery
    # cannot be checked, so it is not claimed.
    b = await c[0].connect(t, "bob")
    m = await b.request({"type": "subscribe", "channel": ch,
                         "since": {"offset": 0, "epoch": sub["epoch"]}})
    assert (m["type"], m["offset"], m["epoch"], m["recovered"]) == (
        "subscribed", 1, sub["epoch"], False), m
    # A channel nobody here knew: subscribed, at an unknown position.
    d = await c[0].connect(t, "dave")
    other = "job:" + uniq("k")
    m = await d.request({"type": "subscribe", "channel": other})
    assert (m["type"], m["offset"], m["epoch"]) == ("subscribed", 0, "0" * 16), m
    redis.start()
    # Both nodes: the publish below goes through node 2, whose reconnect
    # backoff is its own.
    for node in c:
        redistest.wait_until(lambda: redistest.readyz(node) == 200, "/readyz 200")
    # Both now get what is published (the follows came back by themselves).
    r2 = publish(c[1], t, other, seq=2).result
    check_event(await d.next(), "n", other, r2.channels[0], {"seq": 2})


@aio
async def test_stats_and_metrics_of_redis_mode(redis):
    c = cluster(2, redis)
    t, ch = uniq(), "board:" + uniq("b")
    a = await c[1].connect(t, "alice")
    await a.subscribe(ch)
    res = publish(c[0], t, ch, seq=1).result
    check_event(await a.next(), "n", ch, res.channels[0], {"seq": 1})
    s0, s1 = c[0].stats(), c[1].stats()
    assert s0.redis_up and s0.node_id == "node1" and s0.redis_publishes == 1, s0
    assert s0.redis_commands > 0 and s0.redis_reconnects == 0
    # alice's node follows her channel and her $tenant and $user channels.
    assert s1.redis_channels_followed == 3, s1
    assert s1.redis_messages_received >= 1
    status, _, body = opstest.http_get(c[1], "/metrics")
    assert status == 200
    assert 'livehub_node_info{node="node2"} 1' in body
    assert "\nlivehub_redis_up 1\n" in body
    assert "\nlivehub_redis_channels_followed 3\n" in body
    await a.close()
    await c[1].wait_stats(lambda s: s.redis_channels_followed == 0, "unfollowed")
    redis.stop()
    redistest.wait_until(lambda: not c[0].stats().redis_up, "redis_up false")
    e = c[0].rpc_error("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="n"))
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    redis.start()
    redistest.wait_until(lambda: c[0].stats().redis_up, "redis_up again")
    s = c[0].stats()
    assert s.redis_reconnects >= 1 and s.redis_publish_failures == 0, s


@aio
async def test_memory_mode_reports_no_redis(hub):
    s = hub.stats()
    assert (s.redis_up, s.node_id, s.redis_commands, s.redis_channels_followed) == (
        False, "", 0, 0)
    status, _, body = opstest.http_get(hub, "/metrics")
    assert status == 200 and "livehub_redis_" not in body


@aio
async def test_a_redis_that_stops_answering_is_noticed(redis):
    import signal
    c = cluster(1, redis)
    t, ch = uniq(), "job:" + uniq("j")
    a = await c[0].connect(t, "alice")
    await a.subscribe(ch)
    assert redistest.readyz(c[0]) == 200
    redis.proc.send_signal(signal.SIGSTOP)  # TCP stays open, nothing answers
    try:
        redistest.wait_until(lambda: redistest.readyz(c[0]) == 503,
                             "not ready once PINGs go unanswered")
        assert "did not answer PING" in c[0].stderr_text()
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    redistest.wait_until(lambda: redistest.readyz(c[0]) == 200, "ready again")
    r = publish(c[0], t, ch, seq=1).result
    check_event(await a.next(), "n", ch, r.channels[0], {"seq": 1})


@aio
async def test_without_sharded_pubsub_plain_pubsub_is_used(tmp_path):
    # A Redis 6 stand-in: SPUBLISH and SSUBSCRIBE are unknown commands.
    wrapper = tmp_path / "redis6"
    wrapper.write_text('#!/bin/sh\nexec %s "$@" --rename-command SPUBLISH "" '
                       '--rename-command SSUBSCRIBE "" --rename-command SUNSUBSCRIBE ""\n'
                       % redistest.REDIS_SERVER)
    wrapper.chmod(0o755)
    saved = redistest.REDIS_SERVER
    redistest.REDIS_SERVER = str(wrapper)
    try:
        r = redistest.RedisServer().start()
    finally:
        redistest.REDIS_SERVER = saved
    try:
        with cluster(2, r) as c:
            t, ch = uniq(), "board:" + uniq("b")
            b = await c[1].connect(t, "bob")
            await b.subscribe(ch)
            name = "livehub:{%s:%s}" % (t, ch)
            assert r.cli("PUBSUB", "NUMSUB", name) == [name, 1]
            res = publish(c[0], t, ch, seq=1).result
            check_event(await b.next(), "n", ch, res.channels[0], {"seq": 1})
            assert "sharded=0" in c[0].stderr_text()
    finally:
        redistest.close_clusters_on(r)
        r.close()


@aio
async def test_sighup_reload_reaches_the_publish_script(redis, tmp_path):
    import json
    import signal
    import time
    cfg = tmp_path / "livehub.json"
    cfg.write_text(json.dumps({"history_kinds": "job:0"}))
    c = cluster(1, redis, args=["--config", str(cfg)])
    t, ch = uniq(), "job:" + uniq("j")
    stream = "livehub:{%s:%s}:stream" % (t, ch)
    publish(c[0], t, ch, seq=1)
    assert redis.cli("EXISTS", stream) == 0  # kind job keeps no history
    cfg.write_text(json.dumps({"history_kinds": "job:50/600"}))
    c[0].proc.send_signal(signal.SIGHUP)
    redistest.wait_until(lambda: "event=reload_applied" in c[0].stderr_text(), "reload applied")
    # The reload reaches the broker thread through its queue, ahead of
    # publications handed over after it; retry until it has.
    deadline = time.monotonic() + 15
    while redis.cli("EXISTS", stream) == 0:
        assert time.monotonic() < deadline, "the new history size never applied"
        publish(c[0], t, ch, seq=2)
    assert redis.cli("XLEN", stream) >= 1
    ttl = redis.cli("TTL", stream)
    assert 300 < ttl <= 600, ttl


@aio
async def test_a_node_following_a_channel_recovers_from_what_it_delivered(redis):
    c = cluster(2, redis)
    t, ch = uniq(), "job:" + uniq("j")
    a = await c[0].connect(t, "alice")
    await a.subscribe(ch)
    r = [publish(c[1], t, ch, seq=i).result for i in range(4)]
    for i in range(4):
        check_event(await a.next(), "n", ch, r[i].channels[0], {"seq": i})
    # The stream loses entry 2: node 1 still has it (it delivered it), so a
    # recovery there is whole; node 2 never followed the channel and must
    # read the stream, which can no longer answer.
    redis.cli("XDEL", "livehub:{%s:%s}:stream" % (t, ch), "2-0")
    b = await c[0].connect(t, "bob")
    m = await b.request({"type": "subscribe", "channel": ch,
                         "since": {"offset": 1, "epoch": r[0].epoch}})
    assert (m["offset"], m["recovered"]) == (4, True), m
    for i in (1, 2, 3):
        check_event(await b.next(), "n", ch, r[i].channels[0], {"seq": i})
    d = await c[1].connect(t, "dave")
    m = await d.request({"type": "subscribe", "channel": ch,
                         "since": {"offset": 1, "epoch": r[0].epoch}})
    assert (m["offset"], m["recovered"]) == (4, False), m
    r4 = publish(c[1], t, ch, seq=4).result
    for cl in (a, b, d):
        check_event(await cl.next(), "n", ch, r4.channels[0], {"seq": 4})
        assert await cl.barrier() == []
    s = c[0].stats()
    assert s.recoveries >= 1, s


@aio
async def test_a_client_ahead_of_the_node_is_recovered_without_duplicates(redis):
    c = cluster(1, redis)
    t, ch = uniq(), "job:" + uniq("j")
    a = await c[0].connect(t, "alice")
    await a.subscribe(ch)
    r1 = publish(c[0], t, ch, seq=1).result
    check_event(await a.next(), "n", ch, r1.channels[0], {"seq": 1})
    # Offset 2 exists in Redis but has not reached this node yet (as when a
    # client moves to a node whose pub/sub is a little behind the one it
    # left): a client that saw 2 elsewhere is not behind, and must not get
    # 2 again when it comes.
    meta = "livehub:{%s:%s}:meta" % (t, ch)
    assert redis.cli("HINCRBY", meta, "top", 1) == 2
    b = await c[0].connect(t, "bob")
    m = await b.request({"type": "subscribe", "channel": ch,
                         "since": {"offset": 2, "epoch": r1.epoch}})
    assert (m["offset"], m["epoch"], m["recovered"]) == (2, r1.epoch, True), m
    assert await b.barrier() == []
    # A frame for 2 arriving late is skipped for bob, delivered to alice.
    frame = ('{"type":"n","channel":"%s","offset":2,"epoch":"%s","ts":1,"data":{"seq":2}}'
             % (ch, r1.epoch))
    redis.cli("SPUBLISH", "livehub:{%s:%s}" % (t, ch),
              "E 2 %s 0 elsewhere\n%s" % (r1.epoch, frame))
    assert (await a.next())["offset"] == 2
    r3 = publish(c[0], t, ch, seq=3).result
    assert r3.offset == 3
    check_event(await a.next(), "n", ch, r3.channels[0], {"seq": 3})
    check_event(await b.next(), "n", ch, r3.channels[0], {"seq": 3})
    assert await b.barrier() == [] and await a.barrier() == []


@aio
async def test_recoveries_read_from_the_stream_while_publishing_goes_on(redis):
    import threading
    # Node 2 keeps no cache for job channels, so every recovery there reads
    # the stream while node 1 publishes: the reply, the replay and the live
    # events must still be each offset once, in order.
    c = cluster(1, redis)
    c.add(LIVEHUB_HISTORY_KINDS="job:0")
    redistest.wait_until(lambda: redistest.readyz(c[1]) == 200, "node 2 ready")
    t, ch = uniq(), "job:" + uniq("j")
    watcher = await c[1].connect(t, "watcher")  # node 2 follows the channel
    await watcher.subscribe(ch)
    first = publish(c[0], t, ch, seq=0).result
    stop = threading.Event()

    def publisher():
        i = 1
        while not stop.is_set():
            publish(c[0], t, ch, seq=i)
            i += 1

    th = threading.Thread(target=publisher)
    th.start()
    try:
        clients = []
        for k in range(12):
            cl = await c[1].connect(t, "u%d" % k)
            await cl.send({"type": "subscribe", "channel": ch, "id": k,
                           "since": {"offset": first.offset, "epoch": first.epoch}})
            clients.append(cl)
        for cl in clients:
            m = await cl.next()
            assert m["type"] == "subscribed" and m["recovered"] is True, m
            last = first.offset
            # The replay up to the reply's offset, then live events: one
            # sequence without gaps or repeats, for a while.
            while last < m["offset"] + 20:
                e = await cl.next()
                assert e["offset"] == last + 1, (last, e)
                last = e["offset"]
    finally:
        stop.set()
        th.join()
