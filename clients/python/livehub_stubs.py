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
"""
import os
import subprocess
import sys
from types import ModuleType
from typing import Tuple

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
