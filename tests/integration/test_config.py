"""Configuration (file < environment < flags, --check-config, --help,
--version), SIGHUP reload, and the structured logs (never a secret or a
token in them)."""

import json
import os
import signal
import subprocess
import time

from hubtest import BIN, RECV_TIMEOUT, ROOT, Hub, aio, clean_env, hub_pb2, uniq

SECRET_A = "config-test-secret-A-0123456789abcdef"
SECRET_B = "config-test-secret-B-fedcba9876543210"


def run(args, env=None, cwd=None):
    return subprocess.run([BIN] + args, capture_output=True, text=True, env=clean_env(env),
                          cwd=cwd, timeout=30)


def write(path, obj):
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_check_config_accepts_a_good_file(tmp_path):
    cfg = write(tmp_path / "c.json", {"ws_port": 9001, "log_format": "json",
                                      "jwt_secret": SECRET_A, "max_subscriptions": 5})
    r = run(["--config", cfg, "--check-config"])
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert SECRET_A not in r.stdout + r.stderr


def test_check_config_names_the_bad_setting(tmp_path):
    cases = [
        ({"ws_port": 70000}, '"ws_port": "70000" is not a whole number from 0 to 65535'),
        ({"ws_port": "80"}, '"ws_port": must be a whole number from 0 to 65535'),
        ({"log_level": 3}, '"log_level": must be a string'),
        ({"wsport": 1}, '"wsport": not a setting'),
        ({"log_format": "xml"}, 'log format "xml" is not one of logfmt, json'),
        ({"ping_interval": 60, "ping_timeout": 30}, "must be greater than"),
        ("[1, 2]", "must be a JSON object"),
        ("{\"ws_port\": ", "c.json"),
        ('{"ws_port": 1, "ws_port": 2}', "duplicate"),
    ]
    for obj, want in cases:
        cfg = write(tmp_path / "c.json", obj)
        r = run(["--check-config", "--config", cfg])
        assert r.returncode == 2, (obj, r.stdout, r.stderr)
        assert want in r.stderr, (obj, r.stderr)
    r = run(["--check-config", "--config", str(tmp_path / "missing.json")])
    assert r.returncode == 2 and "missing.json" in r.stderr


def test_precedence_file_env_flags(tmp_path):
    """The file is overridden by the environment, which flags override;
    shown through a setting --check-config validates (the ping pair)."""
    cfg = write(tmp_path / "c.json", {"ping_interval": 50, "ping_timeout": 40})
    assert run(["--check-config", "--config", cfg]).returncode == 2
    r = run(["--check-config"], env={"LIVEHUB_CONFIG": cfg, "LIVEHUB_PING_TIMEOUT": "60"})
    assert r.returncode == 0, r.stderr
    r = run(["--check-config", "--ping-timeout", "45"],
            env={"LIVEHUB_CONFIG": cfg, "LIVEHUB_PING_TIMEOUT": "60"})
    assert r.returncode == 2 and "LIVEHUB_PING_TIMEOUT (45)" in r.stderr


def test_file_settings_reach_the_running_hub(tmp_path):
    cfg = write(tmp_path / "c.json", {"ws_host": "127.0.0.1", "ws_port": 0,
                                      "grpc_host": "127.0.0.1", "grpc_port": 0,
                                      "jwt_secret": SECRET_A})
    h = Hub.start(tmp_path, args=["--config", cfg], secret=SECRET_A)
    try:
        assert h.stats().version == "0.1.0"
    finally:
        h.stop_and_check()


def test_help_and_version():
    r = run(["--help"])
    assert r.returncode == 0
    for word in ("--config", "LIVEHUB_CONFIG", "--log-format", "--check-config", "SIGHUP"):
        assert word in r.stdout, word
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout.strip() == "livehub 0.1.0"


def start_with_file(tmp_path, obj, fmt="json"):
    base = {"ws_host": "127.0.0.1", "ws_port": 0, "grpc_host": "127.0.0.1", "grpc_port": 0,
            "log_format": fmt}
    base.update(obj)
    cfg = write(tmp_path / "live.json", base)
    return cfg, base, Hub.start(tmp_path, args=["--config", cfg],
                                secret=obj.get("jwt_secret", SECRET_A))


def wait_log(hub, text, timeout=RECV_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(hub.stderr_path) as f:
            if text in f.read():
                return
        time.sleep(0.05)
    raise AssertionError("log never had %r\n%s" % (text, hub.stderr_tail()))


@aio
async def test_sighup_reloads_secret_and_limits_keeping_connections(tmp_path):
    cfg, base, h = start_with_file(tmp_path, {"jwt_secret": SECRET_A, "max_subscriptions": 1})
    try:
        t = uniq()
        old = await h.connect(t, "alice")
        assert (await old.subscribe("a"))["type"] == "subscribed"
        assert (await old.request({"type": "subscribe", "channel": "b"}))["code"] == "LIMIT_EXCEEDED"
        base.update(jwt_secret=SECRET_B, max_subscriptions=2)
        write(cfg, base)
        h.proc.send_signal(signal.SIGHUP)
        wait_log(h, '"event":"reload_applied"')
        # New handshakes use the new secret; the old secret is refused.
        assert await h.handshake_status(h.token(t, "bob", secret=SECRET_A)) == 401
        assert await h.handshake_status(h.token(t, "bob", secret=SECRET_B)) == 101
        # The open connection stayed, and has the new limit.
        assert (await old.subscribe("b"))["type"] == "subscribed"
        h.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="b", type="x"))
        assert (await old.next())["type"] == "x"
        # An invalid file changes nothing.
        write(cfg, "{not json")
        h.proc.send_signal(signal.SIGHUP)
        wait_log(h, '"event":"reload_failed"')
        assert await h.handshake_status(h.token(t, "carol", secret=SECRET_B)) == 101
    finally:
        h.stop_and_check()


@aio
async def test_sighup_reloads_presence_and_client_event_settings(tmp_path):
    cfg, base, h = start_with_file(tmp_path, {"jwt_secret": SECRET_A})
    try:
        t = uniq()
        a = await h.connect(t, "alice")
        b = await h.connect(t, "bob")
        await a.subscribe("board:1")
        await b.subscribe("board:1")
        msg = {"type": "publish", "channel": "board:1", "event": "typing", "id": 1}
        assert (await a.request(msg))["code"] == "PERMISSION_DENIED"
        base.update(client_events="board:*", presence_channels="board:*")
        write(cfg, base)
        h.proc.send_signal(signal.SIGHUP)
        wait_log(h, '"event":"reload_applied"')
        assert await a.request(msg) == {"type": "published", "channel": "board:1", "id": 1}
        assert (await b.next())["type"] == "client:typing"
        c = await h.connect(t, "carol")
        await c.subscribe("board:1")
        assert (await b.next())["type"] == "presence:join"
    finally:
        h.stop_and_check()


def log_lines(hub):
    with open(hub.stderr_path) as f:
        return f.read()


@aio
async def test_json_logs_are_structured_and_keep_secrets_out(tmp_path):
    _, _, h = start_with_file(tmp_path, {"jwt_secret": SECRET_A})
    t = uniq()
    tok = h.token(t, "alice")
    bad = h.token(t, "alice", secret="wrong-secret-wrong-secret-wrong-secret")
    try:
        c = await h.connect(t, "alice")
        assert await h.handshake_status(bad) == 401
        await c.close()
        await h.wait_stats(lambda s: s.connections == 0)
    finally:
        h.stop_and_check()
    text = log_lines(h)
    events = []
    for line in text.splitlines():  # every line (no human banner in json mode)
        entry = json.loads(line)
        assert {"time", "level"} <= set(entry), line
        events.append(entry)
    assert any(e.get("event") == "ready" for e in events)
    connects = [e for e in events if e.get("event") == "connect"]
    disconnects = [e for e in events if e.get("event") == "disconnect"]
    assert connects and connects[0]["tenant"] == t and connects[0]["client"]
    assert disconnects and disconnects[0]["client"] == connects[0]["client"]
    assert disconnects[0]["reason"] == "client"
    assert any(e.get("event") == "handshake_refused" for e in events)
    for secret in (SECRET_A, tok, bad, tok.split(".")[2], bad.split(".")[2]):
        assert secret not in text


@aio
async def test_logfmt_logs_keep_secrets_out(hub):
    t = uniq()
    tok = hub.token(t, "alice")
    c = await hub.connect(t, "alice")
    await c.close()
    assert await hub.handshake_status(tok + "x") == 401
    await hub.wait_stats(lambda s: s.connections == 0)
    text = log_lines(hub)
    assert "event=connect" in text and "event=disconnect" in text
    assert all(line.startswith("time=") for line in text.splitlines()
               if "level=" in line)
    for secret in (hub.secret, tok, tok.split(".")[2]):
        assert secret not in text


def test_every_setting_is_documented_with_its_default():
    """docs/CONFIGURATION.md has a row for every option --help lists, with
    the same environment variable and default."""
    import re
    helptext = run(["--help"]).stdout
    opts = re.findall(r"^  --(\S+)\s+(LIVEHUB_\S+)\s+.*\[default: (.*)\]$", helptext, re.M)
    assert len(opts) >= 20
    with open(os.path.join(ROOT, "docs", "CONFIGURATION.md")) as f:
        doc = f.read()
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\| `--([a-z-]+)` \| `(LIVEHUB_[A-Z_]+)` \| ([^|]+) \|", doc, re.M)}
    for flag, env, default in opts:
        assert flag in rows, "docs/CONFIGURATION.md has no row for --%s" % flag
        denv, ddefault = rows[flag]
        assert denv == env, flag
        ddefault = ddefault.strip().strip("`")
        want = "(none)" if default == "none" else default
        assert ddefault == want, "--%s: documented default %r, --help says %r" % (
            flag, ddefault, want)


def test_shipped_example_configuration_is_valid():
    r = run(["--check-config", "--config", os.path.join(ROOT, "deploy", "livehub.json")],
            env={"LIVEHUB_JWT_SECRET": SECRET_A})
    assert r.returncode == 0, r.stderr
