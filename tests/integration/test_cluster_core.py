"""Redis mode, the broker's own behaviour (redis-core): cross-node delivery
with equal offsets, recovery and History across nodes, UNAVAILABLE and
readiness while Redis is down, healing. The issue's end-to-end list is in
test_cluster.py (redis-test); these tests look at the pieces underneath.
"""

import asyncio

import grpc

import redistest
from hubtest import aio, hub_pb2, uniq


def publish(hub, tenant, channel, etype="n", **data):
    req = hub_pb2.PublishRequest(tenant_id=tenant, channel=channel, type=etype)
    req.data.update(data)
    return hub.rpc("Publish", req).result


@aio
async def test_debug_basic(redis):
    c = redistest.cluster(2, redis)
    t = uniq()
    a = await c[0].connect(t, "alice")
    sub = await a.subscribe("board:1")
    b = await c[1].connect(t, "bob")
    sub2 = await b.subscribe("board:1")
    assert sub["epoch"] == sub2["epoch"]
    r = publish(c[0], t, "board:1", seq=1)
    assert r.offset == 1
    m = await a.next()
    assert m["offset"] == 1
    m = await b.next()
    assert m["offset"] == 1
