"""Redis mode against a hostile or broken Redis (review-redis): a server
that speaks RESP but answers with shapes a real Redis never sends. The hub
must neither crash nor read past a reply, nor deliver a message whose
pub/sub channel is not one of its own names; it must exit 0 on SIGTERM
(an ASan build: no invalid read, no leak).

The fake server below answers just enough for a node to come up: AUTH,
SELECT, the SPUBLISH probe, SCRIPT LOAD, PING, (S)SUBSCRIBE, and EVAL by
which script it is (the read, the meta or the publish script); the test
decides what the read returns and pushes pub/sub messages itself.
"""

import socket
import threading

import grpc

import redistest
from hubtest import Hub, aio, hub_pb2, uniq

EPOCH = "0123456789abcdef"


def bulk(s):
    b = s if isinstance(s, bytes) else str(s).encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


def integer(n):
    return b":%d\r\n" % n


def array(*items):
    return b"*%d\r\n" % len(items) + b"".join(items)


def entry(offset, frame):
    return array(bulk("%d-0" % offset), array(bulk("f"), bulk(frame)))


def event_frame(channel, offset, data):
    return ('{"type":"n","channel":"%s","offset":%d,"epoch":"%s","ts":1,"data":%s}'
            % (channel, offset, EPOCH, data))


class FakeRedis:
    """A RESP server on a free loopback port, one thread per connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = "redis://127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.read_reply = array(bulk(EPOCH), bulk("0"), array())
        self.subscribed = {}  # pub/sub channel -> the connection that asked
        self.mute_eval = False  # EVAL/EVALSHA get no answer at all
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _send(self, c, data):
        with self.lock:
            c.sendall(data)

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            while True:
                cmd = redistest._read_reply(f)
                if self.mute_eval and cmd[0].upper() in ("EVAL", "EVALSHA"):
                    continue
                self._send(c, self._answer(c, cmd))
        except (ConnectionError, OSError, ValueError):
            pass

    def _answer(self, c, cmd):
        verb = cmd[0].upper()
        if verb in ("AUTH", "SELECT"):
            return b"+OK\r\n"
        if verb in ("SPUBLISH", "PUBLISH"):
            return integer(0)
        if verb == "SCRIPT":
            return bulk("a" * 40)
        if verb == "ROLE":
            return array(bulk("master"), integer(0), array())
        if verb == "PING":
            return b"+PONG\r\n"
        if verb in ("SSUBSCRIBE", "SUBSCRIBE"):
            self.subscribed[cmd[1]] = c
            return array(bulk(verb.lower()), bulk(cmd[1]), integer(1))
        if verb in ("SUNSUBSCRIBE", "UNSUBSCRIBE"):
            self.subscribed.pop(cmd[1], None)
            return array(bulk(verb.lower()), bulk(cmd[1]), integer(0))
        if verb in ("EVAL", "EVALSHA"):
            script = cmd[1]
            if "XRANGE" in script:
                return self.read_reply
            if "HMGET" in script:
                return array(bulk(EPOCH), bulk("0"))
            return array(bulk("ok"), bulk("1 " + EPOCH))
        return b"-ERR unknown command\r\n"

    def push(self, on, name, msg):
        """Sends a pub/sub message ["smessage", name, msg] on the connection
        that subscribed to `on`; msg may be raw RESP (bytes)."""
        self._send(self.subscribed[on], array(bulk("smessage"), bulk(name),
                                              msg if isinstance(msg, bytes) else bulk(msg)))

    def push_raw(self, on, data):
        self._send(self.subscribed[on], data)

    def close(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


def start_node(tmp_path, fake):
    h = Hub.start(tmp_path, env={"LIVEHUB_REDIS_URL": fake.url, "LIVEHUB_NODE_ID": "nodeH"})
    redistest.wait_until(lambda: redistest.readyz(h) == 200, "node ready on the fake Redis")
    return h


@aio
async def test_history_entries_of_unexpected_shapes_are_skipped(tmp_path):
    fake = FakeRedis()
    h = start_node(tmp_path, fake)
    try:
        t, ch = uniq(), "job:" + uniq("j")
        # Entries a real Redis never returns: an integer, an entry whose
        # fields are an integer, one with a single field, then a good one.
        fake.read_reply = array(
            bulk(EPOCH), bulk("4"),
            array(integer(5),
                  array(bulk("1-0"), integer(7)),
                  array(bulk("2-0"), array(bulk("f"))),
                  array(bulk("3-0")),
                  entry(4, event_frame(ch, 4, '{"ok":"good"}'))))
        got = h.rpc("History", hub_pb2.HistoryRequest(tenant_id=t, channel=ch))
        assert (got.offset, got.epoch) == (4, EPOCH)
        assert [(p.offset, p.type) for p in got.publications] == [(4, "n")]
        # An epoch that is not 16 hex digits (here not even UTF-8) is not
        # passed on: no epoch.
        fake.read_reply = array(bulk(b"\xff" * 16), bulk("4"), array())
        got = h.rpc("History", hub_pb2.HistoryRequest(tenant_id=t, channel=ch))
        assert (got.offset, got.epoch, list(got.publications)) == (4, "", [])
        # Not an array of three: the read failed.
        fake.read_reply = array(integer(1), integer(2))
        err = h.rpc_error("History", hub_pb2.HistoryRequest(tenant_id=t, channel=ch))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert h.proc.poll() is None
    finally:
        h.stop_and_check()
        fake.close()


@aio
async def test_pubsub_messages_on_foreign_or_malformed_channels_are_dropped(tmp_path):
    fake = FakeRedis()
    h = start_node(tmp_path, fake)
    try:
        t, ch = uniq(), "job:" + uniq("j")
        a = await h.connect(t, "alice")
        await a.subscribe(ch)
        mine = "livehub:{%s:%s}" % (t, ch)
        bad = event_frame(ch, 1, '{"ok":"bad"}')
        msg = "E 1 %s 0 nodeX\n%s" % (EPOCH, bad)
        # Names too short to hold the prefix and a hash tag: nothing may be
        # read past them.
        for name in ("", "x", "livehub", "livehub:", "livehub:{", "livehub:{}", "livehub:{%s" % t):
            fake.push(mine, name, msg)
        # Another prefix (same length) and a name that is not a hash tag.
        fake.push(mine, "LIVEHUB:{%s:%s}" % (t, ch), msg)
        fake.push(mine, "livehub:[%s:%s}" % (t, ch), msg)
        fake.push(mine, "livehubX{%s:%s}" % (t, ch), msg)
        # Messages of other shapes.
        fake.push(mine, mine, integer(3))
        fake.push_raw(mine, array(bulk("smessage"), bulk(mine)))
        fake.push_raw(mine, array(integer(1), bulk(mine), bulk(msg)))
        fake.push_raw(mine, array(bulk("smessage"), integer(1), bulk(msg)))
        # Then the one good message.
        good = event_frame(ch, 1, '{"ok":"good"}')
        fake.push(mine, mine, "E 1 %s 0 nodeX\n%s" % (EPOCH, good))
        got = await a.next()
        assert (got["offset"], got["data"]) == (1, {"ok": "good"}), got
        assert await a.barrier() == []
        assert h.proc.poll() is None
    finally:
        h.stop_and_check()
        fake.close()


@aio
async def test_sigterm_with_every_kind_of_command_unanswered(tmp_path):
    # Redis takes the commands and never answers: a subscribe waits for the
    # channel's position, a History and a Publish for their scripts. SIGTERM
    # must still end the process cleanly (ASan: no leak, no use after free).
    import concurrent.futures
    fake = FakeRedis()
    h = start_node(tmp_path, fake)
    try:
        fake.mute_eval = True
        t, ch = uniq(), "job:" + uniq("j")
        a = await h.connect(t, "alice")
        await a.send({"type": "subscribe", "channel": ch, "id": 1})
        b = await h.connect(t, "bob")
        await b.send({"type": "subscribe", "channel": ch, "id": 2,
                      "since": {"offset": 3, "epoch": EPOCH}})
        await b.close()  # closed while its subscribe is in flight
        pool = concurrent.futures.ThreadPoolExecutor(2)
        calls = [pool.submit(h.stub.History, hub_pb2.HistoryRequest(tenant_id=t, channel=ch),
                             timeout=60),
                 pool.submit(h.stub.Publish, hub_pb2.PublishRequest(tenant_id=t, channel=ch,
                                                                     type="n"), timeout=60)]
        redistest.wait_until(lambda: h.stats().redis_commands_in_flight >= 3,
                             "the scripts sent and unanswered")
        assert all(not f.done() for f in calls)
    finally:
        h.stop_and_check()
        fake.close()
    for f in calls:
        assert isinstance(f.exception(timeout=30), grpc.RpcError)
    pool.shutdown()
