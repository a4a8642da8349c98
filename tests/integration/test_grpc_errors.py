"""gRPC validation: bad calls fail with the right status, name the field,
and publish nothing."""

import math

import grpc
import pytest

from hubtest import SERVICE, aio, events_pb2, hub_pb2, uniq

INVALID = grpc.StatusCode.INVALID_ARGUMENT


# -- hand-built protobuf (for what the Python runtime refuses to encode) --

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field, payload):
    """A length-delimited field (string, bytes, message)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def progress_request(tenant, job, message=None, details=b""):
    ev = ld(1, job)
    if message is not None:
        ev += ld(6, message)
    if details:
        ev += ld(8, details)
    return ld(1, tenant) + ld(2, ev)


def struct_with_string(key, value):
    """A google.protobuf.Struct {key: value} with string_value bytes."""
    val = ld(3, value)  # Value.string_value
    entry = ld(1, key) + ld(2, val)  # map entry
    return ld(1, entry)  # Struct.fields


def expect_invalid(hub, method, request, field):
    e = hub.rpc_error(method, request)
    assert e.code() == INVALID, (e.code(), e.details())
    assert field in (e.details() or ""), "details %r should name %r" % (e.details(), field)
    return e


# -- tests ---------------------------------------------------------------

def test_hand_built_request_matches_the_runtime():
    """Guards the hand-built encoder used below."""
    want = hub_pb2.PublishJobProgressRequest(
        tenant_id="t", event=events_pb2.JobProgress(job_id="j", message="m")).SerializeToString()
    assert progress_request(b"t", b"j", b"m") == want


@pytest.mark.parametrize("method,request_", [
    ("PublishJobProgress", hub_pb2.PublishJobProgressRequest(event=events_pb2.JobProgress(job_id="1"))),
    ("PublishJobCompleted", hub_pb2.PublishJobCompletedRequest(event=events_pb2.JobCompleted(job_id="1"))),
    ("PublishJobFailed", hub_pb2.PublishJobFailedRequest(event=events_pb2.JobFailed(job_id="1"))),
    ("PublishPriceUpdated", hub_pb2.PublishPriceUpdatedRequest(event=events_pb2.PriceUpdated(item_id="1"))),
    ("PublishOrderStatus", hub_pb2.PublishOrderStatusRequest(event=events_pb2.OrderStatus(order_id="1"))),
    ("BroadcastTenant", hub_pb2.BroadcastTenantRequest(type="x")),
    ("SendToUser", hub_pb2.SendToUserRequest(user_id="u", type="x")),
    ("Publish", hub_pb2.PublishRequest(channel="job:1", type="x")),
])
def test_missing_tenant_id(hub, method, request_):
    expect_invalid(hub, method, request_, "tenant_id")


@pytest.mark.parametrize("tenant", ["a b", "acme\x1fjob", "x" * 65, "t\u00e9"])
def test_invalid_tenant_id(hub, tenant):
    expect_invalid(hub, "Publish", hub_pb2.PublishRequest(tenant_id=tenant, channel="job:1", type="x"),
                   "tenant_id")


@pytest.mark.parametrize("method,request_,field", [
    ("PublishJobProgress", hub_pb2.PublishJobProgressRequest(tenant_id="t"), "event"),
    ("PublishJobProgress", hub_pb2.PublishJobProgressRequest(
        tenant_id="t", event=events_pb2.JobProgress(progress=3)), "event.job_id"),
    ("PublishJobProgress", hub_pb2.PublishJobProgressRequest(
        tenant_id="t", event=events_pb2.JobProgress(job_id="a b")), "event.job_id"),
    ("PublishJobCompleted", hub_pb2.PublishJobCompletedRequest(
        tenant_id="t", event=events_pb2.JobCompleted(project_id="p")), "event.job_id"),
    ("PublishJobFailed", hub_pb2.PublishJobFailedRequest(
        tenant_id="t", event=events_pb2.JobFailed(error="x")), "event.job_id"),
    ("PublishJobFailed", hub_pb2.PublishJobFailedRequest(
        tenant_id="t", event=events_pb2.JobFailed(job_id="1", project_id="p/$q")), "event.project_id"),
    ("PublishPriceUpdated", hub_pb2.PublishPriceUpdatedRequest(
        tenant_id="t", event=events_pb2.PriceUpdated(currency="EUR")), "event.item_id"),
    ("PublishOrderStatus", hub_pb2.PublishOrderStatusRequest(
        tenant_id="t", event=events_pb2.OrderStatus(note="x")), "event.order_id"),
    ("SendToUser", hub_pb2.SendToUserRequest(tenant_id="t", type="x"), "user_id"),
    ("SendToUser", hub_pb2.SendToUserRequest(tenant_id="t", user_id="a b", type="x"), "user_id"),
    ("SendToUser", hub_pb2.SendToUserRequest(tenant_id="t", user_id="u"), "type"),
    ("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id="t"), "type"),
    ("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id="t", type="bad type"), "type"),
    ("BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id="t", type="x" * 65), "type"),
    ("Publish", hub_pb2.PublishRequest(tenant_id="t", type="x"), "channel"),
    ("Publish", hub_pb2.PublishRequest(tenant_id="t", channel="job:1"), "type"),
    ("Publish", hub_pb2.PublishRequest(tenant_id="t", channel="a b", type="x"), "channel"),
    ("Publish", hub_pb2.PublishRequest(tenant_id="t", channel="x" * 161, type="x"), "channel"),
])
def test_missing_or_invalid_field(hub, method, request_, field):
    expect_invalid(hub, method, request_, field)


@pytest.mark.parametrize("channel", ["$tenant", "$user:alice", "$x"])
def test_publish_to_reserved_channel(hub, channel):
    expect_invalid(hub, "Publish", hub_pb2.PublishRequest(tenant_id="t", channel=channel, type="x"),
                   "channel")


@aio
@pytest.mark.parametrize("progress", [150.0, 100.5, -1.0, math.nan, math.inf])
async def test_progress_out_of_range_publishes_nothing(hub, progress):
    t, job = uniq(), uniq("j")
    c = await hub.connect(t, "alice")
    await c.subscribe("job:" + job)
    expect_invalid(hub, "PublishJobProgress", hub_pb2.PublishJobProgressRequest(
        tenant_id=t, event=events_pb2.JobProgress(job_id=job, progress=progress)), "progress")
    await c.expect_nothing()
    # The bounds themselves are fine.
    for ok in (0.0, 100.0):
        r = hub.rpc("PublishJobProgress", hub_pb2.PublishJobProgressRequest(
            tenant_id=t, event=events_pb2.JobProgress(job_id=job, progress=ok))).result
        assert r.subscribers == 1
        assert (await c.next())["data"]["progress"] == ok


@aio
async def test_invalid_utf8_in_string_field(hub):
    t, job = uniq(), uniq("j")
    c = await hub.connect(t, "alice")
    await c.subscribe("job:" + job)
    path = SERVICE + "PublishJobProgress"
    for bad in (b"\xff\xfe", b"ok \xc3", b"\xed\xa0\x80", b"\xc0\xaf"):
        code, details, _ = hub.raw_call(path, progress_request(t.encode(), job.encode(), bad))
        assert code == INVALID, (bad, code, details)
        assert "event.message" in details, (bad, details)
    # Valid UTF-8 (4-byte sequence included) goes through the same path.
    code, details, reply = hub.raw_call(path, progress_request(t.encode(), job.encode(),
                                                               "ok \U0001F434".encode()))
    assert code == grpc.StatusCode.OK, details
    m = await c.next()
    assert m["data"]["message"] == "ok \U0001F434"
    await c.expect_nothing()


@aio
async def test_invalid_utf8_inside_struct(hub):
    t, job = uniq(), uniq("j")
    c = await hub.connect(t, "alice")
    await c.subscribe("job:" + job)
    path = SERVICE + "PublishJobProgress"
    for details_bytes in (struct_with_string(b"k", b"\xff"), struct_with_string(b"\xfe", b"v")):
        code, details, _ = hub.raw_call(path, progress_request(t.encode(), job.encode(), None, details_bytes))
        assert code == INVALID, (code, details)
        assert "event.details" in details, details
    await c.expect_nothing()


@pytest.mark.parametrize("body", [
    b"\x0a\x05ab",  # string longer than the message
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # runaway varint
    b"\x12\x03\x0a\x09x",  # nested message longer than its field
    b"\x07",  # wire type 7 does not exist
])
def test_malformed_protobuf(hub, body):
    code, details, _ = hub.raw_call(SERVICE + "PublishJobProgress", body)
    assert code == INVALID, (code, details)


def nested_struct(levels):
    """A google.protobuf.Struct whose field "a" holds a Struct, `levels` deep.

    Struct.fields (1) is a map entry {key (1), value (2): Value}, and
    Value.struct_value is field 5, so each level is three messages deep."""
    inner = b""
    for _ in range(levels):
        value = ld(5, inner)
        entry = ld(1, b"a") + ld(2, value)
        inner = ld(1, entry)
    return inner


@pytest.mark.parametrize("levels", [4000])
def test_deeply_nested_request_is_refused_not_a_crash(hub, levels):
    # protobuf-c unpacks recursively with no depth limit: ~40 KB of nesting
    # would overflow the stack. The hub refuses it before unpacking.
    body = progress_request(b"acme", b"j1", details=nested_struct(levels))
    assert len(body) < 1024 * 1024
    code, details, _ = hub.raw_call(SERVICE + "PublishJobProgress", body)
    assert code == INVALID, (code, details)
    assert "nested deeper than 100 levels" in details
    assert hub.stats().version == "0.1.0"  # still alive


def test_moderately_nested_request_is_accepted(hub):
    # 20 Struct levels = 60 messages + the request and event: within 100.
    body = progress_request(b"acme", b"j1", details=nested_struct(20))
    code, details, _ = hub.raw_call(SERVICE + "PublishJobProgress", body)
    assert code == grpc.StatusCode.OK, (code, details)


@pytest.mark.parametrize("path", [
    SERVICE + "NoSuchMethod",
    "/livehub.v1.NoSuchService/Publish",
    "/livehub.v2.HubService/Publish",
])
def test_unknown_method_is_unimplemented(hub, path):
    code, details, _ = hub.raw_call(path, b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED, (code, details)


def test_still_serves_after_errors(hub):
    hub.raw_call(SERVICE + "PublishJobProgress", b"\xff\xff")
    hub.raw_call(SERVICE + "Nope", b"")
    s = hub.stats()
    assert s.version == "0.1.0"


@aio
async def test_request_size_limit_is_1mib(hub):
    """Just under 1 MiB is delivered whole; over 1 MiB is RESOURCE_EXHAUSTED."""
    t, ch = uniq(), "board:" + uniq("b")
    c = await hub.connect(t, "alice")
    await c.subscribe(ch)
    big = "z" * (1000 * 1000)
    req = hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="big")
    req.data.update({"blob": big})
    assert req.ByteSize() < 1024 * 1024
    r = hub.rpc("Publish", req).result
    assert r.subscribers == 1
    m = await c.next()
    assert m["data"] == {"blob": big}
    req.data.update({"blob": big + "z" * 60000})
    assert req.ByteSize() > 1024 * 1024
    e = hub.rpc_error("Publish", req)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())
    await c.expect_nothing()


@pytest.mark.parametrize("etype", ["connected", "subscribed", "unsubscribed", "pong", "error",
                                   "presence", "published", "presence:join", "presence:leave",
                                   "user:online", "user:offline", "client:typing"])
def test_client_protocol_types_are_reserved(hub, etype):
    """A publisher must not be able to forge the hub's own replies."""
    expect_invalid(hub, "BroadcastTenant", hub_pb2.BroadcastTenantRequest(tenant_id="t", type=etype), "type")
    expect_invalid(hub, "Publish", hub_pb2.PublishRequest(tenant_id="t", channel="c", type=etype), "type")
    expect_invalid(hub, "SendToUser", hub_pb2.SendToUserRequest(tenant_id="t", user_id="u", type=etype),
                   "type")
