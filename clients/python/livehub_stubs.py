"""Python stubs for livehub's gRPC API, generated from proto/ on first use.

    from livehub_stubs import load_stubs
    events_pb2, hub_pb2, hub_pb2_grpc = load_stubs()

Generated code is not committed: `load_stubs()` runs Debian's grpc_tools
(python3-grpc-tools) into clients/python/gen/ (gitignored) when the stubs
are missing or older than the .proto files, so they always match proto/.
To regenerate by hand (or into your own project):

    /usr/bin/python3 -m grpc_tools.protoc -I proto -I /usr/include \\
        --python_out=OUT --grpc_python_out=OUT --pyi_out=OUT \\
        proto/livehub/v1/events.proto proto/livehub/v1/hub.proto

Use /usr/bin/python3: Debian's grpcio lives there.

`open_channel()` and `call_metadata()` give every example the same
connection rules: LIVEHUB_API_KEY, when set, goes out as `authorization:
Bearer <key>` (livehub's service authentication, docs/SECURITY.md);
--tls-ca (and --tls-cert/--tls-key for mutual TLS) switch to TLS.
"""
import os
import subprocess
import sys
from types import ModuleType
from typing import List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GEN = os.environ.get("LIVEHUB_PY_GEN", os.path.join(HERE, "gen"))
PROTOS = [os.path.join(ROOT, "proto", "livehub", "v1", f) for f in ("hub.proto", "events.proto")]


def _stale(marker: str) -> bool:
    if not os.path.exists(marker):
        return True
    return any(os.path.getmtime(p) > os.path.getmtime(marker) for p in PROTOS)


def load_stubs() -> Tuple[ModuleType, ModuleType, ModuleType]:
    """Generates the stubs when missing or stale; returns (events_pb2,
    hub_pb2, hub_pb2_grpc). The .pyi files give editors and mypy the types."""
    marker = os.path.join(GEN, "livehub", "v1", "hub_pb2_grpc.py")
    if _stale(marker):
        os.makedirs(GEN, exist_ok=True)
        cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
               "-I", "/usr/include", "--python_out", GEN, "--grpc_python_out", GEN]
        # --pyi_out needs protoc >= 3.20; older grpc_tools still give working stubs.
        if subprocess.run(cmd + ["--pyi_out", GEN] + PROTOS, capture_output=True).returncode != 0:
            subprocess.run(cmd + PROTOS, check=True)
    if GEN not in sys.path:
        sys.path.insert(0, GEN)
    from livehub.v1 import events_pb2, hub_pb2, hub_pb2_grpc  # noqa: E402
    return events_pb2, hub_pb2, hub_pb2_grpc


def call_metadata() -> Optional[List[Tuple[str, str]]]:
    """The per-call metadata: the API key from LIVEHUB_API_KEY, if any."""
    key = os.environ.get("LIVEHUB_API_KEY")
    return [("authorization", "Bearer " + key)] if key else None


def open_channel(addr: str, tls_ca: Optional[str] = None, tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None):
    """A grpc channel to livehub: plaintext, or TLS trusting tls_ca (with a
    client certificate for mutual TLS when tls_cert/tls_key are given)."""
    import grpc
    if not tls_ca:
        return grpc.insecure_channel(addr)

    def read(path: Optional[str]) -> Optional[bytes]:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()
    return grpc.secure_channel(addr, grpc.ssl_channel_credentials(read(tls_ca), read(tls_key),
                                                                 read(tls_cert)))


def add_connection_args(ap) -> None:
    """--addr and the TLS flags, shared by the examples."""
    ap.add_argument("--addr", default="127.0.0.1:50051", help="livehub's gRPC address")
    ap.add_argument("--tls-ca", help="PEM CA bundle: connect with TLS, trusting it")
    ap.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    ap.add_argument("--tls-key", help="PEM key of --tls-cert")
