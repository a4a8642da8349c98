"""Backpressure: a client that stops reading is closed with SLOW_CONSUMER
(4000) while a normal client on the same channel receives everything in
order; job:progress conflates while queued, so a slow client still ends at
the final value.

The stalled client is a raw TCP socket with a small receive buffer that
does the WebSocket handshake and then stops reading: the only way to be
sure nothing reads on its behalf (client libraries read ahead)."""

import asyncio

import hubtest
import pytest
from hubtest import RawWs, aio, events_pb2, hub_pb2, publish, uniq


def start_hub(tmp_path_factory, **env):
    return hubtest.Hub.start(tmp_path_factory.mktemp("bp"), env=env)


@pytest.fixture
def small_queue_hub(tmp_path_factory):
    h = start_hub(tmp_path_factory, LIVEHUB_SENDQ_MAX_BYTES="262144")
    try:
        yield h
    finally:
        h.stop_and_check()


@aio
async def test_stalled_client_is_closed_and_others_get_everything_in_order(small_queue_hub):
    hub = small_queue_hub
    t, ch = uniq(), "board:" + uniq("b")
    fast = await hub.connect(t, "fast")
    await fast.subscribe(ch)
    slow = RawWs(hub, hub.token(t, "slow"))
    assert slow.next_message()["type"] == "connected"
    slow.send({"type": "subscribe", "channel": ch, "id": 1})
    assert slow.next_message()["type"] == "subscribed"
    # From here the slow client reads nothing.

    blob = "x" * 16000
    received = []

    async def reader():
        while True:
            m = await fast.next()
            received.append(m)
            if m["data"].get("last"):
                return

    task = asyncio.ensure_future(reader())
    sent = 0
    # Publish until the hub gives up on the slow client (its kernel buffers
    # fill first, then its queue passes 256 KiB); bounded so a broken hub
    # fails instead of looping.
    while hub.stats().slow_consumers == 0 and sent < 4000:
        batch = [(sent + i) for i in range(50)]
        await asyncio.to_thread(lambda: [publish(hub, t, ch, "n", i=i, blob=blob) for i in batch])
        sent += len(batch)
    assert hub.stats().slow_consumers == 1, "the stalled client was never closed"
    last = await asyncio.to_thread(publish, hub, t, ch, "n", i=sent, last=True)
    assert last.subscribers == 1  # only the fast one is left
    await asyncio.wait_for(task, hubtest.RECV_TIMEOUT * 4)
    assert [m["data"]["i"] for m in received] == list(range(sent + 1))
    offs = [m["offset"] for m in received]
    assert offs == list(range(offs[0], offs[0] + sent + 1))

    # The slow client, reading again, finds an error and a close with 4000 at the end.
    msgs, code = await asyncio.to_thread(slow.messages)
    slow.close()
    assert code == 4000, (code, len(msgs))
    # Before the close: what was already on its way, then one error saying why.
    assert msgs[-1]["type"] == "error" and msgs[-1]["code"] == "SLOW_CONSUMER", msgs[-1:]
    assert msgs[-1]["recoverable"] is False
    events = [m["data"]["i"] for m in msgs if m.get("type") == "n"]
    assert events == list(range(len(events))), "the stalled client's events are in order too"
    s = await hub.wait_stats(lambda s: s.connections == 1, "the slow client gone")
    assert s.messages_dropped > 0
    await fast.expect_nothing()


@pytest.fixture
def big_queue_hub(tmp_path_factory):
    h = start_hub(tmp_path_factory, LIVEHUB_SENDQ_MAX_BYTES="268435456",
                  LIVEHUB_SENDQ_MAX_FRAMES="100000")
    try:
        yield h
    finally:
        h.stop_and_check()


@aio
async def test_progress_conflates_to_the_final_value_for_a_slow_client(big_queue_hub):
    hub = big_queue_hub
    t, job, proj = uniq(), uniq("j"), uniq("p")
    slow = RawWs(hub, hub.token(t, "slow"))
    assert slow.next_message()["type"] == "connected"
    for i, ch in enumerate(["fill", "job:" + job, "project:" + proj]):
        slow.send({"type": "subscribe", "channel": ch, "id": i})
        assert slow.next_message()["type"] == "subscribed"
    # Fill the socket buffers so that what follows stays in the hub's queue.
    blob = "y" * 200000
    await asyncio.to_thread(lambda: [publish(hub, t, "fill", "f", blob=blob) for _ in range(60)])

    def progress(p):
        req = hub_pb2.PublishJobProgressRequest(tenant_id=t, event=events_pb2.JobProgress(
            job_id=job, project_id=proj, progress=p))
        return hub.rpc("PublishJobProgress", req).result

    results = await asyncio.to_thread(lambda: [progress(p) for p in range(0, 101)])
    done = await asyncio.to_thread(publish, hub, t, "job:" + job, "job:done")
    s = hub.stats()
    # Both channels conflated on their own: 100 replaced on each.
    assert s.messages_conflated == 200, s.messages_conflated

    slow.sock.settimeout(2.0)
    msgs = []
    try:
        while True:
            msgs.append(slow.next_message())
            if msgs[-1]["type"] == "job:done":
                break
    finally:
        slow.close()
    prog = [m for m in msgs if m["type"] == "job:progress"]
    by_ch = {}
    for m in prog:
        by_ch.setdefault(m["channel"], []).append(m)
    # One frame per channel, each the final value, and job: order holds
    # (the progress frame comes before job:done).
    assert sorted(by_ch) == sorted(["job:" + job, "project:" + proj])
    for ch, ms in by_ch.items():
        assert len(ms) == 1 and ms[0]["data"]["progress"] == 100, (ch, ms)
    assert by_ch["job:" + job][0]["offset"] == results[-1].channels[0].offset
    assert msgs[-1]["offset"] == done.offset

