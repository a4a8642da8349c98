"""Several messages per frame (PROTOCOL.md): a backlog goes out joined by
'\\n' in one WebSocket frame, up to --write-batch bytes, with nothing lost
or reordered; a single message, or one larger than the cap, goes alone."""

import asyncio
import json

from hubtest import RECV_TIMEOUT, RPC_TIMEOUT, Hub, aio, hub_pb2, uniq


def burst(hub, tenant, channel, n, pad=""):
    """Publishes n events on channel at once (all calls in flight together,
    so the service thread queues many before the connection is written)."""
    futs = []
    for i in range(n):
        req = hub_pb2.PublishRequest(tenant_id=tenant, channel=channel, type="step")
        req.data.update({"i": i, "pad": pad})
        futs.append(hub.stub.Publish.future(req, timeout=RPC_TIMEOUT))
    return [f.result().result for f in futs]


async def read_frames(client, n):
    """Reads raw frames until n messages have arrived (after whatever the
    client already split off). Returns (frames, messages)."""
    msgs = list(client.pending)
    client.pending.clear()
    frames = []
    while len(msgs) < n:
        frame = await asyncio.wait_for(client.ws.recv(), RECV_TIMEOUT)
        assert isinstance(frame, str)
        frames.append(frame)
        parts = frame.split("\n")
        assert all(parts), "empty message in frame %r" % frame[:200]
        msgs.extend(json.loads(p) for p in parts)
    assert len(msgs) == n, "more messages than published"
    return frames, msgs


def check_in_order(msgs, replies):
    """Calls in flight together get offsets in the order the hub took
    them: every event arrives once, in offset order, with its call's
    offset."""
    first = min(r.offset for r in replies)
    assert sorted(r.offset for r in replies) == list(range(first, first + len(replies)))
    assert [m["offset"] for m in msgs] == list(range(first, first + len(replies)))
    for m in msgs:
        assert m["offset"] == replies[int(m["data"]["i"])].offset, m


@aio
async def test_burst_arrives_batched_in_order_and_complete(hub):
    t, ch = uniq(), "job:" + uniq("j")
    a = await hub.connect(t, "alice")
    await a.subscribe(ch)
    replies = burst(hub, t, ch, 2000)
    frames, msgs = await read_frames(a, 2000)
    check_in_order(msgs, replies)
    several = [f for f in frames if "\n" in f]
    assert several, "2000 queued events went out one per frame"
    assert len(frames) < 2000
    assert max(len(f.encode()) for f in frames) <= 32768
    await a.expect_nothing()


def start_with(tmp_path, batch):
    """A hub of its own with --write-batch batch (env, so the default
    ports and secret arguments stay)."""
    return Hub.start(tmp_path, env={"LIVEHUB_WRITE_BATCH": str(batch)})


@aio
async def test_write_batch_0_sends_one_message_per_frame(tmp_path):
    h = start_with(tmp_path, 0)
    try:
        t, ch = uniq(), "job:" + uniq("j")
        a = await h.connect(t, "alice")
        await a.subscribe(ch)
        replies = burst(h, t, ch, 500)
        frames, msgs = await read_frames(a, 500)
        check_in_order(msgs, replies)
        assert len(frames) == 500 and not [f for f in frames if "\n" in f]
        await a.close()
    finally:
        h.stop_and_check()


@aio
async def test_cap_bounds_frames_and_big_messages_go_alone(tmp_path):
    """With a 1 KiB cap: ~300-byte events are batched a few at a time,
    never past 1 KiB; 1.5 KiB events, larger than the cap, go one per
    frame, in order with the rest."""
    h = start_with(tmp_path, 1024)
    try:
        t, ch = uniq(), "job:" + uniq("j")
        a = await h.connect(t, "alice")
        await a.subscribe(ch)
        replies = burst(h, t, ch, 300, pad="x" * 200)
        frames, msgs = await read_frames(a, 300)
        check_in_order(msgs, replies)
        assert [f for f in frames if "\n" in f], "no frame carried several events"
        assert max(len(f.encode()) for f in frames) <= 1024

        replies = burst(h, t, ch, 50, pad="y" * 1500)
        frames, msgs = await read_frames(a, 50)
        check_in_order(msgs, replies)
        assert len(frames) == 50 and not [f for f in frames if "\n" in f]
        await a.close()
    finally:
        h.stop_and_check()
