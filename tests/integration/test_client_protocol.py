"""The client protocol (docs/PROTOCOL.md): replies, errors, close codes."""

import json

from hubtest import aio, hub_pb2, no_pos, uniq


def is_error(msg, code, id_=None, recoverable=True):
    """Checks an error message exactly: type, code, a non-empty message,
    recoverable, and id only when the request had one."""
    want_keys = {"type", "code", "message", "recoverable"} | ({"id"} if id_ is not None else set())
    assert set(msg) == want_keys, msg
    assert (msg["type"], msg["code"], msg["recoverable"]) == ("error", code, recoverable), msg
    assert isinstance(msg["message"], str) and msg["message"], msg
    if id_ is not None:
        assert msg["id"] == id_ and type(msg["id"]) is type(id_), msg
    return True


@aio
async def test_ping_pong_and_id_echo(hub):
    c = await hub.connect(uniq(), "alice")
    assert await c.request({"type": "ping"}) == {"type": "pong"}
    assert await c.request({"type": "ping", "id": 7}) == {"type": "pong", "id": 7}
    assert await c.request({"type": "ping", "id": "req-\u00e9"}) == {"type": "pong", "id": "req-\u00e9"}
    ch = "job:" + uniq("j")
    assert no_pos(await c.request({"type": "subscribe", "channel": ch, "id": 12345678901})) == {
        "type": "subscribed", "channel": ch, "id": 12345678901}
    assert await c.request({"type": "unsubscribe", "channel": ch, "id": "u1"}) == {
        "type": "unsubscribed", "channel": ch, "id": "u1"}
    m = await c.request({"type": "subscribe", "id": "e1"})
    assert is_error(m, "BAD_REQUEST", "e1")


@aio
async def test_malformed_json_is_protocol_error_and_connection_survives(hub):
    c = await hub.connect(uniq(), "alice")
    assert is_error(await c.request('{"type":"ping",'), "PROTOCOL_ERROR")
    assert await c.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    for bad in ['not json', '[1,2]', '"ping"', '42', 'null', '{}', '{"type":5}', '{"type":null}', '']:
        m = await c.request(bad)
        assert is_error(m, "PROTOCOL_ERROR"), (bad, m)
    assert await c.request({"type": "ping", "id": 2}) == {"type": "pong", "id": 2}


@aio
async def test_unknown_type_is_protocol_error(hub):
    c = await hub.connect(uniq(), "alice")
    assert is_error(await c.request({"type": "subscribe_all"}), "PROTOCOL_ERROR")
    assert is_error(await c.request({"type": "emit", "channel": "job:1", "id": 9}), "PROTOCOL_ERROR", 9)
    await c.expect_nothing()


@aio
async def test_subscribe_bad_requests(hub):
    c = await hub.connect(uniq(), "alice")
    cases = [
        {"type": "subscribe", "id": 1},
        {"type": "subscribe", "channel": 42, "id": 2},
        {"type": "subscribe", "channel": "", "id": 3},
        {"type": "subscribe", "channel": "job 42", "id": 4},
        {"type": "subscribe", "channel": "job:\u00e9", "id": 5},
        {"type": "subscribe", "channel": "job:\"x", "id": 6},
        {"type": "subscribe", "channel": "x" * 161, "id": 7},
        {"type": "subscribe", "channel": "job:$x", "id": 8},
        {"type": "unsubscribe", "id": 9},
        {"type": "unsubscribe", "channel": "a b", "id": 10},
        {"type": "subscribe", "projectId": "p 1", "id": 11},
    ]
    for req in cases:
        m = await c.request(req)
        assert is_error(m, "BAD_REQUEST", req["id"]), (req, m)
    # A 160-character name is fine.
    await c.subscribe("y" * 160)
    await c.expect_nothing()


@aio
async def test_reserved_channels_are_access_denied(hub):
    c = await hub.connect(uniq(), "alice")
    for i, ch in enumerate(["$tenant", "$user:alice", "$user:bob", "$anything"]):
        m = await c.request({"type": "subscribe", "channel": ch, "id": i})
        assert is_error(m, "CHANNEL_ACCESS_DENIED", i), (ch, m)


@aio
async def test_subscribe_seed004_project_form(hub):
    t, p = uniq(), uniq("p")
    c = await hub.connect(t, "alice")
    assert no_pos(await c.request({"type": "subscribe", "projectId": p})) == {
        "type": "subscribed", "channel": "project:" + p, "projectId": p}
    r = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="project:" + p, type="x")).result
    assert r.subscribers == 1
    m = await c.next()
    assert (m["type"], m["channel"], m["offset"]) == ("x", "project:" + p, r.offset)
    assert await c.request({"type": "unsubscribe", "projectId": p, "id": 3}) == {
        "type": "unsubscribed", "channel": "project:" + p, "projectId": p, "id": 3}
    r = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="project:" + p, type="x")).result
    assert r.subscribers == 0
    await c.expect_nothing()


@aio
async def test_subscribe_and_unsubscribe_are_idempotent(hub):
    t, ch = uniq(), "board:" + uniq("b")
    c = await hub.connect(t, "alice")
    await c.subscribe(ch, id=1)
    await c.subscribe(ch, id=2)
    r = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="x")).result
    assert r.subscribers == 1
    assert (await c.next())["offset"] == r.offset
    await c.expect_nothing()  # once, not twice
    for i in (3, 4):
        assert await c.request({"type": "unsubscribe", "channel": ch, "id": i}) == {
            "type": "unsubscribed", "channel": ch, "id": i}
    never = "board:" + uniq("b")
    assert await c.request({"type": "unsubscribe", "channel": never}) == {
        "type": "unsubscribed", "channel": never}
    r = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="x")).result
    assert r.subscribers == 0
    await c.expect_nothing()


@aio
async def test_binary_frame_closes_1003(hub):
    c = await hub.connect(uniq(), "alice")
    await c.ws.send(b'{"type":"ping"}')
    code, _ = await c.expect_close()
    assert code == 1003


@aio
async def test_invalid_utf8_text_closes_1007(hub):
    c = await hub.connect(uniq(), "alice")
    await c.send_raw_text(b'{"type":"ping","id":"\xff\xfe"}')
    code, _ = await c.expect_close()
    assert code == 1007


@aio
async def test_overlong_utf8_text_closes_1007(hub):
    """An overlong encoding of '/' is invalid UTF-8 too."""
    c = await hub.connect(uniq(), "alice")
    await c.send_raw_text(b'{"type":"ping","id":"\xc0\xaf"}')
    code, _ = await c.expect_close()
    assert code == 1007


def padded_ping(size, id_):
    """A ping message of exactly size bytes."""
    base = {"type": "ping", "id": id_, "pad": ""}
    pad = size - len(json.dumps(base, separators=(",", ":")))
    base["pad"] = "x" * pad
    text = json.dumps(base, separators=(",", ":"))
    assert len(text) == size
    return text


@aio
async def test_message_of_64k_is_accepted(hub):
    c = await hub.connect(uniq(), "alice")
    assert await c.request(padded_ping(65536, "big")) == {"type": "pong", "id": "big"}


@aio
async def test_message_over_64k_closes_1009(hub):
    c = await hub.connect(uniq(), "alice")
    await c.send(padded_ping(65537, "too-big"))
    code, got = await c.expect_close()
    assert code == 1009, (code, got)
    assert {"type": "pong", "id": "too-big"} not in got


@aio
async def test_connection_survives_errors_and_keeps_receiving(hub):
    t, ch = uniq(), "job:" + uniq("j")
    c = await hub.connect(t, "alice")
    await c.subscribe(ch)
    assert is_error(await c.request("{{{"), "PROTOCOL_ERROR")
    assert is_error(await c.request({"type": "subscribe", "channel": "$tenant"}), "CHANNEL_ACCESS_DENIED")
    r = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="still.here")).result
    assert r.subscribers == 1
    assert (await c.next())["type"] == "still.here"


@aio
async def test_subscription_limit_is_128(hub):
    t = uniq()
    c = await hub.connect(t, "alice")
    for i in range(128):
        await c.send({"type": "subscribe", "channel": "c:%d" % i, "id": i})
    for i in range(128):
        assert no_pos(await c.next()) == {"type": "subscribed", "channel": "c:%d" % i, "id": i}
    m = await c.request({"type": "subscribe", "channel": "c:128", "id": 128})
    assert is_error(m, "LIMIT_EXCEEDED", 128)
    # Already-held channels still confirm; freeing one makes room.
    await c.subscribe("c:5")
    assert (await c.request({"type": "unsubscribe", "channel": "c:0"}))["type"] == "unsubscribed"
    await c.subscribe("c:128")
    r = hub.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel="c:128", type="x")).result
    assert r.subscribers == 1
    assert (await c.next())["channel"] == "c:128"
