"""Fan-out, ordering, unsubscribe, tenant isolation and many calls in
flight."""

from hubtest import RPC_TIMEOUT, aio, check_event, events_pb2, hub_pb2, publish, uniq


@aio
async def test_several_clients_on_one_channel_all_receive(hub):
    t, ch = uniq(), "board:" + uniq("b")
    subs = [await hub.connect(t, "u%d" % i) for i in range(5)]
    idle = await hub.connect(t, "u0")
    for s in subs:
        await s.subscribe(ch)
    r = publish(hub, t, ch, "card.added", card="c9")
    assert r.subscribers == 5 and r.channels[0].subscribers == 5
    for s in subs:
        check_event(await s.next(), "card.added", ch, r.channels[0], {"card": "c9"})
        await s.expect_nothing()
    await idle.expect_nothing()


@aio
async def test_burst_of_200_keeps_order_with_consecutive_offsets(hub):
    t, ch = uniq(), "job:" + uniq("j")
    a = await hub.connect(t, "alice")
    b = await hub.connect(t, "bob")
    await a.subscribe(ch)
    await b.subscribe(ch)
    replies = [publish(hub, t, ch, "step", i=i) for i in range(200)]
    first = replies[0].offset
    assert [r.offset for r in replies] == list(range(first, first + 200))
    assert {r.epoch for r in replies} == {replies[0].epoch}
    for cl in (a, b):
        got = [await cl.next() for _ in range(200)]
        assert [m["offset"] for m in got] == list(range(first, first + 200))
        assert [m["data"]["i"] for m in got] == list(range(200))
        assert {m["epoch"] for m in got} == {replies[0].epoch}
        ts = [m["ts"] for m in got]
        assert ts == sorted(ts), "ts goes backwards within a channel"
        await cl.expect_nothing()


@aio
async def test_unsubscribe_stops_delivery(hub):
    t, ch = uniq(), "board:" + uniq("b")
    a = await hub.connect(t, "alice")
    b = await hub.connect(t, "bob")
    await a.subscribe(ch)
    await b.subscribe(ch)
    r = publish(hub, t, ch, n=1)
    assert r.subscribers == 2
    assert (await a.next())["data"] == {"n": 1}
    assert (await b.next())["data"] == {"n": 1}
    assert await a.request({"type": "unsubscribe", "channel": ch, "id": 5}) == {
        "type": "unsubscribed", "channel": ch, "id": 5}
    r2 = publish(hub, t, ch, n=2)
    assert r2.subscribers == 1 and r2.offset == r.offset + 1
    await a.expect_nothing()
    m = await b.next()
    assert (m["data"], m["offset"]) == ({"n": 2}, r2.offset)
    # And subscribing again resumes delivery.
    await a.subscribe(ch)
    r3 = publish(hub, t, ch, n=3)
    assert r3.subscribers == 2
    assert (await a.next())["data"] == {"n": 3}


@aio
async def test_tenant_isolation_same_channel_name(hub):
    ta, tb = uniq("ta"), uniq("tb")
    ch = "job:" + uniq("j")
    a = await hub.connect(ta, "alice")
    b = await hub.connect(tb, "alice")  # same user name too
    await a.subscribe(ch)
    await b.subscribe(ch)

    r = publish(hub, ta, ch, who="a")
    assert r.subscribers == 1
    assert (await a.next())["data"] == {"who": "a"}
    await b.expect_nothing()

    ev = events_pb2.JobProgress(job_id=ch[4:], progress=5)
    r = hub.rpc("PublishJobProgress", hub_pb2.PublishJobProgressRequest(tenant_id=tb, event=ev)).result
    assert r.subscribers == 1
    assert (await b.next())["type"] == "job:progress"
    await a.expect_nothing()

    r = hub.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id=ta, type="hello")).result
    assert r.subscribers == 1
    assert (await a.next())["type"] == "hello"
    await b.expect_nothing()

    r = hub.rpc("SendToUser", hub_pb2.SendToUserRequest(tenant_id=tb, user_id="alice", type="dm")).result
    assert r.subscribers == 1
    assert (await b.next())["type"] == "dm"
    await a.expect_nothing()


@aio
async def test_forged_tenant_in_subscribe_is_ignored(hub):
    ta, tb = uniq("ta"), uniq("tb")
    ch = "order:" + uniq("o")
    a = await hub.connect(ta, "mallory")
    b = await hub.connect(tb, "bob")
    await b.subscribe(ch)
    reply = await a.request({"type": "subscribe", "channel": ch, "tenant": tb, "tenant_id": tb,
                             "tenantId": tb})
    assert reply["type"] == "subscribed" and reply["channel"] == ch, reply
    r = publish(hub, tb, ch, secret="b-only")
    assert r.subscribers == 1  # only b
    assert (await b.next())["data"] == {"secret": "b-only"}
    await a.expect_nothing()
    r = publish(hub, ta, ch, mine=True)
    assert r.subscribers == 1
    assert (await a.next())["data"] == {"mine": True}
    await b.expect_nothing()


@aio
async def test_channel_name_cannot_smuggle_a_tenant(hub):
    """The internal key is tenant + 0x1f + channel: a client channel or a
    gRPC tenant holding 0x1f must be refused, never reach another tenant."""
    ta, tb = uniq("ta"), uniq("tb")
    a = await hub.connect(ta, "alice")
    reply = await a.request({"type": "subscribe", "channel": tb + "\x1fjob:1", "id": 1})
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "BAD_REQUEST", 1), reply


@aio
async def test_1000_concurrent_publishes_all_delivered_in_offset_order(hub):
    """1000 PublishJobProgress calls in flight at once on one channel (the
    project channel; distinct jobs, so no per-job conflation applies)."""
    t, proj = uniq(), uniq("p")
    pc = "project:" + proj
    a = await hub.connect(t, "alice")
    await a.subscribe(pc)
    reqs = [hub_pb2.PublishJobProgressRequest(
        tenant_id=t, event=events_pb2.JobProgress(job_id="j%d" % i, project_id=proj, progress=i % 101))
        for i in range(1000)]
    futs = [hub.stub.PublishJobProgress.future(q, timeout=RPC_TIMEOUT) for q in reqs]
    results = [f.result().result for f in futs]
    offs = {}
    for i, r in enumerate(results):
        assert [(p.channel, p.subscribers) for p in r.channels] == [("job:j%d" % i, 0), (pc, 1)]
        offs["j%d" % i] = r.channels[1].offset
    first = min(offs.values())
    assert sorted(offs.values()) == list(range(first, first + 1000))
    assert len({r.channels[1].epoch for r in results}) == 1

    got = [await a.next() for _ in range(1000)]
    assert [m["offset"] for m in got] == list(range(first, first + 1000))
    for m in got:
        assert m["type"] == "job:progress" and m["channel"] == pc
        assert m["offset"] == offs[m["data"]["jobId"]], m
    await a.expect_nothing()
