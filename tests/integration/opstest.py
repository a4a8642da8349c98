"""Helpers for the operations tests: Python stubs of gRPC's own health and
reflection protos (third_party/proto), Prometheus text parsing, buf.

The protos are copied under names of their own before protoc runs: a Python
module path `grpc/...` would collide with the grpc library itself.
"""

import atexit
import http.client
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXT = os.path.join(ROOT, "third_party", "proto", "grpc")
BUF = os.path.join(ROOT, "tests", "npm", "node_modules", ".bin", "buf")

_COPIES = {
    "ops_health.proto": os.path.join(EXT, "health", "v1", "health.proto"),
    "ops_reflection_v1.proto": os.path.join(EXT, "reflection", "v1", "reflection.proto"),
    "ops_reflection_v1alpha.proto": os.path.join(EXT, "reflection", "v1alpha", "reflection.proto"),
}


def _generate():
    out = tempfile.mkdtemp(prefix="livehub-ops-stubs-")
    for name, src in _COPIES.items():
        shutil.copy(src, os.path.join(out, name))
    cmd = ["/usr/bin/python3", "-m", "grpc_tools.protoc", "-I", out,
           "--python_out=" + out, "--grpc_python_out=" + out] + list(_COPIES)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
    if res.returncode != 0:
        raise RuntimeError("protoc failed:\n" + res.stderr)
    sys.path.insert(0, out)
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return out


STUB_DIR = _generate()
health_pb2 = importlib.import_module("ops_health_pb2")
health_pb2_grpc = importlib.import_module("ops_health_pb2_grpc")
refl_v1_pb2 = importlib.import_module("ops_reflection_v1_pb2")
refl_v1_grpc = importlib.import_module("ops_reflection_v1_pb2_grpc")
refl_v1alpha_pb2 = importlib.import_module("ops_reflection_v1alpha_pb2")
refl_v1alpha_grpc = importlib.import_module("ops_reflection_v1alpha_pb2_grpc")

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_metrics(text):
    """Prometheus text format -> {(name, labels-string): float}; checks
    that every sample line is well formed and every family has a TYPE."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, "malformed metrics line: %r" % line
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, "no # TYPE for %s" % name
        samples[(name, labels)] = float(value)
    return samples


def buf(*args, timeout=60):
    """Runs buf; returns (status, stdout, stderr)."""
    if not os.access(BUF, os.X_OK):
        raise AssertionError("buf not installed at %s: run scripts/deps.sh" % BUF)
    res = subprocess.run([BUF] + list(args), capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stdout, res.stderr


def http_get(hub, path):
    """GET path on the hub's WebSocket/HTTP port: (status, content-type, body)."""
    conn = http.client.HTTPConnection(hub.ws_host, hub.ws_port, timeout=15)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type"), resp.read().decode()
    finally:
        conn.close()


def metrics(hub):
    """The hub's /metrics: (parsed samples, raw text)."""
    status, ctype, body = http_get(hub, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    return parse_metrics(body), body
