"""The `connected` frame, the `token` subcommand, configuration by
environment."""

import subprocess
import time

import jwt

from hubtest import BIN, Hub, WsClient, aio, clean_env, hub_pb2, uniq


@aio
async def test_connected_frame(hub):
    t = uniq()
    c = await hub.connect(t, "alice@example.com")
    m = c.connected
    assert set(m) == {"type", "clientId", "version", "server", "tenant", "user", "heartbeat"}, m
    assert m["type"] == "connected"
    assert isinstance(m["clientId"], str) and m["clientId"], m
    assert m["version"] == 1 and type(m["version"]) is int
    assert m["server"] == "livehub/0.1.0"
    assert (m["tenant"], m["user"]) == (t, "alice@example.com")
    assert m["heartbeat"] == {"pingInterval": 30, "pingTimeout": 90}
    await c.expect_nothing()  # nothing else is sent unasked


@aio
async def test_client_ids_are_unique(hub):
    t = uniq()
    clients = [await hub.connect(t, "alice") for _ in range(5)]
    clients.append(await hub.connect(uniq(), "alice"))
    ids = [c.connected["clientId"] for c in clients]
    assert len(set(ids)) == len(ids), ids


def run_token(*args):
    res = subprocess.run([BIN, "token"] + list(args), capture_output=True, text=True,
                         env=clean_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().split("\n")
    assert len(lines) == 1, res.stdout
    return lines[0]


@aio
async def test_token_subcommand(hub):
    t = uniq()
    tok = run_token("--tenant", t, "--user", "bob", "--ttl", "120", "--jwt-secret", hub.secret)
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"
    claims = jwt.decode(tok, hub.secret, algorithms=["HS256"])
    assert (claims["sub"], claims["tenant_id"]) == ("bob", t)
    assert abs(claims["exp"] - (time.time() + 120)) < 60, claims
    c = await WsClient.connect(hub, tok)
    assert (c.connected["tenant"], c.connected["user"]) == (t, "bob")


def test_token_subcommand_rejects_bad_names():
    res = subprocess.run([BIN, "token", "--tenant", "a b", "--user", "bob", "--jwt-secret", "s"],
                         capture_output=True, text=True, env=clean_env(), timeout=60)
    assert res.returncode != 0
    assert res.stdout == ""


@aio
async def test_configuration_from_environment(tmp_path):
    secret = "env-secret-" + uniq() + "-0123456789abcdef"
    h = Hub.start(tmp_path, args=[], secret=secret,
                  env={"LIVEHUB_WS_HOST": "127.0.0.1", "LIVEHUB_WS_PORT": "0",
                       "LIVEHUB_GRPC_HOST": "127.0.0.1", "LIVEHUB_GRPC_PORT": "0",
                       "LIVEHUB_JWT_SECRET": secret})
    try:
        t = uniq()
        c = await h.connect(t, "alice")
        assert c.connected["tenant"] == t
        assert await h.handshake_status(h.token(t, "alice", secret="other")) == 401
        r = h.rpc("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id=t, type="hi")).result
        assert r.subscribers == 1
        await c.close()
    finally:
        h.stop_and_check()
