"""Fixtures for the livehub integration tests: the real binary, real peers.

Python stubs are generated from proto/ once per session into a temporary
directory (never committed). The `hub` fixture runs one livehub per test
module; `fresh_hub` runs one per test, for tests that need exact counters.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _generate_stubs():
    """Runs grpc_tools.protoc over proto/ into a temp dir and puts it first
    on sys.path, so `from livehub.v1 import hub_pb2` works."""
    out = tempfile.mkdtemp(prefix="livehub-stubs-")
    protos = [
        os.path.join("livehub", "v1", "events.proto"),
        os.path.join("livehub", "v1", "hub.proto"),
    ]
    cmd = [
        "/usr/bin/python3", "-m", "grpc_tools.protoc",
        "-I", os.path.join(ROOT, "proto"), "-I", "/usr/include",
        "--python_out=" + out, "--grpc_python_out=" + out,
    ] + [os.path.join(ROOT, "proto", p) for p in protos]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("protoc failed:\n" + res.stderr)
    sys.path.insert(0, out)
    return out


_STUB_DIR = _generate_stubs()

import hubtest  # noqa: E402  (needs the stubs on sys.path)


def pytest_unconfigure(config):
    shutil.rmtree(_STUB_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One livehub for the whole test module. Tests keep apart by using
    their own tenant names (hubtest.uniq())."""
    h = hubtest.Hub.start(tmp_path_factory.mktemp("hub"))
    try:
        yield h
    finally:
        h.stop_and_check()


@pytest.fixture
def fresh_hub(tmp_path_factory):
    """A livehub of its own for one test (exact stats, shutdown)."""
    h = hubtest.Hub.start(tmp_path_factory.mktemp("fresh"))
    try:
        yield h
    finally:
        h.stop_and_check()


@pytest.fixture
def redis():
    """A redis-server of its own for one test (redistest.RedisServer: free
    loopback port, temporary directory, no persistence). Clusters started
    on it (redistest.cluster) are stopped first, each node must exit 0;
    then redis-server is stopped by its PID and its directory removed."""
    import redistest

    r = redistest.RedisServer().start()
    try:
        yield r
    finally:
        try:
            redistest.close_clusters_on(r)
        finally:
            r.close()
