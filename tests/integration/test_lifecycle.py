"""Connection lifecycle: heartbeat against a client that reads but never
answers pings (a raw socket client, since Python's websockets library
always answers), and the shutdown deadline against a client that never
reads."""

import asyncio
import base64
import os
import signal
import socket
import struct

from hubtest import Hub, RECV_TIMEOUT, aio, hub_pb2


class RawClient:
    """A minimal WebSocket client on a plain socket: it does the handshake,
    then reads frames and answers nothing (no pong, no close reply)."""

    def __init__(self, host, port, token):
        self.sock = socket.create_connection((host, port), timeout=RECV_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET /ws?token=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n" % (token, host, port, key))
        self.sock.sendall(req.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def frame(self):
        """The next frame as (opcode, payload); EOFError when the hub hung up."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0F, payload

    def read_until_gone(self):
        """Reads every frame until the hub closes; returns the opcodes seen."""
        seen = []
        try:
            while True:
                op, _ = self.frame()
                seen.append(op)
                if op == 0x8:
                    return seen
        except (EOFError, ConnectionResetError):
            return seen

    def close(self):
        self.sock.close()


@aio
async def test_heartbeat_hangs_up_on_a_client_that_reads_but_never_pongs(tmp_path):
    h = Hub.start(tmp_path, env={"LIVEHUB_PING_INTERVAL": "1", "LIVEHUB_PING_TIMEOUT": "3"})
    try:
        alive = await h.connect("acme", "alive")  # websockets answers pings by itself
        raw = RawClient(h.ws_host, h.ws_port, h.token("acme", "mute"))
        op, payload = raw.frame()
        assert op == 0x1 and b'"heartbeat":{"pingInterval":1,"pingTimeout":3}' in payload, payload
        seen = await asyncio.get_running_loop().run_in_executor(None, raw.read_until_gone)
        raw.close()
        assert 0x9 in seen, "the hub never pinged: %r" % seen
        await h.wait_stats(lambda s: s.connections == 1, "the mute client hung up on")
        # The client that answered is still served.
        assert await alive.request({"type": "ping", "id": "app"}) == {"type": "pong", "id": "app"}
        assert h.stats().connections == 1
    finally:
        h.stop_and_check()


@aio
async def test_shutdown_deadline_drops_a_client_that_never_reads(tmp_path):
    """SIGTERM with a client whose socket is full: the reading client gets
    its queued events and 1001; the stalled one cannot take its close, so
    the shutdown deadline drops it; the process still exits 0."""
    h = Hub.start(tmp_path, env={"LIVEHUB_SHUTDOWN_TIMEOUT": "2"})
    reader = await h.connect("acme", "reader")
    stalled = await h.connect("acme", "stalled")
    await reader.subscribe("feed")
    await stalled.subscribe("feed")
    stalled.ws.transport.pause_reading()
    blob = "b" * 100_000
    offsets = []
    for i in range(60):  # ~6 MB: more than loopback socket buffers hold
        req = hub_pb2.PublishRequest(tenant_id="acme", channel="feed", type="chunk")
        req.data.update({"i": i, "blob": blob})
        offsets.append(h.rpc("Publish", req).result.offset)
        assert (await reader.next())["offset"] == offsets[-1]
    h.proc.send_signal(signal.SIGTERM)
    code, got = await reader.expect_close()
    assert (code, got) == (1001, [])
    status = await asyncio.get_running_loop().run_in_executor(None, h.terminate)
    stalled.ws.transport.abort()
    assert status == 0, "exit status %r\n%s" % (status, h.stderr_tail())
    with open(h.stderr_path) as f:
        log = f.read()
    assert "shutdown timeout: closing remaining clients" in log, h.stderr_tail()
