"""Client tokens against the real binary: every algorithm and key source
(RS/ES/HS keys made with the openssl CLI, tokens minted with PyJWT), every
way to hand the token over (query, Authorization, subprotocol, first `auth`
message), refresh, expiry on an open socket (close 4001), the auth timeout
(4002), refused in-session tokens (4500), and channel rights."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import jwt
import pytest
import websockets
import websockets.exceptions

import hubtest
from hubtest import RECV_TIMEOUT, Hub, WsClient, aio, hub_pb2, uniq

HS512_SECRET = "hs512-" + "k" * 70
GUEST = "room:lobby,room:public-*"
AUTH_TIMEOUT = 2
_minted = []  # every token this module minted, for the log check


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60)


def make_key(d, name, kind):
    """Writes NAME.key (private) and NAME.pem (public) into d."""
    priv, pub = os.path.join(d, name + ".key"), os.path.join(d, name + ".pem")
    if kind == "rsa":
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", priv)
    else:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:" + kind, "-out", priv)
    openssl("pkey", "-in", priv, "-pubout", "-out", pub)
    with open(priv) as f:
        key = f.read()
    return key, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("keys"))
    k = {}
    for name, kind in (("rs", "rsa"), ("rs_other", "rsa"), ("es", "P-256"), ("es3", "P-384")):
        k[name], k[name + "_pub"] = make_key(d, name, kind)
    k["dir"] = d
    return k


def key_args(keys, leeway=0, auth_timeout=AUTH_TIMEOUT, extra=()):
    spec = "rs:RS256:file:%s,rs5:RS512:%s,es:ES256:%s,es3:ES384:%s,h5:HS512:env:LH_T_HS512" % (
        keys["rs_pub"], keys["rs_pub"], keys["es_pub"], keys["es3_pub"])
    return ["--ws-host", "127.0.0.1", "--ws-port", "0", "--grpc-host", "127.0.0.1",
            "--grpc-port", "0", "--jwt-keys", spec, "--jwt-leeway", str(leeway),
            "--auth-timeout", str(auth_timeout), "--guest-channels", GUEST] + list(extra)


def start(tmp_path, keys, **kw):
    secret = "tokens-test-secret-0123456789abcdef"
    args = key_args(keys, **kw) + ["--jwt-secret", secret]
    return Hub.start(tmp_path, args=args, env={"LH_T_HS512": HS512_SECRET}, secret=secret)


@pytest.fixture(scope="module")
def khub(tmp_path_factory, keys):
    h = start(tmp_path_factory.mktemp("khub"), keys)
    try:
        yield h
    finally:
        h.stop_and_check()
        with open(h.stderr_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        for tok in _minted:
            assert tok not in log, "a token was logged"
            sig = tok.split(".")[2]
            assert not sig or sig not in log, "a token signature was logged"


def mint(keys, hub, alg, tenant, user, kid=None, exp_in=3600, key=None, **claims):
    body = {"sub": user, "tenant_id": tenant}
    if exp_in is not None:
        body["exp"] = int(time.time()) + exp_in
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    if key is None:
        key = {"RS256": keys["rs"], "RS512": keys["rs"], "ES256": keys["es"],
               "ES384": keys["es3"], "HS512": HS512_SECRET, "HS256": hub.secret}[alg]
    headers = {"kid": kid} if kid else None
    tok = jwt.encode(body, key, algorithm=alg, headers=headers)
    _minted.append(tok)
    return tok


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_signed(header, claims, secret):
    """An HS* token built by hand (PyJWT refuses a PEM as HMAC secret)."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[header["alg"]]
    sig = hmac.new(secret.encode(), signing.encode(), digest).digest()
    return signing + "." + b64(sig)


async def raw_connect(hub, token=None, subprotocols=None, headers=None):
    """A WsClient that has NOT read anything yet."""
    ws = await websockets.connect(hub.ws_url(token), subprotocols=subprotocols,
                                  extra_headers=headers or {}, compression=None,
                                  ping_interval=None, max_size=None,
                                  open_timeout=RECV_TIMEOUT, close_timeout=5)
    c = WsClient(ws)
    hubtest._open_clients.append(c)
    return c


async def connect_via(hub, source, tok):
    """Connects handing tok over the given way; returns the client after
    its `connected` frame (in .connected)."""
    if source == "query":
        c = await raw_connect(hub, token=tok)
    elif source == "header":
        c = await raw_connect(hub, headers={"Authorization": "Bearer " + tok})
    elif source == "subprotocol":
        c = await raw_connect(hub, subprotocols=["livehub.v1", "bearer." + tok])
        assert c.ws.subprotocol == "livehub.v1"
    else:
        c = await raw_connect(hub)
        await c.send({"type": "auth", "token": tok, "id": "auth-1"})
    c.connected = await c.next()
    assert c.connected["type"] == "connected", c.connected
    if source == "message":
        assert c.connected["id"] == "auth-1"
    else:
        assert "id" not in c.connected
    return c


# -- algorithms and sources ------------------------------------------------

@pytest.mark.parametrize("source", ["query", "header", "subprotocol", "message"])
@aio
async def test_every_algorithm_through_every_source(khub, keys, source):
    for alg, kid in (("RS256", "rs"), ("RS512", "rs5"), ("ES256", "es"), ("ES384", "es3"),
                     ("HS512", "h5"), ("HS256", None), ("ES256", None), ("RS256", None)):
        t = uniq()
        c = await connect_via(khub, source, mint(keys, khub, alg, t, "alice", kid=kid))
        assert (c.connected["tenant"], c.connected["user"]) == (t, "alice"), (alg, kid)
        assert await c.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        await c.close()


@aio
async def test_wrong_keys_and_algorithm_confusion_are_refused(khub, keys):
    t = uniq()
    now = int(time.time())
    claims = {"sub": "mallory", "tenant_id": t, "exp": now + 3600}
    with open(keys["rs_pub"]) as f:
        rs_pub_text = f.read()
    bad = [
        # Signed with a key livehub does not have.
        mint(keys, khub, "RS256", t, "mallory", kid="rs", key=keys["rs_other"]),
        mint(keys, khub, "RS256", t, "mallory", key=keys["rs_other"]),
        # The ES256 key's signature claimed for the RSA kid.
        mint(keys, khub, "ES256", t, "mallory", kid="rs"),
        # RS384 was never configured (the RSA key is pinned to RS256 and RS512).
        mint(keys, khub, "RS384", t, "mallory", kid="rs", key=keys["rs"]),
        mint(keys, khub, "RS384", t, "mallory", key=keys["rs"]),
        # HS/RS confusion: HS256 with the RSA public key as the HMAC secret.
        hand_signed({"alg": "HS256", "typ": "JWT"}, claims, rs_pub_text),
        hand_signed({"alg": "HS256", "kid": "rs"}, claims, rs_pub_text),
        # Unknown kid, alg none.
        mint(keys, khub, "RS256", t, "mallory", kid="nope"),
        b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims).encode()) + ".",
        # HS384 under the HS512 key's kid and secret.
        mint(keys, khub, "HS384", t, "mallory", kid="h5", key=HS512_SECRET),
    ]
    _minted.extend(bad)
    for i, tok in enumerate(bad):
        assert await khub.handshake_status(tok) == 401, i
        # Also refused through the subprotocol and as a first message.
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await raw_connect(khub, subprotocols=["livehub.v1", "bearer." + tok])
        assert e.value.status_code == 401
        c = await raw_connect(khub)
        await c.send({"type": "auth", "token": tok})
        code, got = await c.expect_close()
        assert (code, got) == (4500, []), i


@aio
async def test_subprotocol_must_include_livehub_v1(khub, keys):
    tok = mint(keys, khub, "ES256", uniq(), "alice")
    for offered in (["bearer." + tok], ["other"], ["other", "bearer." + tok]):
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await raw_connect(khub, subprotocols=offered)
        assert e.value.status_code == 400, offered
    # Offered alone (token elsewhere), it is selected too.
    c = await raw_connect(khub, token=tok, subprotocols=["livehub.v1"])
    assert c.ws.subprotocol == "livehub.v1"
    assert (await c.next())["type"] == "connected"


# -- first-message auth ------------------------------------------------------

@aio
async def test_auth_message_opens_the_session_only_then(tmp_path, keys):
    h = start(tmp_path, keys)
    try:
        t = uniq()
        c = await raw_connect(h)
        # Unauthenticated: not a hub connection yet, counted apart.
        await h.wait_stats(lambda s: s.awaiting_auth == 1)
        assert h.stats().connections == 0
        tok = mint(keys, h, "RS256", t, "alice")
        # Sent in three WebSocket fragments (larger than the 128-byte rx buffer).
        text = json.dumps({"type": "auth", "token": tok, "id": 7})
        await c.ws.send([text[:50], text[50:200], text[200:]])
        conn = await c.next()
        assert conn["type"] == "connected" and conn["id"] == 7
        assert (conn["tenant"], conn["user"]) == (t, "alice")
        await h.wait_stats(lambda s: s.connections == 1 and s.awaiting_auth == 0)
        await c.subscribe("job:1")
        h.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="job:1", type="x"))
        assert (await c.next())["type"] == "x"
        # A second auth is a plain error; the connection stays.
        again = await c.request({"type": "auth", "token": tok, "id": 8})
        assert again["code"] == "BAD_REQUEST" and again["recoverable"] is True
        assert again["id"] == 8
        await c.expect_nothing()
    finally:
        await hubtest.close_all_clients()
        h.stop_and_check()


@aio
async def test_no_auth_message_in_time_closes_4002(khub):
    c = await raw_connect(khub)
    code, got = await c.expect_close(timeout=AUTH_TIMEOUT + RECV_TIMEOUT)
    assert (code, got) == (4002, [])


@pytest.mark.parametrize("first", [
    {"type": "ping", "id": 1},
    {"type": "subscribe", "channel": "job:1"},
    {"type": "auth"},
    {"type": "auth", "token": 5},
    "not json",
    # Over the JSON shape limits (depth), like any other message.
    '{"type":"auth","token":"a.b.c","x":' + "[" * 200 + "]" * 200 + "}",
])
@aio
async def test_first_message_other_than_auth_closes_4002(khub, first):
    c = await raw_connect(khub)
    await c.send(first)
    code, got = await c.expect_close()
    assert (code, got) == (4002, [])


@aio
async def test_auth_message_with_refused_tokens(khub, keys):
    t = uniq()
    c = await raw_connect(khub)
    await c.send({"type": "auth", "token": mint(keys, khub, "ES256", t, "a", exp_in=-5)})
    assert await c.expect_close() == (4001, [])
    c = await raw_connect(khub)
    await c.send({"type": "auth", "token": mint(keys, khub, "ES256", t, "a", sub=None)})
    code, _ = await c.expect_close()
    assert code == 4500
    assert c.ws.close_reason.startswith("user claim")


@aio
async def test_auth_timeout_zero_refuses_missing_tokens(tmp_path, keys):
    h = start(tmp_path, keys, auth_timeout=0)
    try:
        assert await h.handshake_status() == 401
        assert await h.handshake_status(mint(keys, h, "ES256", uniq(), "a")) == 101
    finally:
        h.stop_and_check()


@aio
async def test_malformed_authorization_is_not_a_missing_token(khub):
    for value in ("Basic abc", "Bearer", "token"):
        assert await khub.handshake_status(headers={"Authorization": value}) == 401, value


# -- refresh and expiry --------------------------------------------------------

@aio
async def test_token_expiry_closes_4001(khub, keys):
    t = uniq()
    c = await connect_via(khub, "query", mint(keys, khub, "ES256", t, "alice", exp_in=2))
    await c.subscribe("job:9")
    code, got = await c.expect_close(timeout=RECV_TIMEOUT + 3)
    assert code == 4001
    assert got == [{"type": "error", "code": "TOKEN_EXPIRED",
                    "message": "the token expired: refresh it, or reconnect with a new one",
                    "recoverable": False}]


@aio
async def test_refresh_moves_the_expiry(khub, keys):
    t = uniq()
    tok = mint(keys, khub, "RS256", t, "alice", exp_in=2)
    c = await connect_via(khub, "subprotocol", tok)
    new_exp = int(time.time()) + 3600
    fresh = mint(keys, khub, "HS512", t, "alice", exp_in=None, exp=new_exp)
    assert await c.request({"type": "refresh", "token": fresh, "id": "r1"}) == {
        "type": "refreshed", "exp": new_exp, "id": "r1"}
    # Past the first token's expiry the connection is still there.
    await asyncio.sleep(3.5)
    await c.expect_nothing()
    # A token without exp: refreshed with exp 0, never expires.
    none = mint(keys, khub, "ES256", t, "alice", exp_in=None)
    assert await c.request({"type": "refresh", "token": none}) == {"type": "refreshed", "exp": 0}


@pytest.mark.parametrize("case", ["other_user", "other_tenant", "bad_signature", "expired",
                                  "no_token"])
@aio
async def test_refused_refresh_ends_the_connection(khub, keys, case):
    t = uniq()
    c = await connect_via(khub, "header", mint(keys, khub, "ES256", t, "alice"))
    tok = {
        "other_user": lambda: mint(keys, khub, "ES256", t, "bob"),
        "other_tenant": lambda: mint(keys, khub, "ES256", uniq(), "alice"),
        "bad_signature": lambda: mint(keys, khub, "RS256", t, "alice", key=keys["rs_other"]),
        "expired": lambda: mint(keys, khub, "ES256", t, "alice", exp_in=-10),
        "no_token": lambda: None,
    }[case]()
    msg = {"type": "refresh", "id": 5}
    if tok:
        msg["token"] = tok
    await c.send(msg)
    if case == "no_token":
        # A malformed request is a recoverable BAD_REQUEST like any other.
        reply = await c.next()
        assert reply["code"] == "BAD_REQUEST" and reply["recoverable"] is True
        await c.expect_nothing()
        return
    code, got = await c.expect_close()
    want = "TOKEN_EXPIRED" if case == "expired" else "AUTH_FAILED"
    assert code == (4001 if case == "expired" else 4500)
    assert len(got) == 1 and got[0]["type"] == "error", got
    assert (got[0]["code"], got[0]["recoverable"], got[0]["id"]) == (want, False, 5)


# -- channel rights --------------------------------------------------------------

@aio
async def test_channels_claim_restricts_subscriptions(khub, keys):
    t = uniq()
    tok = mint(keys, khub, "ES256", t, "alice", channels=["job:*", "project:p1"])
    c = await connect_via(khub, "query", tok)
    await c.subscribe("job:42")
    await c.subscribe("project:p1")
    assert (await c.request({"type": "subscribe", "projectId": "p1", "id": 1}))["type"] == "subscribed"
    for ch in ("project:p2", "order:1", "jobs:1"):
        reply = await c.request({"type": "subscribe", "channel": ch, "id": ch})
        assert reply == {"type": "error", "code": "CHANNEL_ACCESS_DENIED",
                         "message": "the token does not allow this channel",
                         "recoverable": True, "id": ch}
    # The implicit channels are the connection's own whatever its rights
    # (recovery on them is a subscribe with since).
    rec = await c.request({"type": "subscribe", "channel": "$tenant",
                           "since": {"offset": 0, "epoch": "x"}, "id": "t"})
    assert rec["type"] == "subscribed" and rec["id"] == "t", rec
    # Denied channels get nothing; implicit channels still work.
    khub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="order:1", type="o"))
    khub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="job:42", type="j"))
    assert (await c.next())["type"] == "j"
    khub.rpc("SendToUser", hub_pb2.SendToUserRequest(tenant_id=t, user_id="alice", type="dm"))
    assert (await c.next())["type"] == "dm"
    await c.expect_nothing()


@aio
async def test_guest_role_gets_the_configured_channels(khub, keys):
    t = uniq()
    c = await connect_via(khub, "message", mint(keys, khub, "RS256", t, "guest-1", role="guest"))
    await c.subscribe("room:lobby")
    await c.subscribe("room:public-7")
    reply = await c.request({"type": "subscribe", "channel": "room:staff", "id": 1})
    assert reply["code"] == "CHANNEL_ACCESS_DENIED"
    # Another role is unrestricted.
    s = await connect_via(khub, "query", mint(keys, khub, "RS256", t, "sup", role="supervisor"))
    await s.subscribe("room:staff")


@aio
async def test_malformed_rights_claims_refuse_the_token(khub, keys):
    t = uniq()
    for claims in ({"channels": "job:*"}, {"channels": ["$tenant"]}, {"publish": "yes"},
                   {"role": 1}):
        assert await khub.handshake_status(mint(keys, khub, "ES256", t, "a", **claims)) == 401


# -- issuer, audience, reload ----------------------------------------------------

@aio
async def test_issuer_and_audience(tmp_path, keys):
    h = start(tmp_path, keys, extra=["--jwt-issuer", "https://id.example.com",
                                     "--jwt-audience", "livehub"])
    try:
        t = uniq()
        good = {"iss": "https://id.example.com", "aud": ["web", "livehub"]}
        assert await h.handshake_status(mint(keys, h, "ES256", t, "a", **good)) == 101
        for claims in ({"aud": "livehub"},
                       {"iss": "https://id.example.com"},
                       {"iss": "https://evil.example.com", "aud": "livehub"},
                       {"iss": "https://id.example.com", "aud": ["web"]}):
            assert await h.handshake_status(mint(keys, h, "ES256", t, "a", **claims)) == 401
    finally:
        h.stop_and_check()


@aio
async def test_sighup_rotates_a_key_file(tmp_path, keys):
    """The key file is read again on SIGHUP: tokens of the old key are
    refused from then on, the new key's accepted, open connections stay."""
    d = str(tmp_path)
    old_priv, pub = make_key(d, "rot", "P-256")
    new_priv, new_pub = make_key(d, "rot_new", "P-256")
    args = ["--ws-host", "127.0.0.1", "--ws-port", "0", "--grpc-host", "127.0.0.1",
            "--grpc-port", "0", "--jwt-keys", "r:ES256:" + pub]
    h = Hub.start(tmp_path, args=args, secret="unused-" + "x" * 40)
    try:
        t = uniq()
        old_tok = mint(keys, h, "ES256", t, "a", key=old_priv)
        new_tok = mint(keys, h, "ES256", t, "a", key=new_priv)
        c = await connect_via(h, "query", old_tok)
        assert await h.handshake_status(new_tok) == 401
        os.replace(new_pub, pub)
        h.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RECV_TIMEOUT
        while await h.handshake_status(new_tok) != 101:
            assert time.monotonic() < deadline, "the new key never took effect"
            await asyncio.sleep(0.05)
        assert await h.handshake_status(old_tok) == 401
        assert await c.request({"type": "ping"}) == {"type": "pong"}
        # A key file that cannot be used fails the whole reload: the keys
        # in use stay.
        with open(pub, "w") as f:
            f.write("not a key\n")
        h.proc.send_signal(signal.SIGHUP)
        from test_config import wait_log
        wait_log(h, "event=reload_failed")
        assert await h.handshake_status(new_tok) == 101
    finally:
        await hubtest.close_all_clients()
        h.stop_and_check()


def test_check_config_reports_bad_keys(tmp_path):
    from test_config import run
    cases = [
        ("k:RS256:/nonexistent.pem", "cannot read /nonexistent.pem"),
        ("k:XS256:env:X", "not one of"),
        ("k:HS512:env:LH_T_SHORT", "at least 64 bytes"),
        ("nokid", "kid:ALG:SOURCE"),
    ]
    for spec, want in cases:
        r = run(["--check-config", "--jwt-keys", spec], env={"LH_T_SHORT": "x" * 40})
        assert r.returncode == 2, spec
        assert want in r.stderr, (spec, r.stderr)
        assert "x" * 40 not in r.stderr
    r = run(["--check-config", "--guest-channels", "room:*,bad name"])
    assert r.returncode == 2 and "not a channel pattern" in r.stderr


@pytest.mark.parametrize("loop", ["poll", "libuv"])
@aio
async def test_auth_closes_under_both_event_loops(tmp_path, keys, loop):
    """Under libuv livehub writes close frames itself, under poll lws does
    (ws.c close_now): 4002, 4500, 4001 and the expiry close must come out
    the same."""
    h = start(tmp_path, keys, extra=["--event-loop", loop])
    try:
        t = uniq()
        c = await raw_connect(h)
        assert await c.expect_close(timeout=AUTH_TIMEOUT + RECV_TIMEOUT) == (4002, [])
        c = await raw_connect(h)
        await c.send({"type": "ping"})
        assert await c.expect_close() == (4002, [])
        c = await raw_connect(h)
        await c.send({"type": "auth", "token": mint(keys, h, "ES256", t, "a", key=keys["es3"])})
        assert (await c.expect_close())[0] == 4500
        c = await connect_via(h, "message", mint(keys, h, "ES256", t, "a", exp_in=1))
        code, got = await c.expect_close(timeout=RECV_TIMEOUT + 2)
        assert code == 4001 and got[0]["code"] == "TOKEN_EXPIRED"
        c = await connect_via(h, "query", mint(keys, h, "ES256", t, "a"))
        await c.send({"type": "refresh", "token": mint(keys, h, "ES256", t, "b"), "id": 1})
        code, got = await c.expect_close()
        assert code == 4500 and got[0]["code"] == "AUTH_FAILED"
    finally:
        await hubtest.close_all_clients()
        h.stop_and_check()


@aio
async def test_token_counters_in_stats_and_metrics(tmp_path, keys):
    from opstest import metrics
    h = start(tmp_path, keys)
    try:
        t = uniq()
        c = await connect_via(h, "query", mint(keys, h, "ES256", t, "a", exp_in=2,
                                               channels=["job:*"]))
        assert (await c.request({"type": "subscribe", "channel": "x:1"}))["code"] == \
            "CHANNEL_ACCESS_DENIED"
        fresh = mint(keys, h, "ES256", t, "a", exp_in=2)
        assert (await c.request({"type": "refresh", "token": fresh}))["type"] == "refreshed"
        assert (await c.expect_close(timeout=RECV_TIMEOUT + 3))[0] == 4001
        lone = await raw_connect(h)
        assert (await lone.expect_close(timeout=AUTH_TIMEOUT + RECV_TIMEOUT))[0] == 4002
        s = await h.wait_stats(lambda s: s.connections == 0 and s.awaiting_auth == 0)
        assert (s.token_refreshes, s.token_expirations, s.channel_access_denied) == (1, 1, 1)
        m, _ = metrics(h)
        assert m[("livehub_token_refreshes_total", "")] == 1
        assert m[("livehub_token_expirations_total", "")] == 1
        assert m[("livehub_channel_access_denied_total", "")] == 1
        assert m[("livehub_connections_awaiting_auth", "")] == 0
        assert m[("livehub_auth_failures_total", '{reason="auth_timeout"}')] == 1
        assert m[("livehub_auth_failures_total", '{reason="expired"}')] == 1
    finally:
        await hubtest.close_all_clients()
        h.stop_and_check()


@aio
async def test_shutdown_closes_sockets_waiting_for_auth(tmp_path, keys):
    h = start(tmp_path, keys, auth_timeout=60)
    c = await raw_connect(h)
    await h.wait_stats(lambda s: s.awaiting_auth == 1)
    status = h.terminate()  # blocks this loop; the close frame waits in the socket
    assert status == 0, h.stderr_tail()
    assert await c.expect_close() == (1001, [])



# -- a real browser --------------------------------------------------------------

async def browser_eval(expr, timeout=RECV_TIMEOUT):
    """Evaluates the promise expr in headless Chromium (over the DevTools
    protocol) and returns its value."""
    d = tempfile.mkdtemp(prefix="lh-chromium-")
    p = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          "--remote-debugging-port=0", "--user-data-dir=" + d, "about:blank"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=hubtest._die_with_parent)
    try:
        path = os.path.join(d, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while True:
            lines = open(path).read().split("\n") if os.path.exists(path) else []
            if len(lines) >= 2 and lines[0]:
                break
            assert time.monotonic() < deadline, "chromium did not start"
            await asyncio.sleep(0.05)
        url = "http://127.0.0.1:%d/json/list" % int(lines[0])
        while True:
            pages = [t for t in json.load(urllib.request.urlopen(url, timeout=timeout))
                     if t["type"] == "page"]
            if pages:
                break
            assert time.monotonic() < deadline, "chromium has no page"
            await asyncio.sleep(0.05)
        async with websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as cdp:
            await cdp.send(json.dumps({"id": 1, "method": "Runtime.evaluate", "params": {
                "expression": expr, "awaitPromise": True, "returnByValue": True}}))
            while True:
                m = json.loads(await asyncio.wait_for(cdp.recv(), timeout))
                if m.get("id") == 1:
                    return m["result"]["result"]["value"]
    finally:
        p.terminate()
        p.wait(30)
        shutil.rmtree(d, ignore_errors=True)


BROWSER_CONNECT = """new Promise(res => {
  const ws = new WebSocket(%s, %s);
  const got = [];
  ws.onopen = () => { if (%s) ws.send(JSON.stringify({type: "auth", token: %s, id: 1})); };
  ws.onmessage = e => { got.push(JSON.parse(e.data)); ws.close(1000); };
  ws.onclose = e => res({protocol: ws.protocol, got: got, code: e.code});
})"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
@aio
async def test_a_browser_hands_over_its_token_without_the_url(khub, keys):
    """Browsers fail a handshake whose answer does not name an offered
    subprotocol, and cannot set headers: check both browser ways in
    Chromium itself."""
    t = uniq()
    tok = mint(keys, khub, "ES256", t, "alice")
    url = json.dumps(khub.ws_url())
    sub = await browser_eval(BROWSER_CONNECT % (
        url, json.dumps(["livehub.v1", "bearer." + tok]), "false", '""'))
    assert sub["protocol"] == "livehub.v1"
    assert [(m["type"], m["tenant"], m["user"]) for m in sub["got"]] == [("connected", t, "alice")]
    msg = await browser_eval(BROWSER_CONNECT % (url, "[]", "true", json.dumps(tok)))
    assert [(m["type"], m["id"], m["tenant"]) for m in msg["got"]] == [("connected", 1, t)]
    # Offering only the bearer entry cannot work: the browser sees a failure.
    bad = await browser_eval(BROWSER_CONNECT % (url, json.dumps(["bearer." + tok]), "false", '""'))
    assert bad["got"] == [] and bad["code"] == 1006


@aio
async def test_publish_claim_restricts_client_events(tmp_path, keys):
    h = start(tmp_path, keys, extra=["--client-events", "board:*"])
    try:
        t = uniq()
        ev = {"type": "publish", "channel": "board:1", "event": "typing", "data": {}, "id": 2}
        for claims, want in (({"publish": False}, "PERMISSION_DENIED"),
                             ({"publish": ["board:2"]}, "PERMISSION_DENIED"),
                             ({"role": "guest", "channels": ["board:*"]}, "PERMISSION_DENIED"),
                             ({"publish": ["board:*"]}, "published"),
                             ({}, "published")):
            c = await connect_via(h, "query", mint(keys, h, "ES256", t, "a", **claims))
            if claims.get("role") == "guest":
                # Guests may subscribe only to the configured guest patterns.
                assert (await c.request({"type": "subscribe", "channel": "board:1"}))["code"] \
                    == "CHANNEL_ACCESS_DENIED"
            else:
                await c.subscribe("board:1")
            reply = await c.request(ev)
            got = reply.get("code") or reply["type"]
            assert got == want, (claims, reply)
            await c.close()
    finally:
        await hubtest.close_all_clients()
        h.stop_and_check()
