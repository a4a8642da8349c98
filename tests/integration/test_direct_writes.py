"""Direct writes (docs/PERFORMANCE.md "Direct writes"): the frames a loop
turn's publications queue are written at the end of that turn without
waiting for lws' writable event (--direct-writes 1, the default). The same
events must arrive, complete and in order, either way; a socket that does
not take a write falls back to the writable event, so a stalled reader's
backlog stays in the hub's bounded queue rather than piling up in lws."""

import asyncio
import os
import struct

import hubtest
import opstest
import pytest
from hubtest import RPC_TIMEOUT, Hub, RawWs, aio, hub_pb2, publish, uniq


def metrics(hub):
    return opstest.metrics(hub)[0]


def writes(hub):
    m = metrics(hub)
    return (m[("livehub_writes_total", '{how="direct"}')],
            m[("livehub_writes_total", '{how="writable"}')])


async def read_events(client, n):
    """The next n events of client, in arrival order."""
    return [await client.next() for _ in range(n)]


@pytest.mark.parametrize("direct", [1, 0])
@aio
async def test_both_write_paths_deliver_everything_in_order(tmp_path, direct):
    h = Hub.start(tmp_path, env={"LIVEHUB_DIRECT_WRITES": str(direct)})
    try:
        t, ch = uniq(), "board:" + uniq("b")
        clients = [await h.connect(t, "u%d" % i) for i in range(20)]
        for c in clients:
            await c.subscribe(ch)
        d0, w0 = writes(h)
        n = 300

        def burst():
            futs = []
            for i in range(n):
                req = hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="n")
                req.data.update({"i": i})
                futs.append(h.stub.Publish.future(req, timeout=RPC_TIMEOUT))
            return [f.result().result.offset for f in futs]

        offsets = await asyncio.to_thread(burst)
        first = min(offsets)
        for c in clients:
            got = await read_events(c, n)
            assert [m["offset"] for m in got] == list(range(first, first + n))
            assert sorted(m["data"]["i"] for m in got) == list(range(n))
            await c.expect_nothing()
        d1, w1 = writes(h)
        if direct:
            assert d1 - d0 >= len(clients), "publications were not written directly"
        else:
            assert d1 == 0, "--direct-writes 0 still wrote directly"
            assert w1 - w0 >= len(clients)
        for c in clients:
            await c.close()
    finally:
        h.stop_and_check()


@aio
async def test_a_stalled_reader_keeps_its_backlog_in_the_hub_queue(tmp_path):
    """Once a stalled reader's socket is full, what follows must wait in the
    hub's queue (counted, bounded, conflatable), not go on being written into
    lws' buffer: every further publication adds one frame to the queue
    gauge. Read again, the client gets every event in order, once."""
    h = Hub.start(tmp_path, env={"LIVEHUB_SENDQ_MAX_BYTES": str(64 << 20),
                                 "LIVEHUB_SENDQ_MAX_FRAMES": "100000"})
    try:
        t, ch = uniq(), "board:" + uniq("b")
        slow = RawWs(h, h.token(t, "slow"))
        assert slow.next_message()["type"] == "connected"
        slow.send({"type": "subscribe", "channel": ch, "id": 1})
        assert slow.next_message()["type"] == "subscribed"
        fast = await h.connect(t, "fast")
        await fast.subscribe(ch)

        blob = "z" * 8000
        sent = 0

        async def publish_some(k):
            nonlocal sent
            for _ in range(k):
                await asyncio.to_thread(publish, h, t, ch, "n", i=sent, blob=blob)
                sent += 1
            got = await read_events(fast, k)
            assert [m["data"]["i"] for m in got] == list(range(sent - k, sent))
            return metrics(h)[("livehub_send_queue_frames", "")]

        # Fill the kernel's buffers: until frames stay queued in the hub
        # (bounded: a hub that never queues fails here).
        queued = 0
        while queued < 4 and sent < 2000:
            queued = await publish_some(25)
        assert queued >= 4, "nothing stayed queued after %d events of 8 KB" % sent
        more = await publish_some(100)
        assert more - queued >= 95, "frames went past the hub's queue: %d -> %d" % (queued, more)
        assert metrics(h)[("livehub_writes_total", '{how="direct"}')] > 0

        slow.sock.settimeout(5.0)
        msgs = []
        while len(msgs) < sent:
            msgs.append(await asyncio.to_thread(slow.next_message))
        slow.close()
        assert [x["data"]["i"] for x in msgs] == list(range(sent))
        offs = [x["offset"] for x in msgs]
        assert offs == list(range(offs[0], offs[0] + sent))
        await fast.close()
    finally:
        h.stop_and_check()


def frames_to_eof(ws):
    """Every (opcode, payload) until the hub closes the socket."""
    ws.sock.settimeout(hubtest.RECV_TIMEOUT)
    out = []
    while True:
        fr = ws._frame()
        if fr is None:
            return out
        out.append(fr)


@pytest.mark.parametrize("loop", ["poll", "libuv"])
@pytest.mark.parametrize("direct", [1, 0])
def test_no_data_frame_follows_the_close_frame(tmp_path, loop, direct):
    """A binary frame makes the hub close with 1003. With the poll loop
    lws then waits up to 5 s for the client's answer and still offers
    writable events: publications on the connection's channel meanwhile
    must not be written after the close frame (RFC 6455 5.5.1), neither
    directly nor at a writable event."""
    h = Hub.start(tmp_path, env={"LIVEHUB_DIRECT_WRITES": str(direct), "LIVEHUB_EVENT_LOOP": loop})
    try:
        t, ch = uniq(), "board:" + uniq("b")
        ws = RawWs(h, h.token(t, "u"))
        assert ws.next_message()["type"] == "connected"
        ws.send({"type": "subscribe", "channel": ch, "id": 1})
        assert ws.next_message()["type"] == "subscribed"
        mask = os.urandom(4)
        ws.sock.sendall(bytes([0x82, 0x81]) + mask + bytes([0x41 ^ mask[0]]))
        op, data = ws._frame()
        while op != 8:
            op, data = ws._frame()
        assert struct.unpack(">H", data[:2])[0] == 1003
        # Not answered: the hub holds the connection open for a while.
        for i in range(20):
            publish(h, t, ch, "n", i=i)
        after = [op for op, _ in frames_to_eof(ws)]
        ws.close()
        assert 1 not in after, "text frames after the close frame: %r" % after
    finally:
        h.stop_and_check()
