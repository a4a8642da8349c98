"""PublishStream (docs/API.md): a client stream of publishes, each validated
and published like its unary call, in order; invalid messages are counted
and skipped; the response comes after the half-close."""

import threading
import time

import grpc
import pytest

from hubtest import aio, events_pb2, hub_pb2, uniq

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def pub(tenant, channel, i, seq=None, etype="tick"):
    """One stream message publishing {"i": i} on channel."""
    r = hub_pb2.PublishRequest(tenant_id=tenant, channel=channel, type=etype)
    r.data.update({"i": i})
    return hub_pb2.PublishStreamRequest(sequence=i if seq is None else seq, publish=r)


async def recv_offsets(client, n, channel):
    """The next n events: checks each is on channel, returns (offsets, data)."""
    offs, data = [], []
    for _ in range(n):
        m = await client.next()
        assert m["channel"] == channel, m
        offs.append(int(m["offset"]))
        data.append(m["data"])
    return offs, data


@aio
async def test_many_messages_arrive_in_order(hub):
    t, ch = uniq(), uniq("board:")
    a = await hub.connect(t, "alice")
    await a.subscribe(ch)
    n = 3000
    resp = hub.stub.PublishStream((pub(t, ch, i) for i in range(n)), timeout=30)
    assert (resp.accepted, resp.rejected) == (n, 0)
    assert not resp.HasField("first_error")
    offs, data = await recv_offsets(a, n, ch)
    assert data == [{"i": i} for i in range(n)]
    assert offs == list(range(offs[0], offs[0] + n))
    await a.expect_nothing()


@aio
async def test_every_kind_of_publish(hub):
    """Each oneof member is published like its unary call (same type and
    channel as the unary call would use)."""
    t, job, order = uniq(), uniq("j"), uniq("o")
    a = await hub.connect(t, "alice")
    await a.subscribe("job:" + job)
    await a.subscribe("order:" + order)
    msgs = [
        hub_pb2.PublishStreamRequest(sequence=1, job_progress=hub_pb2.PublishJobProgressRequest(
            tenant_id=t, event=events_pb2.JobProgress(job_id=job, progress=5))),
        hub_pb2.PublishStreamRequest(sequence=2, job_completed=hub_pb2.PublishJobCompletedRequest(
            tenant_id=t, event=events_pb2.JobCompleted(job_id=job))),
        hub_pb2.PublishStreamRequest(sequence=3, job_failed=hub_pb2.PublishJobFailedRequest(
            tenant_id=t, event=events_pb2.JobFailed(job_id=job))),
        hub_pb2.PublishStreamRequest(sequence=4, order_status=hub_pb2.PublishOrderStatusRequest(
            tenant_id=t, event=events_pb2.OrderStatus(order_id=order))),
        hub_pb2.PublishStreamRequest(sequence=5, price_updated=hub_pb2.PublishPriceUpdatedRequest(
            tenant_id=t, event=events_pb2.PriceUpdated(item_id="sku"))),
        hub_pb2.PublishStreamRequest(sequence=6, broadcast_tenant=hub_pb2.BroadcastTenantRequest(
            tenant_id=t, type="note")),
        hub_pb2.PublishStreamRequest(sequence=7, send_to_user=hub_pb2.SendToUserRequest(
            tenant_id=t, user_id="alice", type="dm")),
    ]
    resp = hub.stub.PublishStream(iter(msgs), timeout=10)
    assert (resp.accepted, resp.rejected) == (7, 0)
    got = [(m["type"], m["channel"]) for m in [await a.next() for _ in range(7)]]
    assert got == [("job:progress", "job:" + job), ("job:completed", "job:" + job),
                   ("job:failed", "job:" + job), ("order:status", "order:" + order),
                   ("price:updated", "$tenant"), ("note", "$tenant"), ("dm", "$user:alice")]
    await a.expect_nothing()


@aio
async def test_invalid_message_is_skipped_and_reported(hub):
    t, ch = uniq(), uniq("board:")
    a = await hub.connect(t, "alice")
    await a.subscribe(ch)
    msgs = [pub(t, ch, i, seq=100 + i) for i in range(10)]
    msgs[4] = pub(t, ch, 4, seq=104, etype="error")  # a reserved type
    msgs[7] = hub_pb2.PublishStreamRequest(sequence=107)  # no publish at all
    resp = hub.stub.PublishStream(iter(msgs), timeout=10)
    assert (resp.accepted, resp.rejected) == (8, 2)
    e = resp.first_error
    assert (e.sequence, e.index, e.code) == (104, 4, INVALID)
    assert e.message.startswith("publish.type:"), e.message
    offs, data = await recv_offsets(a, 8, ch)
    assert data == [{"i": i} for i in range(10) if i not in (4, 7)]
    assert offs == list(range(offs[0], offs[0] + 8))  # no gap for the rejected ones
    await a.expect_nothing()


def test_message_without_publish_names_the_choices(hub):
    resp = hub.stub.PublishStream(iter([hub_pb2.PublishStreamRequest(sequence=9)]), timeout=10)
    assert (resp.accepted, resp.rejected) == (0, 1)
    assert resp.first_error.sequence == 9
    assert "one of job_progress" in resp.first_error.message


def test_validation_error_names_the_field_path(hub):
    m = hub_pb2.PublishStreamRequest(job_progress=hub_pb2.PublishJobProgressRequest(
        tenant_id=uniq(), event=events_pb2.JobProgress(job_id="j", progress=101)))
    resp = hub.stub.PublishStream(iter([m]), timeout=10)
    assert resp.first_error.message == "job_progress.event.progress: must be between 0 and 100"
    assert resp.first_error.index == 0


def test_empty_stream(hub):
    resp = hub.stub.PublishStream(iter([]), timeout=10)
    assert (resp.accepted, resp.rejected) == (0, 0)
    assert not resp.HasField("first_error")


def test_full_queue_holds_the_stream_back_instead_of_failing(tmp_path):
    """With a hand-off queue of 2, several streams of thousands of messages
    still get every message published: livehub stops reading instead of
    refusing."""
    from hubtest import Hub
    h = Hub.start(tmp_path, env={"LIVEHUB_HANDOFF_MAX": "2"})
    try:
        t = uniq()
        results = [None] * 3

        def run(k):
            results[k] = h.stub.PublishStream(
                (pub(t, "c%d" % k, i) for i in range(2000)), timeout=60)

        th = [threading.Thread(target=run, args=(k,)) for k in range(3)]
        for x in th:
            x.start()
        for x in th:
            x.join()
        assert [(r.accepted, r.rejected) for r in results] == [(2000, 0)] * 3
        assert h.stats().messages_published >= 6000
    finally:
        h.stop_and_check()


def test_cancelled_streams_leak_nothing(fresh_hub):
    """Streams cancelled mid-way (client gone, messages in flight) are torn
    down; the hub serves on, and exits cleanly (the ASan build fails the
    exit status on a leak)."""
    t = uniq()
    stop = threading.Event()

    def endless(k):
        i = 0
        while not stop.is_set():
            yield pub(t, "c%d" % k, i)
            i += 1
            if i % 500 == 0:
                time.sleep(0.01)

    futs = [fresh_hub.stub.PublishStream.future(endless(k), timeout=30) for k in range(4)]
    deadline = time.time() + 10
    while fresh_hub.stats().messages_published < 2000 and time.time() < deadline:
        time.sleep(0.05)
    for f in futs:
        f.cancel()
    stop.set()
    for f in futs:
        with pytest.raises(grpc.FutureCancelledError):
            f.result()

    def stalled():
        yield pub(t, "stalled", 0)
        time.sleep(2)

    # A stream that the client does not half-close in time, cut by its deadline.
    with pytest.raises(grpc.RpcError) as ei:
        fresh_hub.stub.PublishStream(stalled(), timeout=0.5)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    resp = fresh_hub.stub.PublishStream(iter([pub(t, "after", 1)]), timeout=10)
    assert resp.accepted == 1


@aio
async def test_payload_sizes_vary_within_a_stream(hub):
    """Each message's event carries exactly its own data whatever the sizes
    before it: the hub writes a message's JSON into the buffer an earlier one
    left (kept up to 4 KiB, larger ones freed), so a short message after a
    long one must not carry the long one's tail."""
    t, ch = uniq(), uniq("board:")
    a = await hub.connect(t, "alice")
    await a.subscribe(ch)
    sizes = [10, 3000, 1, 9000, 0, 4100, 50, 200000, 2] * 4
    msgs = []
    for i, n in enumerate(sizes):
        r = hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="tick")
        r.data.update({"i": i, "s": chr(ord("a") + i % 26) * n})
        msgs.append(hub_pb2.PublishStreamRequest(sequence=i, publish=r))
    resp = hub.stub.PublishStream(iter(msgs), timeout=30)
    assert (resp.accepted, resp.rejected) == (len(sizes), 0)
    offs, data = await recv_offsets(a, len(sizes), ch)
    assert data == [{"i": i, "s": chr(ord("a") + i % 26) * n} for i, n in enumerate(sizes)]
    await a.expect_nothing()
