"""The client examples run against the real binary: clients/python
(publish_job.py, demo.py) and clients/node (worker.js), each checked by
what a WebSocket client of the tenant receives. And the embedded demo page
and browser client over HTTP (GET, ETag/304, HEAD, --demo 0)."""

import os
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from hubtest import ROOT, Hub, aio, uniq

PY = "/usr/bin/python3"
NODE = shutil.which("node")
NODE_MODULES = os.path.join(ROOT, "tests", "npm", "node_modules")
RUN_TIMEOUT = 120


def run(cmd, env=None, **kw):
    full = dict(os.environ)
    full.update(env or {})
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=full, **kw)
    assert res.returncode == 0, "%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
        cmd, res.returncode, res.stdout, res.stderr)
    return res.stdout


def grpc_addr(hub):
    return "%s:%d" % (hub.grpc_host, hub.grpc_port)


async def job_events(ws):
    """The job events up to and including the job's last one (completed or
    failed). job:progress is conflated per job (PROTOCOL.md): a progress
    event still queued when a newer one is published is replaced by it, so
    a subscriber gets the newest progress, never a stale one, but not
    necessarily every step (it depends on how fast the hub writes)."""
    got = []
    while not got or got[-1]["type"] == "job:progress":
        m = await ws.next()
        if m["type"].startswith("job:"):
            got.append(m)
    return got


def check_steps(evs, steps, last_type, last_offset):
    """evs: progress events of a subsequence of steps 1..steps (offset i for
    step i), the last step's always there, then last_type at last_offset."""
    progress, last = evs[:-1], evs[-1]
    assert all(e["type"] == "job:progress" for e in progress), evs
    assert (last["type"], last["offset"]) == (last_type, last_offset), evs
    offsets = [e["offset"] for e in progress]
    assert offsets == sorted(set(offsets)) and offsets and offsets[-1] == steps, evs
    assert all(1 <= o <= steps for o in offsets), evs
    return progress


@aio
async def test_python_worker_example(hub, tmp_path):
    tenant, job = uniq("py"), uniq("j")
    ws = await hub.connect(tenant, "alice")
    await ws.subscribe("job:" + job)
    out = run([PY, os.path.join(ROOT, "clients", "python", "publish_job.py"), "--addr", grpc_addr(hub),
               "--tenant", tenant, "--job", job, "--steps", "4", "--interval", "0"],
              env={"LIVEHUB_PY_GEN": str(tmp_path / "gen")})
    assert "completed" in out, out
    evs = await job_events(ws)
    progress = check_steps(evs, 4, "job:completed", 5)
    for e in progress:
        assert e["data"]["progress"] == 25 * e["offset"], e
        assert e["data"]["message"] == "step %d/4" % e["offset"] and e["data"]["jobId"] == job
    await ws.expect_nothing()


@aio
async def test_python_worker_failure(hub, tmp_path):
    tenant, job = uniq("py"), uniq("j")
    ws = await hub.connect(tenant, "alice")
    await ws.subscribe("job:" + job)
    run([PY, os.path.join(ROOT, "clients", "python", "publish_job.py"), "--addr", grpc_addr(hub),
         "--tenant", tenant, "--job", job, "--steps", "4", "--interval", "0", "--fail-at", "3"],
        env={"LIVEHUB_PY_GEN": str(tmp_path / "gen")})
    evs = await job_events(ws)
    check_steps(evs, 2, "job:failed", 3)
    assert evs[-1]["data"]["error"] == "step 3 failed"


@aio
async def test_python_demo_feeder(hub, tmp_path):
    """demo.py moves three bars on project:demo to completion and ticks prices."""
    tenant = uniq("demo")
    ws = await hub.connect(tenant, "alice")
    await ws.subscribe("project:demo")
    run([PY, os.path.join(ROOT, "clients", "python", "demo.py"), "--addr", grpc_addr(hub),
         "--tenant", tenant, "--duration", "1", "--tick", "0.05", "--seed", "1"],
        env={"LIVEHUB_PY_GEN": str(tmp_path / "gen")})
    got = await ws.barrier()
    completed = sorted(m["data"]["jobId"] for m in got if m["type"] == "job:completed")
    assert completed == ["export-3", "slice-2", "video-1"], got
    progress = [m for m in got if m["type"] == "job:progress"]
    assert len(progress) >= 20
    prices = [m for m in got if m["type"] == "price:updated"]
    assert len(prices) == 20 and all(m["channel"] == "$tenant" for m in prices)
    assert all(m["data"]["currency"] == "EUR" and int(m["data"]["amountMinor"]) > 0 for m in prices)


@pytest.mark.skipif(NODE is None or not os.path.isdir(os.path.join(NODE_MODULES, "@grpc", "grpc-js")),
                    reason="node or tests/npm/node_modules missing (scripts/deps.sh installs them)")
@aio
async def test_node_worker_example(hub):
    tenant, job, project = uniq("node"), uniq("j"), uniq("p")
    ws = await hub.connect(tenant, "bob")
    await ws.subscribe("project:" + project)
    out = run([NODE, os.path.join(ROOT, "clients", "node", "worker.js"), "--addr", grpc_addr(hub),
               "--tenant", tenant, "--job", job, "--project", project, "--steps", "3", "--interval", "0"],
              env={"NODE_PATH": NODE_MODULES})
    assert "completed  offset=4" in out, out
    evs = await job_events(ws)
    progress = check_steps(evs, 3, "job:completed", 4)
    assert all(e["channel"] == "project:" + project for e in evs)
    assert progress[-1]["data"]["progress"] == 100
    assert all(e["data"]["kind"] == "JOB_KIND_SLICE" for e in progress)
    assert int(evs[-1]["data"]["durationMs"]) >= 0


def http_get(hub, path, headers=None, method="GET"):
    req = urllib.request.Request("http://%s:%d%s" % (hub.ws_host, hub.ws_port, path),
                                 headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict((k.lower(), v) for k, v in r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict((k.lower(), v) for k, v in e.headers.items()), e.read()


def test_demo_page_and_client_are_served(hub):
    status, h, body = http_get(hub, "/?token=abc")
    assert status == 200
    assert h["content-type"] == "text/html; charset=utf-8"
    assert h["cache-control"] == "no-cache" and h["referrer-policy"] == "no-referrer"
    assert "script-src" not in h["content-security-policy"] and "default-src 'self'" in h["content-security-policy"]
    assert b'<script type="module" src="/demo.js">' in body
    status, h, body = http_get(hub, "/livehub.js")
    assert status == 200 and h["content-type"] == "text/javascript; charset=utf-8"
    with open(os.path.join(ROOT, "clients", "js", "livehub.js"), "rb") as f:
        assert body == f.read(), "/livehub.js must be clients/js/livehub.js as built"
    assert int(h["content-length"]) == len(body)
    etag = h["etag"]
    status, h2, body = http_get(hub, "/livehub.js", {"If-None-Match": etag})
    assert status == 304 and body == b"" and h2["etag"] == etag
    status, _, body = http_get(hub, "/livehub.js", {"If-None-Match": '"other"'})
    assert status == 200 and len(body) > 0
    status, h, body = http_get(hub, "/demo.js", method="HEAD")
    assert status == 200 and body == b"" and int(h["content-length"]) > 1000
    assert http_get(hub, "/nope.js")[0] == 404


def test_demo_off(tmp_path):
    h = Hub.start(tmp_path, args=["--ws-host", "127.0.0.1", "--ws-port", "0", "--grpc-host", "127.0.0.1",
                                  "--grpc-port", "0", "--jwt-secret", "s" * 32, "--demo", "0"])
    try:
        assert http_get(h, "/")[0] == 404
        assert http_get(h, "/livehub.js")[0] == 404
        assert http_get(h, "/healthz")[0] == 200
    finally:
        h.stop_and_check()
