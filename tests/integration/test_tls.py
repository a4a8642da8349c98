"""TLS (docs/SECURITY.md "TLS"): wss:// and https:// on the WebSocket port,
gRPC over TLS, and mutual TLS for gRPC. Certificates are made for each run
with the openssl command line: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and a client certificate from another CA."""

import os
import ssl
import subprocess
import urllib.error
import urllib.request

import grpc
import pytest
import websockets

import hubtest
from hubtest import Hub, aio, hub_pb2, hub_pb2_grpc, uniq

KEY = "tls-admin-Hy6Gt4Fr2De0"


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", name + ".key", "-out", name + ".crt", "-days", "2",
            "-subj", "/CN=livehub test " + name, cwd=d)


def make_cert(d, name, ca, ext):
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write(ext)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name, cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", name + ".ext",
            cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
              "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    make_cert(d, "client", "ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    make_cert(d, "rogue", "rogue-ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    return d


def read(pki, name):
    with open(os.path.join(pki, name), "rb") as f:
        return f.read()


def client_ssl(pki):
    ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
    return ctx


def grpc_creds(pki, client=None):
    kw = {"root_certificates": read(pki, "ca.crt")}
    if client:
        kw["private_key"] = read(pki, client + ".key")
        kw["certificate_chain"] = read(pki, client + ".crt")
    return grpc.ssl_channel_credentials(**kw)


def tls_env(pki, **extra):
    env = {"LIVEHUB_TLS_CERT": os.path.join(pki, "server.crt"),
           "LIVEHUB_TLS_KEY": os.path.join(pki, "server.key"),
           "LIVEHUB_API_KEYS": "ops:admin=" + KEY}
    env.update(extra)
    return env


def grpc_code(hub, creds):
    """The status of a GetStats over a new channel with creds (None:
    plaintext); OK when it worked."""
    target = "%s:%d" % (hub.grpc_host, hub.grpc_port)
    ch = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    ch = hubtest.key_channel(ch, KEY)
    try:
        hub_pb2_grpc.HubServiceStub(ch).GetStats(hub_pb2.GetStatsRequest(),
                                                 timeout=hubtest.RPC_TIMEOUT)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()
    finally:
        ch.close()


@aio
async def test_wss_https_and_grpc_tls(pki, tmp_path):
    h = Hub.start(tmp_path, env=tls_env(pki), api_key=KEY, grpc_credentials=grpc_creds(pki),
                  ws_ssl=client_ssl(pki))
    try:
        # wss: connect, subscribe, receive what gRPC over TLS publishes.
        t = uniq()
        c = await h.connect(t, "alice")
        await c.subscribe("job:7")
        r = h.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="job:7", type="x:y"))
        assert r.result.subscribers == 1
        m = await c.next()
        assert (m["type"], m["channel"]) == ("x:y", "job:7")

        # https /healthz, verified against the test CA.
        url = "https://127.0.0.1:%d/healthz" % h.ws_port
        with urllib.request.urlopen(url, context=client_ssl(pki), timeout=15) as resp:
            assert resp.status == 200

        # Plain HTTP and ws:// to the TLS port do not work.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen("http://127.0.0.1:%d/healthz" % h.ws_port, timeout=15).read()
        with pytest.raises(Exception):
            ws = await websockets.connect("ws://127.0.0.1:%d/ws?token=%s"
                                          % (h.ws_port, h.token(t, "bob")),
                                          open_timeout=15)
            await ws.close()
        # A client that does not trust the CA refuses the server.
        with pytest.raises(ssl.SSLCertVerificationError):
            await websockets.connect(h.ws_url(h.token(t, "bob")), ssl=ssl.create_default_context(),
                                     open_timeout=15)

        # gRPC: TLS works, plaintext does not; the API key is still needed.
        assert grpc_code(h, grpc_creds(pki)) == grpc.StatusCode.OK
        assert grpc_code(h, None) == grpc.StatusCode.UNAVAILABLE
        ch = h.new_channel(None)
        with pytest.raises(grpc.RpcError) as ei:
            hub_pb2_grpc.HubServiceStub(ch).GetStats(hub_pb2.GetStatsRequest(),
                                                     timeout=hubtest.RPC_TIMEOUT)
        ch.close()
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await hubtest.close_all_clients()
        h.stop_and_check()
    assert "tls=on" in h.stderr_text()


def test_grpc_mutual_tls(pki, tmp_path):
    env = tls_env(pki, LIVEHUB_GRPC_TLS_CLIENT_CA=os.path.join(pki, "ca.crt"))
    h = Hub.start(tmp_path, env=env, api_key=KEY, grpc_credentials=grpc_creds(pki, "client"))
    try:
        assert h.stats().version
        assert grpc_code(h, grpc_creds(pki, "client")) == grpc.StatusCode.OK
        assert grpc_code(h, grpc_creds(pki)) == grpc.StatusCode.UNAVAILABLE  # no client cert
        assert grpc_code(h, grpc_creds(pki, "rogue")) == grpc.StatusCode.UNAVAILABLE
        assert grpc_code(h, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        h.stop_and_check()
    assert "tls=mutual" in h.stderr_text()


def test_grpc_only_tls_files_and_mtls_without_keys(pki, tmp_path):
    """gRPC's own certificate settings, with plain ws; mutual TLS alone
    (no API key) may listen beyond loopback: callers are then the holders
    of a client certificate."""
    env = {"LIVEHUB_GRPC_TLS_CERT": os.path.join(pki, "server.crt"),
           "LIVEHUB_GRPC_TLS_KEY": os.path.join(pki, "server.key"),
           "LIVEHUB_GRPC_TLS_CLIENT_CA": os.path.join(pki, "ca.crt")}
    h = Hub.start(tmp_path, env=env, grpc_credentials=grpc_creds(pki, "client"),
                  args=["--ws-host", "127.0.0.1", "--ws-port", "0", "--grpc-host", "0.0.0.0",
                        "--grpc-port", "0"])
    try:
        h.channel.close()
        h.grpc_host = "127.0.0.1"
        h.channel = h.new_channel()
        h.stub = hub_pb2_grpc.HubServiceStub(h.channel)
        assert h.stats().version
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % h.ws_port,
                                    timeout=15) as resp:
            assert resp.status == 200
    finally:
        h.stop_and_check()
    assert "event=grpc_auth_mtls_only" in h.stderr_text()


def test_tls_configuration_errors(pki, tmp_path):
    crt, key = os.path.join(pki, "server.crt"), os.path.join(pki, "server.key")
    cases = [
        ({"LIVEHUB_TLS_CERT": crt}, "LIVEHUB_TLS_CERT and LIVEHUB_TLS_KEY must be set together"),
        ({"LIVEHUB_GRPC_TLS_KEY": key},
         "LIVEHUB_GRPC_TLS_CERT and LIVEHUB_GRPC_TLS_KEY must be set together"),
        ({"LIVEHUB_GRPC_TLS_CLIENT_CA": crt}, "LIVEHUB_GRPC_TLS_CLIENT_CA needs gRPC TLS"),
        ({"LIVEHUB_TLS_CERT": crt, "LIVEHUB_TLS_KEY": os.path.join(pki, "nope.key")},
         "LIVEHUB_TLS_KEY: cannot read"),
        # A key that does not belong to the certificate.
        ({"LIVEHUB_TLS_CERT": crt, "LIVEHUB_TLS_KEY": os.path.join(pki, "client.key")},
         "LIVEHUB_TLS_KEY: %s is not a usable PEM private key: key values mismatch"
         % os.path.join(pki, "client.key")),
        ({"LIVEHUB_TLS_CERT": crt, "LIVEHUB_TLS_KEY": key, "LIVEHUB_GRPC_TLS_CERT": key,
          "LIVEHUB_GRPC_TLS_KEY": key}, "LIVEHUB_GRPC_TLS_CERT: %s is not a usable PEM" % key),
        ({"LIVEHUB_TLS_CERT": crt, "LIVEHUB_TLS_KEY": key, "LIVEHUB_GRPC_TLS_CLIENT_CA": key},
         "LIVEHUB_GRPC_TLS_CLIENT_CA: %s is not a usable PEM CA bundle" % key),
    ]
    for env, want in cases:
        r = subprocess.run([hubtest.BIN, "--check-config"], cwd=str(tmp_path),
                           env=hubtest.clean_env(env), capture_output=True, text=True,
                           timeout=hubtest.READY_TIMEOUT)
        assert r.returncode == 2, (env, r.stderr)
        assert want in r.stderr, (want, r.stderr)
    # Start-up itself refuses them the same way, before binding anything.
    env = {"LIVEHUB_TLS_CERT": crt, "LIVEHUB_TLS_KEY": os.path.join(pki, "client.key")}
    r = subprocess.run([hubtest.BIN, "--ws-port", "0", "--grpc-port", "0",
                        "--ws-host", "127.0.0.1"], cwd=str(tmp_path),
                       env=hubtest.clean_env(env), capture_output=True, text=True,
                       timeout=hubtest.READY_TIMEOUT)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert "LIVEHUB_TLS_KEY" in r.stderr
