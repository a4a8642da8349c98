"""Backpressure: a client that stops reading is closed with SLOW_CONSUMER
(4000) while a normal client on the same channel receives everything in
order; job:progress conflates while queued, so a slow client still ends at
the final value.

The stalled client is a raw TCP socket with a small receive buffer that
does the WebSocket handshake and then stops reading: the only way to be
sure nothing reads on its behalf (client libraries read ahead)."""

import asyncio
import base64
import json
import os
import socket
import struct

import hubtest
import pytest
from hubtest import aio, check_event, events_pb2, hub_pb2, uniq


class RawWs:
    """A minimal WebSocket client on a blocking socket."""

    def __init__(self, hub, token, rcvbuf=4096):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(hubtest.RECV_TIMEOUT)
        s.connect((hub.ws_host, hub.ws_port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n"
                   % (token, hub.ws_host, hub.ws_port, key)).encode())
        self.sock = s
        self.buf = b""
        self.pending = []
        while b"\r\n\r\n" not in self.buf:
            chunk = s.recv(4096)
            assert chunk, "closed during the handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, msg):
        payload = json.dumps(msg).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + body)

    def _parse(self):
        """(opcode, payload) of a whole frame at the front of buf, or None."""
        b = self.buf
        if len(b) < 2:
            return None
        n, hl = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, hl = struct.unpack(">H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, hl = struct.unpack(">Q", b[2:10])[0], 10
        if len(b) < hl + n:
            return None
        self.buf = b[hl + n:]
        return b[0] & 0x0F, b[hl:hl + n]

    def _frame(self):
        """(opcode, payload) of the next frame, or None at EOF."""
        while True:
            fr = self._parse()
            if fr is not None:
                return fr
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buf += chunk

    def messages(self):
        """Reads to the end: (every JSON message, close code or None)."""
        msgs, self.pending = self.pending, []
        while True:
            fr = self._frame()
            if fr is None:
                return msgs, None
            op, data = fr
            if op == 8:
                return msgs, struct.unpack(">H", data[:2])[0] if len(data) >= 2 else None
            if op == 1:
                msgs += [json.loads(ln) for ln in data.decode().split("\n") if ln]

    def next_message(self):
        """The next JSON message (frames may batch several, '\n'-split)."""
        while not self.pending:
            fr = self._frame()
            assert fr is not None, "connection closed"
            if fr[0] == 1:
                self.pending += [json.loads(ln) for ln in fr[1].decode().split("\n") if ln]
        return self.pending.pop(0)

    def close(self):
        self.sock.close()


def start_hub(tmp_path_factory, **env):
    return hubtest.Hub.start(tmp_path_factory.mktemp("bp"), env=env)


@pytest.fixture
def small_queue_hub(tmp_path_factory):
    h = start_hub(tmp_path_factory, LIVEHUB_SENDQ_MAX_BYTES="262144")
    try:
        yield h
    finally:
        h.stop_and_check()


def publish(hub, tenant, channel, etype="x", **data):
    req = hub_pb2.PublishRequest(tenant_id=tenant, channel=channel, type=etype)
    req.data.update(data)
    return hub.rpc("Publish", req).result


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

