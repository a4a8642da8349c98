"""Service authentication on the gRPC API (docs/SECURITY.md "Service
authentication (gRPC)"): API keys in `authorization: Bearer` metadata,
scopes, tenant restrictions, PublishStream, SIGHUP reload, development mode,
and keys never appearing in the logs."""

import hashlib
import json
import os
import signal
import subprocess
import time

import grpc
import pytest

import hubtest
from hubtest import Hub, aio, events_pb2, hub_pb2, hub_pb2_grpc, uniq

PUB_KEY = "pub-Zq3v9LkWm2XyTt8R"          # publish, any tenant
ACME_KEY = "acme-Hk4Jd8Pq2Ws7Nb5C"        # publish, tenants acme-*, restricted
ADMIN_KEY = "admin-Qe6Ry1Tu3Io9Pa2S"      # admin
ACME_ADMIN_KEY = "acadm-Mn7Bv5Cx3Zl1Kj9H"  # admin, restricted to one tenant
HASHED_KEY = "hashed-Fg2Hj4Kl6Zx8Cv0B"    # publish, configured by its SHA-256 only
ALL_KEYS = (PUB_KEY, ACME_KEY, ADMIN_KEY, ACME_ADMIN_KEY, HASHED_KEY)

ACME = "acme-" + uniq("t")[2:]
GLOBEX = "globex-" + uniq("t")[2:]


def compact_keys():
    digest = hashlib.sha256(HASHED_KEY.encode()).hexdigest()
    return ",".join([
        "jobs:publish=" + PUB_KEY,
        "acme-jobs:publish:%s=%s" % (ACME, ACME_KEY),
        "ops:admin=" + ADMIN_KEY,
        "acme-ops:admin:%s=%s" % (ACME, ACME_ADMIN_KEY),
        "hashed:publish=sha256:" + digest,
    ])


def assert_no_keys_in(text):
    for k in ALL_KEYS:
        assert k not in text, "an API key appears in the logs"
    assert hashlib.sha256(PUB_KEY.encode()).hexdigest() not in text


@pytest.fixture(scope="module")
def khub(tmp_path_factory):
    """A hub with keys (from LIVEHUB_API_KEYS), logging at debug; its test
    channel uses the admin key. At the end: no key in its logs."""
    h = Hub.start(tmp_path_factory.mktemp("keys"), api_key=ADMIN_KEY,
                  env={"LIVEHUB_API_KEYS": compact_keys(), "LIVEHUB_LOG_LEVEL": "debug"})
    try:
        yield h
    finally:
        h.stop_and_check()
        assert_no_keys_in(h.stderr_text())


def stub(hub, key=None):
    ch = hub.new_channel(key)
    return ch, hub_pb2_grpc.HubServiceStub(ch)


def call_error(hub, method, req, key=None, metadata=None):
    ch, s = stub(hub, key)
    try:
        getattr(s, method)(req, timeout=hubtest.RPC_TIMEOUT, metadata=metadata)
    except grpc.RpcError as e:
        return e.code(), e.details()
    finally:
        ch.close()
    raise AssertionError("%s succeeded with key %r, want an error" % (method, key))


def call(hub, method, req, key):
    ch, s = stub(hub, key)
    try:
        return getattr(s, method)(req, timeout=hubtest.RPC_TIMEOUT)
    finally:
        ch.close()


def broadcast(tenant, etype="note"):
    return hub_pb2.BroadcastTenantRequest(tenant_id=tenant, type=etype)


def job_progress(tenant, job):
    return hub_pb2.PublishJobProgressRequest(
        tenant_id=tenant, event=events_pb2.JobProgress(job_id=job, progress=10))


# -- who may call at all -----------------------------------------------------


def test_no_key_is_unauthenticated(khub):
    for method, req in (("BroadcastTenant", broadcast(ACME)),
                        ("GetStats", hub_pb2.GetStatsRequest())):
        code, details = call_error(khub, method, req)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code, details)
        assert details.startswith("missing authorization metadata"), details


def test_wrong_or_malformed_key_is_unauthenticated(khub):
    cases = [
        [("authorization", "Bearer " + PUB_KEY + "x")],
        [("authorization", "Bearer " + PUB_KEY[:-1])],
        [("authorization", "Bearer " + hashlib.sha256(HASHED_KEY.encode()).hexdigest())],
        [("authorization", "Bearer " + "k" * 5000)],
    ]
    for md in cases:
        code, details = call_error(khub, "BroadcastTenant", broadcast(ACME), metadata=md)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (md[0][1][:20], code, details)
        assert details in ("invalid API key",
                           'authorization metadata must be "Bearer <key>"'), details
    for md in ([("authorization", PUB_KEY)], [("authorization", "Basic " + PUB_KEY)],
               [("authorization", "Bearer ")]):
        code, details = call_error(khub, "BroadcastTenant", broadcast(ACME), metadata=md)
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED,
                                   'authorization metadata must be "Bearer <key>"')
    # Two authorization entries, one of them valid: refused as ambiguous.
    md = [("authorization", "Bearer " + PUB_KEY), ("authorization", "Bearer nope-nope-nope-nope")]
    code, details = call_error(khub, "BroadcastTenant", broadcast(ACME), metadata=md)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "more than once" in details


def test_bearer_is_case_insensitive_and_hashed_key_works(khub):
    ch = grpc.insecure_channel("%s:%d" % (khub.grpc_host, khub.grpc_port))
    try:
        r = hub_pb2_grpc.HubServiceStub(ch).BroadcastTenant(
            broadcast(ACME), timeout=hubtest.RPC_TIMEOUT,
            metadata=[("authorization", "bearer " + PUB_KEY)])
        assert r.result.subscribers == 0
    finally:
        ch.close()
    assert call(khub, "BroadcastTenant", broadcast(GLOBEX), HASHED_KEY).result.subscribers == 0


def test_publish_key_cannot_call_admin_methods(khub):
    code, details = call_error(khub, "GetStats", hub_pb2.GetStatsRequest(), key=PUB_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == 'API key "jobs" lacks the admin scope this method needs'
    # An admin key may do both.
    assert call(khub, "GetStats", hub_pb2.GetStatsRequest(), ADMIN_KEY).version
    assert call(khub, "BroadcastTenant", broadcast(GLOBEX), ADMIN_KEY).result.offset >= 1


def test_unknown_method_still_unimplemented(khub):
    code, details, _ = khub.raw_call("/livehub.v1.HubService/NoSuchMethod", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED, (code, details)


def test_health_and_reflection_need_no_key(khub):
    ch = grpc.insecure_channel("%s:%d" % (khub.grpc_host, khub.grpc_port))
    try:
        check = ch.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", timeout=hubtest.RPC_TIMEOUT) == b"\x08\x01"  # SERVING
        refl = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        # ServerReflectionRequest{list_services: ""} is field 7, empty string.
        replies = list(refl(iter([b"\x3a\x00"]), timeout=hubtest.RPC_TIMEOUT))
        assert len(replies) == 1 and b"livehub.v1.HubService" in replies[0]
    finally:
        ch.close()


# -- tenants -----------------------------------------------------------------


@aio
async def test_tenant_restricted_key(khub):
    a = await khub.connect(ACME, "alice")
    g = await khub.connect(GLOBEX, "gina")
    r = call(khub, "BroadcastTenant", broadcast(ACME, "acme:note"), ACME_KEY)
    assert r.result.subscribers == 1
    m = await a.next()
    assert m["type"] == "acme:note"

    for method, req in (("BroadcastTenant", broadcast(GLOBEX)),
                        ("PublishJobProgress", job_progress(GLOBEX, "j1"))):
        code, details = call_error(khub, method, req, key=ACME_KEY)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code, details)
        assert details == 'tenant_id: API key "acme-jobs" may not act for tenant "%s"' % GLOBEX
    # Checked before validation: even an invalid request for another tenant
    # learns nothing but PERMISSION_DENIED.
    code, _ = call_error(khub, "PublishJobProgress",
                         hub_pb2.PublishJobProgressRequest(tenant_id=GLOBEX), key=ACME_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # A restricted admin key may not call node-wide methods (GetStats lists
    # other tenants).
    code, details = call_error(khub, "GetStats", hub_pb2.GetStatsRequest(), key=ACME_ADMIN_KEY)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "restricted to tenants" in details and "GetStats" in details
    await g.expect_nothing()
    await a.expect_nothing()


# -- PublishStream -----------------------------------------------------------


def stream_call(hub, key, msgs):
    ch, s = stub(hub, key)
    try:
        return s.PublishStream(iter(msgs), timeout=hubtest.RPC_TIMEOUT)
    finally:
        ch.close()


def stream_msg(seq, tenant, etype="s:note"):
    return hub_pb2.PublishStreamRequest(sequence=seq, broadcast_tenant=broadcast(tenant, etype))


def test_publish_stream_scope_checked_at_start(khub):
    for key, want in ((None, grpc.StatusCode.UNAUTHENTICATED),
                      ("nope-nope-nope-nope", grpc.StatusCode.UNAUTHENTICATED)):
        with pytest.raises(grpc.RpcError) as ei:
            stream_call(khub, key, [stream_msg(1, ACME)])
        assert ei.value.code() == want


@aio
async def test_publish_stream_tenant_checked_per_message(khub):
    a = await khub.connect(ACME, "alice")
    g = await khub.connect(GLOBEX, "gina")
    msgs = [stream_msg(1, ACME), stream_msg(2, GLOBEX), stream_msg(3, ACME), stream_msg(4, GLOBEX)]
    r = stream_call(khub, ACME_KEY, msgs)
    assert (r.accepted, r.rejected) == (2, 2), r
    assert r.first_error.sequence == 2 and r.first_error.index == 1
    assert r.first_error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert r.first_error.message == \
        'broadcast_tenant.tenant_id: API key "acme-jobs" may not act for tenant "%s"' % GLOBEX
    assert [(await a.next())["type"] for _ in range(2)] == ["s:note", "s:note"]
    await g.expect_nothing()
    await a.expect_nothing()
    # An unrestricted publish key streams to both.
    r = stream_call(khub, PUB_KEY, msgs)
    assert (r.accepted, r.rejected) == (4, 0), r


# -- reload, development mode, configuration ---------------------------------


def write_keys(path, entries):
    with open(path, "w") as f:
        json.dump(entries, f)
    os.chmod(path, 0o600)


def wait_log(hub, needle, count=1):
    deadline = time.monotonic() + hubtest.RECV_TIMEOUT
    while hub.stderr_text().count(needle) < count:
        if time.monotonic() > deadline:
            raise AssertionError("no %r in the log\n%s" % (needle, hub.stderr_tail()))
        time.sleep(0.05)


def test_keys_reload_on_sighup(tmp_path):
    old_key, new_key = "old-key-Rt5Yu7Io9Pl1", "new-key-Wx3Ec5Rv7Tb9"
    path = str(tmp_path / "keys.json")
    write_keys(path, [{"name": "svc", "key": old_key, "scopes": ["admin"]}])
    h = Hub.start(tmp_path, api_key=old_key, env={"LIVEHUB_API_KEYS_FILE": path})
    try:
        assert call(h, "GetStats", hub_pb2.GetStatsRequest(), old_key).version
        write_keys(path, [{"name": "svc2", "key_sha256": hashlib.sha256(new_key.encode()).hexdigest(),
                           "scopes": ["publish"]}])
        h.proc.send_signal(signal.SIGHUP)
        wait_log(h, "event=reload ")
        assert "api_keys=1" in h.stderr_text()
        code, _ = call_error(h, "GetStats", hub_pb2.GetStatsRequest(), key=old_key)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, details = call_error(h, "GetStats", hub_pb2.GetStatsRequest(), key=new_key)
        assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED,
                                   'API key "svc2" lacks the admin scope this method needs')
        assert call(h, "BroadcastTenant", broadcast(ACME), new_key).result.offset >= 1

        # A broken key file changes nothing.
        with open(path, "w") as f:
            f.write('[{"name": "x", "key": "short", "scopes": ["admin"]}]')
        h.proc.send_signal(signal.SIGHUP)
        wait_log(h, "event=reload_failed")
        assert call(h, "BroadcastTenant", broadcast(ACME), new_key).result.offset >= 1
    finally:
        h.stop_and_check()
    text = h.stderr_text()
    for k in (old_key, new_key, "short"):
        assert k not in text


def test_development_mode_without_keys(tmp_path):
    h = Hub.start(tmp_path)
    try:
        # Every method, no key.
        assert h.stats().version
        assert h.rpc("BroadcastTenant", broadcast(ACME)).result.offset >= 1
    finally:
        h.stop_and_check()
    text = h.stderr_text()
    assert "event=grpc_auth_disabled" in text and "DEVELOPMENT MODE" in text
    assert "API keys   NONE: development mode" in text


def run_binary(tmp_path, args, env):
    return subprocess.run([hubtest.BIN] + args, cwd=str(tmp_path), env=hubtest.clean_env(env),
                          capture_output=True, text=True, timeout=hubtest.READY_TIMEOUT)


def test_no_keys_refuses_a_public_grpc_address(tmp_path):
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        r = run_binary(tmp_path, ["--grpc-host", host, "--grpc-port", "0", "--ws-port", "0",
                                  "--ws-host", "127.0.0.1"], {})
        assert r.returncode == 2, (host, r.returncode, r.stderr)
        assert "LIVEHUB_GRPC_HOST is %s, but no gRPC API key is configured" % host in r.stderr
        assert r.stdout == ""
    r = run_binary(tmp_path, ["--check-config", "--grpc-host", "0.0.0.0"], {})
    assert r.returncode == 2 and "no gRPC API key" in r.stderr
    r = run_binary(tmp_path, ["--check-config", "--grpc-host", "0.0.0.0"],
                   {"LIVEHUB_API_KEYS": "a:admin=" + ADMIN_KEY})
    assert r.returncode == 0, r.stderr


def test_keys_allow_a_public_grpc_address(tmp_path):
    h = Hub.start(tmp_path, api_key=ADMIN_KEY,
                  args=["--ws-host", "127.0.0.1", "--ws-port", "0", "--grpc-host", "0.0.0.0",
                        "--grpc-port", "0"],
                  env={"LIVEHUB_API_KEYS": "ops:admin=" + ADMIN_KEY})
    try:
        h.grpc_host = "127.0.0.1"
        ch = h.new_channel(ADMIN_KEY)
        assert hub_pb2_grpc.HubServiceStub(ch).GetStats(
            hub_pb2.GetStatsRequest(), timeout=hubtest.RPC_TIMEOUT).version
        ch.close()
    finally:
        h.stop_and_check()


def test_bad_key_configuration_stops_startup(tmp_path):
    cases = [
        ({"LIVEHUB_API_KEYS": "ops:root=" + ADMIN_KEY}, "scopes must be publish and/or admin"),
        ({"LIVEHUB_API_KEYS": "ops:admin=short"}, "the key must be 16-512"),
        ({"LIVEHUB_API_KEYS": "a:admin=%s,b:publish=%s" % (ADMIN_KEY, ADMIN_KEY)},
         "are the same key"),
        ({"LIVEHUB_API_KEYS_FILE": str(tmp_path / "missing.json")}, "missing.json"),
    ]
    for env, want in cases:
        r = run_binary(tmp_path, ["--check-config"], env)
        assert r.returncode == 2, (env, r.stderr)
        assert want in r.stderr, (want, r.stderr)
        assert ADMIN_KEY not in r.stderr


def test_python_client_sends_its_key(khub):
    """clients/python/publish_job.py sends LIVEHUB_API_KEY when set."""
    script = os.path.join(hubtest.ROOT, "clients", "python", "publish_job.py")
    argv = ["/usr/bin/python3", script, "--addr", "%s:%d" % (khub.grpc_host, khub.grpc_port),
            "--tenant", ACME, "--job", "9", "--steps", "2", "--interval", "0"]
    env = hubtest.clean_env()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "UNAUTHENTICATED" in r.stderr, (r.stdout, r.stderr)
    env["LIVEHUB_API_KEY"] = ACME_KEY
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "job:9 completed" in r.stdout


def test_refusals_are_counted_in_stats(tmp_path):
    h = Hub.start(tmp_path, api_key=ADMIN_KEY, env={"LIVEHUB_API_KEYS": compact_keys()})
    try:
        s0 = h.stats()
        assert (s0.grpc_unauthenticated, s0.grpc_permission_denied) == (0, 0)
        call_error(h, "BroadcastTenant", broadcast(ACME))
        call_error(h, "GetStats", hub_pb2.GetStatsRequest(), key="nope-nope-nope-nope")
        call_error(h, "GetStats", hub_pb2.GetStatsRequest(), key=PUB_KEY)
        call_error(h, "BroadcastTenant", broadcast(GLOBEX), key=ACME_KEY)
        call_error(h, "BroadcastTenant", broadcast(GLOBEX), key=ACME_KEY)
        s = h.stats()
        assert (s.grpc_unauthenticated, s.grpc_permission_denied) == (2, 3), s
        assert s.grpc_calls == s0.grpc_calls + 1 + 5
    finally:
        h.stop_and_check()


def test_reload_cannot_open_a_public_listener(tmp_path):
    """Listening on 0.0.0.0 with keys: a reload that removes every key is
    refused, even when the new file also moves gRPC to loopback (the
    address only changes with a restart, so the open port would stay
    public)."""
    keys = str(tmp_path / "keys.json")
    write_keys(keys, [{"name": "ops", "key": ADMIN_KEY, "scopes": ["admin"]}])
    cfg = str(tmp_path / "livehub.json")
    with open(cfg, "w") as f:
        json.dump({"grpc_host": "0.0.0.0", "api_keys_file": keys}, f)
    h = Hub.start(tmp_path, api_key=ADMIN_KEY,
                  args=["--config", cfg, "--ws-host", "127.0.0.1", "--ws-port", "0",
                        "--grpc-port", "0"])
    try:
        h.channel.close()
        h.grpc_host = "127.0.0.1"
        h.channel = h.new_channel(ADMIN_KEY)
        h.stub = hub_pb2_grpc.HubServiceStub(h.channel)
        with open(cfg, "w") as f:
            json.dump({"grpc_host": "127.0.0.1"}, f)
        h.proc.send_signal(signal.SIGHUP)
        wait_log(h, "event=reload_failed")
        assert "LIVEHUB_GRPC_HOST is 0.0.0.0, but no gRPC API key" in h.stderr_text()
        code, _ = call_error(h, "GetStats", hub_pb2.GetStatsRequest())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert h.stats().version
    finally:
        h.stop_and_check()


def test_apikey_command_makes_a_working_key(tmp_path):
    r = run_binary(tmp_path, ["apikey", "--name", "gen", "--scopes", "publish",
                              "--tenants", ACME], {})
    assert r.returncode == 0, r.stderr
    key, env_line, file_line = r.stdout.splitlines()
    assert env_line.startswith("LIVEHUB_API_KEYS entry: gen:publish:%s=sha256:" % ACME)
    entry = json.loads(file_line[len("key file entry: "):])
    assert entry == {"name": "gen", "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                     "scopes": ["publish"], "tenants": [ACME]}
    assert key not in env_line + file_line
    # The environment entry works as printed (the file entry holds the same
    # digest, checked above).
    h = Hub.start(tmp_path, env={"LIVEHUB_API_KEYS": env_line.split(": ", 1)[1]})
    try:
        assert call(h, "BroadcastTenant", broadcast(ACME), key).result.offset >= 1
        code, _ = call_error(h, "BroadcastTenant", broadcast(GLOBEX), key=key)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        h.stop_and_check()
    r = run_binary(tmp_path, ["apikey", "--name", "gen", "--scopes", "root"], {})
    assert r.returncode == 2 and "scopes must be publish and/or admin" in r.stderr
