"""Helpers for the multi-node tests (issue 7): a real redis-server and
several livehub processes joined through it.

- `RedisServer`: redis-server on a free 127.0.0.1 port with a temporary
  directory of its own, no persistence (no RDB, no AOF). `.url`, `.port`,
  `.pid`, `.stop()` (SIGTERM, waits), `.start()` (again on the same port),
  `.kill()` (SIGKILL), `.cli(*args)` (one command through a small RESP
  client; returns str / int / list / None, raises RedisError on an error
  reply).
- the `redis` fixture (conftest.py): one RedisServer per test.
- `cluster(n, redis, **env)`: n livehub processes (hubtest.Hub) with
  LIVEHUB_REDIS_URL=redis.url, one JWT secret (a token works on every
  node) and node ids node1..nodeN; `env` adds settings. Returns a Cluster
  (a list of Hubs, cluster[0] is node1). Use it as a context manager, or
  not: the `redis` fixture stops every cluster started on it before it
  stops Redis. At the end each node still running gets SIGTERM and must
  exit with status 0, as with every hub the tests start.
- `RedisServer(password=…)` requires AUTH (`.url` carries the password);
  `.unix_url` is `unix:///…/redis.sock`, the same server on a Unix socket.

Every process is stopped by its PID (never by name), also when a test
fails, and gets SIGKILL if pytest itself dies (PR_SET_PDEATHSIG).
redis-server missing is a failure, never a skip: scripts/deps.sh installs it.
"""

import atexit
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import hubtest
import opstest

REDIS_SERVER = os.environ.get("REDIS_SERVER", shutil.which("redis-server") or "/usr/bin/redis-server")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

# Every redis-server this module started and has not stopped yet, by PID,
# so that an interrupted run (an exception between start and the fixture's
# teardown) still leaves none behind.
_live_redis = {}


def _kill_leftovers():
    for pid in list(_live_redis):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _live_redis.clear()


atexit.register(_kill_leftovers)


def _die_with_parent():
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller
    retries when another process takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisError(Exception):
    """An error reply (`-ERR …`) from Redis."""


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode("utf-8", "surrogateescape")
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_read_reply(f) for _ in range(n)]
    raise ConnectionError("bad RESP line %r" % line)


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _raise_errors(reply):
    if isinstance(reply, RedisError):
        raise reply
    if isinstance(reply, list):
        for r in reply:
            _raise_errors(r)
    return reply


class RedisServer:
    """One redis-server process (see the module docstring)."""

    def __init__(self, port=None, password=None):
        self.dir = tempfile.mkdtemp(prefix="lh-redis-")
        self.port = port or free_port()
        self.password = password
        self.proc = None
        self.log_path = os.path.join(self.dir, "redis.log")
        self.sock_path = os.path.join(self.dir, "redis.sock")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def url(self):
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s127.0.0.1:%d" % (auth, self.port)

    @property
    def unix_url(self):
        return "unix://" + self.sock_path

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        """Starts redis-server (again, after stop/kill: on the same port,
        empty, since nothing is persisted) and waits until it answers PING."""
        assert not self.running, "redis-server already running (pid %d)" % self.pid
        if not os.access(REDIS_SERVER, os.X_OK):
            raise AssertionError("redis-server not found at %s: run scripts/deps.sh (it installs the "
                                 "Debian package redis-server)" % REDIS_SERVER)
        fixed = self.proc is not None  # a restart keeps its port
        for attempt in range(5):
            args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
                    "--dir", self.dir, "--save", "", "--appendonly", "no",
                    "--daemonize", "no", "--protected-mode", "no",
                    "--logfile", self.log_path, "--databases", "4",
                    "--unixsocket", self.sock_path, "--unixsocketperm", "700"]
            if self.password:
                args += ["--requirepass", self.password]
            self.proc = subprocess.Popen(args, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
            _live_redis[self.proc.pid] = self.proc
            if self._wait_ping():
                return self
            self._reap()
            if fixed:
                # The port was ours; after a stop it may linger briefly.
                time.sleep(0.2)
            else:
                self.port = free_port()
        raise AssertionError("redis-server did not start on 127.0.0.1:%d\n%s" % (self.port,
                                                                                   self.log_tail()))

    def _wait_ping(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.cli("PING") == "PONG":
                    return True
            except (OSError, ConnectionError, RedisError):
                pass
            time.sleep(0.02)
        return False

    def _reap(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _live_redis.pop(self.proc.pid, None)

    def stop(self):
        """SIGTERM (nothing to save) and wait; then the port refuses
        connections until start()."""
        if self.proc is None or self.proc.poll() is not None:
            self._reap()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        self._reap()

    def kill(self):
        """SIGKILL and wait."""
        self._reap()

    def close(self):
        """stop() and remove the temporary directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return "(no redis log)"
        return "--- redis log (last %d bytes) ---\n%s" % (n, data[-n:].decode("utf-8", "replace"))

    def cli(self, *args, timeout=10.0):
        """Runs one command; returns its reply (str, int, list, None).
        An error reply raises RedisError."""
        return _raise_errors(self.pipeline([args], timeout=timeout)[0])

    def pipeline(self, commands, timeout=10.0):
        """Runs several commands on one connection (in order); returns
        their replies, an error reply as a RedisError object (not raised)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            pre = [("AUTH", self.password)] if self.password else []
            s.sendall(b"".join(_encode(c) for c in pre + list(commands)))
            f = s.makefile("rb")
            replies = [_read_reply(f) for _ in range(len(pre) + len(commands))]
        if pre:
            _raise_errors(replies[0])
        return replies[len(pre):]


class Cluster(list):
    """n livehub nodes on one Redis: a list of hubtest.Hub (node1 first)."""

    def __init__(self, redis, env, args=None):
        super().__init__()
        self.redis = redis
        self.env = dict(env)
        self.args = args
        self.secret = secrets.token_urlsafe(32)
        self.dir = tempfile.mkdtemp(prefix="lh-cluster-")
        self.killed = set()  # indexes of nodes a test killed or stopped itself
        self.closed = False
        self._started = 0

    def node_env(self, node_id):
        env = {"LIVEHUB_REDIS_URL": self.redis.url, "LIVEHUB_NODE_ID": node_id}
        env.update(self.env)
        return env

    def add(self, node_id=None, **env):
        """Starts one more node (node<k> by default) and returns its Hub;
        env adds to the cluster's settings for this node only."""
        self._started += 1
        node_id = node_id or "node%d" % self._started
        wd = os.path.join(self.dir, "%s-%d" % (node_id, self._started))
        os.mkdir(wd)
        e = self.node_env(node_id)
        e.update(env)
        h = hubtest.Hub.start(wd, env=e, secret=self.secret, args=self.args)
        h.node_id = node_id
        self.append(h)
        return h

    def kill(self, i):
        """SIGKILL node i (the test's crash), waits for it."""
        h = self[i]
        self.killed.add(i)
        h.proc.send_signal(signal.SIGKILL)
        h.proc.wait()
        if h.channel is not None:
            h.channel.close()
        h.stopped = True

    def stop(self, i):
        """SIGTERM node i; it must exit with status 0."""
        self.killed.add(i)
        self[i].stop_and_check()

    def replace(self, i):
        """Starts a new process with node i's id (a restart: new ports) in
        place of a node that was killed or stopped; returns it."""
        assert i in self.killed, "node %d is still running" % i
        old = self[i]
        h = self.add(node_id=old.node_id)
        self.pop()  # add() appended it: put it in i's place
        self[i] = h
        self.killed.discard(i)
        return h

    def close(self):
        """SIGTERM to every running node at once; each must exit 0.
        Kills whatever is left when one does not, and removes the dirs."""
        if self.closed:
            return
        self.closed = True
        _clusters.pop(id(self), None)
        errors = []
        running = [(i, h) for i, h in enumerate(self) if i not in self.killed]
        for _, h in running:
            if h.proc.poll() is None:
                h.proc.send_signal(signal.SIGTERM)
        for i, h in running:
            try:
                h.stop_and_check()
            except AssertionError as e:
                errors.append("node %d (%s): %s" % (i + 1, getattr(h, "node_id", "?"), e))
            except BaseException:
                h._kill()
                raise
        for h in self:
            h._kill()
        if not errors:
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("\n\n".join(errors))

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        if etype is None:
            self.close()
        else:
            try:
                self.close()
            except AssertionError:
                pass  # the test's own failure is the one to report
        return False


# Clusters not closed yet, so the `redis` fixture can close them first.
_clusters = {}


def cluster(n, redis, args=None, **env):
    """Starts n nodes on redis (see the module docstring); returns the
    Cluster. When one fails to start, the ones started are stopped."""
    c = Cluster(redis, env, args=args)
    _clusters[id(c)] = c
    try:
        for _ in range(n):
            c.add()
    except BaseException:
        try:
            c.close()
        except AssertionError:
            pass
        raise
    return c


def close_clusters_on(redis):
    """Closes every open cluster that uses redis; raises the first
    shutdown failure after closing them all."""
    first = None
    for c in [c for c in _clusters.values() if c.redis is redis]:
        try:
            c.close()
        except AssertionError as e:
            first = first or e
    if first:
        raise first


# -- probes ---------------------------------------------------------------

def readyz(hub):
    return opstest.http_get(hub, "/readyz")[0]


def wait_until(pred, what, timeout=hubtest.RECV_TIMEOUT * 2, interval=0.05):
    """Polls pred() until it is true (returns its value); fails after a
    generous timeout (a state change, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError("never reached: %s (last %r)" % (what, last))
        time.sleep(interval)
