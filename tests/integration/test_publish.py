"""Each publish RPC: the reply (offsets, epoch, subscriber counts, channel
entries) and the exact event frames it produces (docs/PROTOCOL.md)."""

import grpc

from hubtest import aio, check_event, events_pb2, hub_pb2, pbjson, uniq

Struct_details = {
    "layer": 32,
    "ok": True,
    "name": "x\"y\\z\n\t</script>",
    "nothing": None,
    "ratio": 0.25,
    "nested": {"list": [1, "two", None, False, {"deep": []}], "empty": {}},
}


def data_without_unset_message(data, field):
    """An unset message field is left out by the proto3 JSON mapping
    (Python, Go and Java runtimes do); null means the same when parsed, so
    both are accepted here."""
    data = dict(data)
    if field in data and data[field] is None:
        del data[field]
    return data


async def recv_events(client, n):
    """The next n messages, sorted by channel (one publication on two
    channels has no order between its channels)."""
    got = [await client.next() for _ in range(n)]
    return sorted(got, key=lambda m: m.get("channel", ""))


@aio
async def test_job_progress_on_job_and_project_channels(hub):
    t, job, proj = uniq(), uniq("j"), uniq("p")
    a = await hub.connect(t, "alice")  # on the job channel
    b = await hub.connect(t, "bob")  # on the project channel
    c = await hub.connect(t, "carol")  # on both
    d = await hub.connect(t, "dave")  # on neither
    jc, pc = "job:" + job, "project:" + proj
    await a.subscribe(jc)
    await b.subscribe(pc)
    await c.subscribe(jc)
    await c.subscribe(pc)

    ev = events_pb2.JobProgress(job_id=job, project_id=proj, kind=events_pb2.JOB_KIND_SLICE,
                                progress=40.5, eta_seconds=12,
                                message="layer 32/80 \u2014 P\u0159\u00edli\u0161 \"\u017elu\u0165ou\u010dk\u00fd\" k\u016f\u0148\n\U0001F434",
                                item_id="layer-32")
    ev.details.update(Struct_details)
    want = {
        "jobId": job, "projectId": proj, "kind": "JOB_KIND_SLICE", "progress": 40.5,
        "etaSeconds": 12, "message": ev.message, "itemId": "layer-32", "details": Struct_details,
    }
    assert pbjson(ev) == want  # the expectation agrees with protobuf's own mapping

    r = hub.rpc("PublishJobProgress", hub_pb2.PublishJobProgressRequest(tenant_id=t, event=ev)).result
    assert [p.channel for p in r.channels] == [jc, pc]
    assert [p.subscribers for p in r.channels] == [2, 2]
    assert r.subscribers == 4
    assert (r.offset, r.epoch) == (r.channels[0].offset, r.channels[0].epoch)
    check_event(await a.next(), "job:progress", jc, r.channels[0], want)
    check_event(await b.next(), "job:progress", pc, r.channels[1], want)
    cj, cp = await recv_events(c, 2)
    check_event(cj, "job:progress", jc, r.channels[0], want)
    check_event(cp, "job:progress", pc, r.channels[1], want)
    for cl in (a, b, c, d):
        await cl.expect_nothing()

    # A second publication: the next offset in each channel, same epochs.
    ev2 = events_pb2.JobProgress(job_id=job, project_id=proj, progress=41)
    r2 = hub.rpc("PublishJobProgress", hub_pb2.PublishJobProgressRequest(tenant_id=t, event=ev2)).result
    for p1, p2 in zip(r.channels, r2.channels):
        assert (p2.channel, p2.offset, p2.epoch) == (p1.channel, p1.offset + 1, p1.epoch)
    want2 = {"jobId": job, "projectId": proj, "kind": "JOB_KIND_UNSPECIFIED", "progress": 41,
             "etaSeconds": 0, "message": "", "itemId": ""}
    m = await a.next()
    check_event(m, "job:progress", jc, r2.channels[0], data_without_unset_message(m["data"], "details"))
    assert data_without_unset_message(m["data"], "details") == want2
    await a.expect_nothing()


@aio
async def test_job_progress_defaults_without_project(hub):
    """Only job_id set: every scalar is present with its default, one
    channel only."""
    t, job = uniq(), uniq("j")
    a = await hub.connect(t, "alice")
    await a.subscribe("job:" + job)
    ev = events_pb2.JobProgress(job_id=job)
    r = hub.rpc("PublishJobProgress", hub_pb2.PublishJobProgressRequest(tenant_id=t, event=ev)).result
    assert len(r.channels) == 1
    assert (r.channels[0].channel, r.channels[0].subscribers, r.subscribers) == ("job:" + job, 1, 1)
    m = await a.next()
    want = {"jobId": job, "projectId": "", "kind": "JOB_KIND_UNSPECIFIED", "progress": 0,
            "etaSeconds": 0, "message": "", "itemId": ""}
    assert want == pbjson(ev)
    check_event(m, "job:progress", "job:" + job, r.channels[0],
                data_without_unset_message(m["data"], "details"))
    assert data_without_unset_message(m["data"], "details") == want
    await a.expect_nothing()


@aio
async def test_job_progress_empty_details_struct(hub):
    t, job = uniq(), uniq("j")
    a = await hub.connect(t, "alice")
    await a.subscribe("job:" + job)
    ev = events_pb2.JobProgress(job_id=job, progress=100, kind=events_pb2.JOB_KIND_EXPORT)
    ev.details.SetInParent()
    r = hub.rpc("PublishJobProgress", hub_pb2.PublishJobProgressRequest(tenant_id=t, event=ev)).result
    want = {"jobId": job, "projectId": "", "kind": "JOB_KIND_EXPORT", "progress": 100,
            "etaSeconds": 0, "message": "", "itemId": "", "details": {}}
    assert pbjson(ev) == want
    check_event(await a.next(), "job:progress", "job:" + job, r.channels[0], want)


@aio
async def test_job_completed(hub):
    t, job, proj = uniq(), uniq("j"), uniq("p")
    a = await hub.connect(t, "alice")
    await a.subscribe("job:" + job)
    await a.subscribe("project:" + proj)
    ev = events_pb2.JobCompleted(job_id=job, project_id=proj, kind=events_pb2.JOB_KIND_SLICE,
                                 item_id="model-1", result_url="https://cdn.example/r/1.gcode?a=1&b=2",
                                 duration_ms=18446744073709551615)
    ev.result.update({"printTimeSeconds": 5400, "filamentGrams": 12.5, "warnings": []})
    ev.finished_at.seconds = 1763719200
    ev.finished_at.nanos = 123000000
    want = {
        "jobId": job, "projectId": proj, "kind": "JOB_KIND_SLICE", "itemId": "model-1",
        "resultUrl": "https://cdn.example/r/1.gcode?a=1&b=2", "durationMs": "18446744073709551615",
        "result": {"printTimeSeconds": 5400, "filamentGrams": 12.5, "warnings": []},
        "finishedAt": "2025-11-21T10:00:00.123Z",
    }
    assert pbjson(ev) == want
    r = hub.rpc("PublishJobCompleted", hub_pb2.PublishJobCompletedRequest(tenant_id=t, event=ev)).result
    assert [(p.channel, p.subscribers) for p in r.channels] == [("job:" + job, 1), ("project:" + proj, 1)]
    assert r.subscribers == 2
    mj, mp = await recv_events(a, 2)
    check_event(mj, "job:completed", "job:" + job, r.channels[0], want)
    check_event(mp, "job:completed", "project:" + proj, r.channels[1], want)
    await a.expect_nothing()


@aio
async def test_job_failed(hub):
    t, job, proj = uniq(), uniq("j"), uniq("p")
    a = await hub.connect(t, "alice")
    await a.subscribe("project:" + proj)
    ev = events_pb2.JobFailed(job_id=job, project_id=proj, kind=events_pb2.JOB_KIND_VIDEO,
                              item_id="scene-3", error_code="MODEL_INVALID",
                              error="mesh is not manifold", retryable=True)
    ev.details.update({"faces": 12, "hint": "repair the mesh"})
    want = {
        "jobId": job, "projectId": proj, "kind": "JOB_KIND_VIDEO", "itemId": "scene-3",
        "errorCode": "MODEL_INVALID", "error": "mesh is not manifold", "retryable": True,
        "details": {"faces": 12, "hint": "repair the mesh"},
    }
    assert pbjson(ev) == want
    r = hub.rpc("PublishJobFailed", hub_pb2.PublishJobFailedRequest(tenant_id=t, event=ev)).result
    assert [(p.channel, p.subscribers) for p in r.channels] == [("job:" + job, 0), ("project:" + proj, 1)]
    assert r.subscribers == 1
    assert (r.offset, r.epoch) == (r.channels[0].offset, r.channels[0].epoch)
    check_event(await a.next(), "job:failed", "project:" + proj, r.channels[1], want)
    await a.expect_nothing()

    # retryable false is a default and must still be present.
    ev2 = events_pb2.JobFailed(job_id=job, project_id=proj, error="again")
    r2 = hub.rpc("PublishJobFailed", hub_pb2.PublishJobFailedRequest(tenant_id=t, event=ev2)).result
    assert r2.channels[1].offset == r.channels[1].offset + 1
    assert r2.channels[0].offset == r.channels[0].offset + 1
    m = await a.next()
    assert data_without_unset_message(m["data"], "details") == {
        "jobId": job, "projectId": proj, "kind": "JOB_KIND_UNSPECIFIED", "itemId": "",
        "errorCode": "", "error": "again", "retryable": False}


@aio
async def test_price_updated_reaches_whole_tenant(hub):
    t, other = uniq(), uniq()
    a = await hub.connect(t, "alice")
    b = await hub.connect(t, "bob")
    await b.subscribe("job:" + uniq("j"))
    x = await hub.connect(other, "alice")
    ev = events_pb2.PriceUpdated(item_id="PLA-1kg", currency="CZK", amount_minor=129900,
                                 previous_amount_minor=-250, config_version="v42")
    ev.effective_at.seconds = 1763719200
    ev.details.update({"reason": "supplier"})
    want = {
        "itemId": "PLA-1kg", "currency": "CZK", "amountMinor": "129900",
        "previousAmountMinor": "-250", "configVersion": "v42",
        "effectiveAt": "2025-11-21T10:00:00Z", "details": {"reason": "supplier"},
    }
    assert pbjson(ev) == want
    r = hub.rpc("PublishPriceUpdated", hub_pb2.PublishPriceUpdatedRequest(tenant_id=t, event=ev)).result
    assert [(p.channel, p.subscribers) for p in r.channels] == [("$tenant", 2)]
    assert r.subscribers == 2
    for cl in (a, b):
        check_event(await cl.next(), "price:updated", "$tenant", r.channels[0], want)
        await cl.expect_nothing()
    await x.expect_nothing()

    # Defaults: 64-bit zero is the string "0".
    ev2 = events_pb2.PriceUpdated(item_id="PLA-1kg")
    r2 = hub.rpc("PublishPriceUpdated", hub_pb2.PublishPriceUpdatedRequest(tenant_id=t, event=ev2)).result
    assert (r2.offset, r2.epoch) == (r.offset + 1, r.epoch)
    m = await a.next()
    data = data_without_unset_message(data_without_unset_message(m["data"], "details"), "effectiveAt")
    assert data == {"itemId": "PLA-1kg", "currency": "", "amountMinor": "0",
                    "previousAmountMinor": "0", "configVersion": ""}


@aio
async def test_order_status(hub):
    t, order = uniq(), uniq("o")
    a = await hub.connect(t, "alice")
    b = await hub.connect(t, "bob")
    await a.subscribe("order:" + order)
    await b.subscribe("order:" + uniq("o"))
    ev = events_pb2.OrderStatus(order_id=order, state=events_pb2.ORDER_STATE_SHIPPED,
                                previous_state=events_pb2.ORDER_STATE_IN_PRODUCTION,
                                note="shipped with DHL")
    ev.changed_at.seconds = 1763719200
    ev.changed_at.nanos = 5000
    ev.details.update({"tracking": "JJD0001"})
    want = {
        "orderId": order, "state": "ORDER_STATE_SHIPPED", "previousState": "ORDER_STATE_IN_PRODUCTION",
        "note": "shipped with DHL", "changedAt": "2025-11-21T10:00:00.000005Z",
        "details": {"tracking": "JJD0001"},
    }
    assert pbjson(ev) == want
    r = hub.rpc("PublishOrderStatus", hub_pb2.PublishOrderStatusRequest(tenant_id=t, event=ev)).result
    assert [(p.channel, p.subscribers) for p in r.channels] == [("order:" + order, 1)]
    check_event(await a.next(), "order:status", "order:" + order, r.channels[0], want)
    await a.expect_nothing()
    await b.expect_nothing()


@aio
async def test_broadcast_tenant(hub):
    t, other = uniq(), uniq()
    a1 = await hub.connect(t, "alice")
    a2 = await hub.connect(t, "alice")
    b = await hub.connect(t, "bob")
    x = await hub.connect(other, "alice")
    req = hub_pb2.BroadcastTenantRequest(tenant_id=t, type="announcement")
    req.data.update({"text": "maintenance at 22:00", "level": 2, "tags": ["ops"]})
    r = hub.rpc("BroadcastTenant", req).result
    assert [(p.channel, p.subscribers) for p in r.channels] == [("$tenant", 3)]
    assert r.subscribers == 3
    for cl in (a1, a2, b):
        check_event(await cl.next(), "announcement", "$tenant", r.channels[0],
                    {"text": "maintenance at 22:00", "level": 2, "tags": ["ops"]})
        await cl.expect_nothing()
    await x.expect_nothing()
    r2 = hub.rpc("BroadcastTenant", req).result
    assert (r2.offset, r2.epoch) == (r.offset + 1, r.epoch)


@aio
async def test_send_to_user_reaches_every_device_of_that_user_only(hub):
    t, other = uniq(), uniq()
    a1 = await hub.connect(t, "alice")
    a2 = await hub.connect(t, "alice")
    b = await hub.connect(t, "bob")
    x = await hub.connect(other, "alice")  # same user name, other tenant
    req = hub_pb2.SendToUserRequest(tenant_id=t, user_id="alice", type="sync:settings")
    req.data.update({"theme": "dark"})
    r = hub.rpc("SendToUser", req).result
    assert [(p.channel, p.subscribers) for p in r.channels] == [("$user:alice", 2)]
    assert r.subscribers == 2
    for cl in (a1, a2):
        check_event(await cl.next(), "sync:settings", "$user:alice", r.channels[0], {"theme": "dark"})
        await cl.expect_nothing()
    await b.expect_nothing()
    await x.expect_nothing()

    # A user with no connection: accepted, nobody receives it.
    r2 = hub.rpc("SendToUser", hub_pb2.SendToUserRequest(tenant_id=t, user_id="nobody@x", type="ping.x")).result
    assert [(p.channel, p.subscribers) for p in r2.channels] == [("$user:nobody@x", 0)]
    for cl in (a1, a2, b):
        await cl.expect_nothing()


@aio
async def test_publish_custom_type_and_channel(hub):
    t = uniq()
    ch = "board:7/col=a_b.c@d+e-" + uniq("x")  # every allowed character kind
    a = await hub.connect(t, "alice")
    b = await hub.connect(t, "bob")
    await a.subscribe(ch)
    await b.subscribe(ch)
    req = hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="card.moved:v2")
    req.data.update({"card": "c1", "from": "todo", "to": "done", "pos": 3})
    r = hub.rpc("Publish", req).result
    assert [(p.channel, p.subscribers) for p in r.channels] == [(ch, 2)]
    assert (r.subscribers, r.offset, r.epoch) == (2, r.channels[0].offset, r.channels[0].epoch)
    for cl in (a, b):
        check_event(await cl.next(), "card.moved:v2", ch, r.channels[0],
                    {"card": "c1", "from": "todo", "to": "done", "pos": 3})
        await cl.expect_nothing()
    r2 = hub.rpc("Publish", req).result
    assert (r2.channels[0].offset, r2.channels[0].epoch) == (r.channels[0].offset + 1, r.channels[0].epoch)
    for cl in (a, b):
        m = await cl.next()
        assert (m["offset"], m["epoch"]) == (r2.offset, r2.epoch)


@aio
async def test_offsets_are_per_channel(hub):
    """Publishing on one channel does not move another channel's offset."""
    t = uniq()
    c1, c2 = "board:" + uniq("b"), "board:" + uniq("b")
    pub = lambda ch: hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="x")).result
    r1 = pub(c1)
    for _ in range(3):
        pub(c2)
    r1b = pub(c1)
    assert (r1b.offset, r1b.epoch) == (r1.offset + 1, r1.epoch)


@aio
async def test_cancelled_unary_calls(hub):
    """Publish calls that the client cancels or lets time out while the hub
    handles them end cleanly (the reply batch also waits for the call's
    close): each one that got in is delivered once, with no gap in the
    channel's offsets, and the hub answers the next call as usual."""
    t, ch = uniq(), uniq("board:")
    a = await hub.connect(t, "alice")
    await a.subscribe(ch)
    futs = []
    for i in range(200):
        r = hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="tick")
        r.data.update({"i": i})
        futs.append(hub.stub.Publish.future(r, timeout=0.001 if i % 2 else 30))
        if i % 3 == 0:
            futs[-1].cancel()
    ok = 0
    for f in futs:
        try:
            f.result()
            ok += 1
        except (grpc.RpcError, grpc.FutureCancelledError):
            pass
    r = hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="last")
    last = hub.stub.Publish(r, timeout=10)
    seen, offs = [], []
    while True:
        m = await a.next()
        offs.append(int(m["offset"]))
        if m["type"] == "last":
            break
        seen.append(m["data"]["i"])
    assert len(seen) == len(set(seen)) and len(seen) >= ok
    assert offs == list(range(offs[0], offs[0] + len(offs)))
    assert last.result.offset == offs[-1]
    await a.expect_nothing()


@aio
async def test_compressed_and_large_requests(hub):
    """Requests sent gzip-compressed, and ones large enough to arrive in
    several pieces, are read like small plain ones (livehub reads a small
    uncompressed request in place and copies the others)."""
    t, ch = uniq(), uniq("board:")
    a = await hub.connect(t, "alice")
    await a.subscribe(ch)
    sent = []
    for i, (n, gz) in enumerate([(10, True), (100000, False), (100000, True), (5, False)]):
        r = hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="tick")
        r.data.update({"i": i, "s": "x" * n})
        hub.stub.Publish(r, timeout=10,
                         compression=grpc.Compression.Gzip if gz else grpc.Compression.NoCompression)
        sent.append({"i": i, "s": "x" * n})
    got = [(await a.next())["data"] for _ in sent]
    assert got == sent
    await a.expect_nothing()
