"""Server reflection: a conformance test of our own with hand-rolled
requests (v1 and v1alpha), then buf curl as a grpcurl-style user with no
.proto files at hand."""

import json

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

import opstest
from hubtest import RPC_TIMEOUT, aio, uniq

VERSIONS = [
    ("v1", opstest.refl_v1_pb2, opstest.refl_v1_grpc),
    ("v1alpha", opstest.refl_v1alpha_pb2, opstest.refl_v1alpha_grpc),
]
SERVICES = {"livehub.v1.HubService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}


def ask(hub, mod, grpc_mod, requests):
    """Sends requests on one reflection stream; returns the responses."""
    stub = grpc_mod.ServerReflectionStub(hub.channel)
    return list(stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT))


def files_of(resp):
    out = []
    for raw in resp.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto()
        fd.ParseFromString(raw)
        out.append(fd)
    return out


@pytest.mark.parametrize("ver,mod,grpc_mod", VERSIONS)
def test_list_services(hub, ver, mod, grpc_mod):
    [resp] = ask(hub, mod, grpc_mod, [mod.ServerReflectionRequest(list_services="", host="h")])
    assert {s.name for s in resp.list_services_response.service} == SERVICES
    assert resp.original_request.list_services == ""
    assert resp.valid_host == "h"


@pytest.mark.parametrize("ver,mod,grpc_mod", VERSIONS)
def test_many_requests_on_one_stream(hub, ver, mod, grpc_mod):
    reqs = [
        mod.ServerReflectionRequest(file_by_filename="livehub/v1/hub.proto"),
        mod.ServerReflectionRequest(file_containing_symbol="livehub.v1.HubService.GetStats"),
        mod.ServerReflectionRequest(file_containing_symbol="livehub.v1.NoSuchThing"),
        mod.ServerReflectionRequest(file_by_filename="no/such.proto"),
        mod.ServerReflectionRequest(file_containing_extension=mod.ExtensionRequest(
            containing_type="livehub.v1.GetStatsRequest", extension_number=99)),
        mod.ServerReflectionRequest(all_extension_numbers_of_type="livehub.v1.GetStatsResponse"),
        mod.ServerReflectionRequest(),  # no request kind set
        mod.ServerReflectionRequest(list_services=""),
    ]
    resps = ask(hub, mod, grpc_mod, reqs)
    assert len(resps) == len(reqs)
    for req, resp in zip(reqs, resps):
        assert resp.original_request == req
    names = [f.name for f in files_of(resps[0])]
    assert names[0] == "livehub/v1/hub.proto"
    assert "livehub/v1/events.proto" in names
    assert "google/protobuf/struct.proto" in names  # well-known types come along
    assert len(names) == len(set(names))
    assert files_of(resps[1])[0].name == "livehub/v1/hub.proto"
    # The contract's comments come along, for `describe`.
    hub_fd = files_of(resps[0])[0]
    assert any("Open WebSocket connections" in loc.leading_comments
               for loc in hub_fd.source_code_info.location)
    for i in (2, 3, 4):
        assert resps[i].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert resps[i].error_response.error_message
    assert resps[5].all_extension_numbers_response.base_type_name == "livehub.v1.GetStatsResponse"
    assert list(resps[5].all_extension_numbers_response.extension_number) == []
    assert resps[6].error_response.error_code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert len(resps[7].list_services_response.service) == 4


def test_descriptors_build_a_working_pool(hub):
    """What reflection returns is complete: a fresh descriptor pool built
    from it alone resolves every method and message of HubService."""
    mod, grpc_mod = opstest.refl_v1_pb2, opstest.refl_v1_grpc
    seen = {}
    for svc in SERVICES:
        [resp] = ask(hub, mod, grpc_mod, [mod.ServerReflectionRequest(file_containing_symbol=svc)])
        for fd in files_of(resp):
            seen[fd.name] = fd
    pool = descriptor_pool.DescriptorPool()
    added = set()
    while len(added) < len(seen):
        progress = False
        for name, fd in seen.items():
            if name not in added and all(d in added for d in fd.dependency):
                pool.Add(fd)
                added.add(name)
                progress = True
        assert progress, "a dependency is missing: %s" % (set(seen) - added)
    hs = pool.FindServiceByName("livehub.v1.HubService")
    assert "GetStats" in hs.methods_by_name and "PublishJobProgress" in hs.methods_by_name
    stats = pool.FindMessageTypeByName("livehub.v1.GetStatsResponse")
    assert "top_tenants" in stats.fields_by_name
    assert pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Watch"]


def test_malformed_request_ends_the_stream(hub):
    call = hub.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as e:
        list(call(iter([b"\x1a\xff"]), timeout=RPC_TIMEOUT))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_empty_stream_is_ok(hub):
    mod, grpc_mod = opstest.refl_v1_pb2, opstest.refl_v1_grpc
    assert ask(hub, mod, grpc_mod, []) == []


def _url(hub, path=""):
    return "http://%s:%d%s" % (hub.grpc_host, hub.grpc_port, path)


def test_buf_curl_lists_methods(hub):
    rc, out, err = opstest.buf("curl", "--protocol", "grpc", "--http2-prior-knowledge",
                               "--list-methods", _url(hub))
    assert rc == 0, err
    methods = set(out.split())
    assert "livehub.v1.HubService/GetStats" in methods
    assert "livehub.v1.HubService/PublishJobProgress" in methods
    assert "grpc.health.v1.Health/Check" in methods


def test_buf_curl_v1alpha_lists_services(hub):
    rc, out, err = opstest.buf("curl", "--protocol", "grpc", "--http2-prior-knowledge",
                               "--reflect-protocol", "grpc-v1alpha", "--list-services", _url(hub))
    assert rc == 0, err
    assert set(out.split()) == SERVICES


@aio
async def test_buf_curl_publishes_to_a_client(hub):
    """A real call built from reflection alone: JSON in, the event arrives
    at a subscribed WebSocket client."""
    t = uniq()
    c = await hub.connect(t, "alice")
    await c.subscribe("job:j1")
    body = json.dumps({"tenant_id": t, "event": {"job_id": "j1", "progress": 40,
                                                 "message": "halfway"}})
    rc, out, err = opstest.buf("curl", "--protocol", "grpc", "--http2-prior-knowledge",
                               "-d", body, _url(hub, "/livehub.v1.HubService/PublishJobProgress"))
    assert rc == 0, err
    assert json.loads(out)["result"]["subscribers"] == 1
    msg = await c.next()
    assert msg["type"] == "job:progress" and msg["data"]["progress"] == 40


def test_buf_curl_health_check(hub):
    rc, out, err = opstest.buf("curl", "--protocol", "grpc", "--http2-prior-knowledge",
                               "-d", '{"service":"livehub.v1.HubService"}',
                               _url(hub, "/grpc.health.v1.Health/Check"))
    assert rc == 0, err
    assert json.loads(out) == {"status": "SERVING"}
