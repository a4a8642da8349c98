"""The handshake: JWT checks before the upgrade, /healthz, other paths."""

import base64
import http.client
import json
import time

import pytest
import websockets

from hubtest import aio, uniq


def b64(obj):
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def http_get(hub, path, headers=None):
    conn = http.client.HTTPConnection(hub.ws_host, hub.ws_port, timeout=15)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@aio
async def test_no_token_is_401(hub):
    assert await hub.handshake_status() == 401
    assert await hub.handshake_status(token="") == 401


@aio
async def test_valid_token_in_query_is_accepted(hub):
    assert await hub.handshake_status(hub.token(uniq(), "alice")) == 101


@aio
async def test_token_in_authorization_header(hub):
    t = uniq()
    tok = hub.token(t, "alice")
    assert await hub.handshake_status(headers={"Authorization": "Bearer " + tok}) == 101
    c = await hub.connect(t, "alice", header=True)
    assert (c.connected["tenant"], c.connected["user"]) == (t, "alice")
    assert await c.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    # A bad token in the header is refused like one in the query.
    bad = hub.token(t, "alice", secret="not-the-secret")
    assert await hub.handshake_status(headers={"Authorization": "Bearer " + bad}) == 401


@aio
async def test_bad_signature_is_401(hub):
    tok = hub.token(uniq(), "alice")
    head, body, sig = tok.split(".")
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    assert await hub.handshake_status(".".join([head, body, flipped])) == 401
    # A body changed under the original signature (tenant swap).
    forged = b64({"sub": "alice", "tenant_id": "victim", "exp": int(time.time()) + 3600})
    assert await hub.handshake_status(".".join([head, forged, sig])) == 401
    assert await hub.handshake_status(head + "." + body) == 401  # no signature part
    assert await hub.handshake_status("garbage") == 401


@aio
async def test_wrong_secret_is_401(hub):
    assert await hub.handshake_status(hub.token(uniq(), "alice", secret=hub.secret + "x")) == 401


@aio
async def test_alg_none_is_401(hub):
    t = uniq()
    body = b64({"sub": "alice", "tenant_id": t, "exp": int(time.time()) + 3600})
    for alg in ("none", "None", "NONE"):
        tok = b64({"alg": alg, "typ": "JWT"}) + "." + body + "."
        assert await hub.handshake_status(tok) == 401, alg


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
@aio
async def test_other_hmac_algorithm_is_401(hub, alg):
    """Tokens are HS256; a token signed with the secret under another
    algorithm must not be accepted (the algorithm is pinned)."""
    assert await hub.handshake_status(hub.token(uniq(), "alice", algorithm=alg)) == 401


@aio
async def test_expired_token_is_401(hub):
    t = uniq()
    now = int(time.time())
    assert await hub.handshake_status(hub.token(t, "alice", exp_in=None, exp=now - 120)) == 401
    assert await hub.handshake_status(hub.token(t, "alice", exp_in=None, exp=now - 3600)) == 401


@aio
async def test_exp_and_nbf_have_30s_leeway(hub):
    t = uniq()
    now = int(time.time())
    assert await hub.handshake_status(hub.token(t, "alice", exp_in=None, exp=now - 10)) == 101
    assert await hub.handshake_status(hub.token(t, "alice", nbf=now + 10)) == 101
    assert await hub.handshake_status(hub.token(t, "alice", nbf=now + 600)) == 401
    assert await hub.handshake_status(hub.token(t, "alice", exp_in=None)) == 101  # no exp at all


@pytest.mark.parametrize("claims", [
    {"tenant_id": None},
    {"sub": None},
    {"tenant_id": ""},
    {"sub": ""},
    {"tenant_id": 42},
    {"sub": ["alice"]},
    {"tenant_id": "a b"},
    {"tenant_id": "acme\x1fjob"},
    {"tenant_id": "x" * 65},
    {"sub": "al ice"},
    {"sub": "u" * 129},
    {"exp": "tomorrow"},
])
@aio
async def test_missing_or_invalid_claims_are_401(hub, claims):
    args = {"tenant_id": uniq(), "sub": "alice"}
    args.update(claims)
    tenant, user = args.pop("tenant_id"), args.pop("sub")
    tok = hub.token(tenant, user, **args)
    assert await hub.handshake_status(tok) == 401


@aio
async def test_longest_valid_names_are_accepted(hub):
    tenant = "T" + uniq("x").replace("-", "_") + "z" * 64
    tenant = tenant[:64]
    user = ("u_.:@+-" * 20)[:128]
    c = await hub.connect(tenant, user)
    assert (c.connected["tenant"], c.connected["user"]) == (tenant, user)


def test_healthz_is_200(hub):
    status, _ = http_get(hub, "/healthz")
    assert status == 200


# "/" is the demo page (test_clients.py; 404 with --demo 0).
@pytest.mark.parametrize("path", ["/nope", "/ws/x", "/healthzz", "/wss", "/livehub.js/x", "/index.htm"])
def test_other_paths_are_404(hub, path):
    status, _ = http_get(hub, path)
    assert status == 404, (path, status)


@aio
async def test_upgrade_on_other_path_is_refused(hub):
    status = await hub.handshake_status(hub.token(uniq(), "alice"), path="/other")
    assert status == 404


@aio
async def test_malformed_authorization_headers_are_401(hub):
    tok = hub.token(uniq(), "alice")
    for value in ("Basic " + tok, "Bearer", "Bearer ", tok, "Bearer  x." + tok):
        assert await hub.handshake_status(headers={"Authorization": value}) == 401, value


@aio
async def test_token_among_other_query_parameters(hub):
    t = uniq()
    tok = hub.token(t, "alice")
    url = "ws://%s:%d/ws?v=1&token=%s&x=y" % (hub.ws_host, hub.ws_port, tok)
    ws = await websockets.connect(url, compression=None, ping_interval=None, open_timeout=15)
    try:
        m = json.loads((await ws.recv()).split("\n")[0])
        assert (m["type"], m["tenant"], m["user"]) == ("connected", t, "alice")
    finally:
        await ws.close()
