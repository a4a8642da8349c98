"""Redis mode when the Redis at LIVEHUB_REDIS_URL is (or becomes) a
read-only replica (review-redis): it takes the connection and the script
but refuses every write, so the node must not say it is ready, publishes
fail with UNAVAILABLE, and the node heals once the address is a primary
again (a failover).
"""

import grpc

import redistest
from hubtest import aio, hub_pb2, uniq


def publish_error(hub, tenant, channel):
    return hub.rpc_error("Publish", hub_pb2.PublishRequest(tenant_id=tenant, channel=channel,
                                                           type="n"))


@aio
async def test_a_replica_is_not_up_and_a_promotion_heals(redis):
    # A replica of a master that does not exist: read-only.
    redis.cli("REPLICAOF", "127.0.0.1", str(redistest.free_port()))
    c = redistest.cluster(1, redis)
    node = c[0]
    t, ch = uniq(), "job:" + uniq("j")
    redistest.wait_until(lambda: "not a primary" in node.stderr_text(), "ROLE seen")
    assert redistest.readyz(node) == 503
    err = publish_error(node, t, ch)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert "not a primary" in err.details(), err.details()
    redis.cli("REPLICAOF", "NO", "ONE")
    redistest.wait_until(lambda: redistest.readyz(node) == 200, "ready once a primary")
    r = node.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="n"))
    assert r.result.offset == 1


@aio
async def test_a_primary_that_becomes_a_replica_is_left(redis):
    c = redistest.cluster(1, redis)
    node = c[0]
    redistest.wait_until(lambda: redistest.readyz(node) == 200, "node ready")
    t, ch = uniq(), "job:" + uniq("j")
    a = await node.connect(t, "alice")
    await a.subscribe(ch)
    assert node.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch,
                                                      type="n")).result.offset == 1
    await a.next()
    # A failover demotes it while the node stays connected.
    redis.cli("REPLICAOF", "127.0.0.1", str(redistest.free_port()))
    err = publish_error(node, t, ch)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    redistest.wait_until(lambda: redistest.readyz(node) == 503, "not ready on a replica")
    redis.cli("REPLICAOF", "NO", "ONE")
    redistest.wait_until(lambda: redistest.readyz(node) == 200, "ready again")
    r = node.rpc("Publish", hub_pb2.PublishRequest(tenant_id=t, channel=ch, type="n"))
    assert r.result.offset == 2
    msg = await a.next()
    assert msg["offset"] == 2, msg
