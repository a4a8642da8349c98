"""Redis mode: what a client claims in `since` is checked against Redis
(review-redis). A client ahead of this node is believed only up to the
channel's top in Redis: a claim past it gets `recovered: false`, and the
events that come afterwards reach it like any subscriber.
"""

import hubtest
import redistest
from hubtest import aio, check_event, uniq


def publish(hub, tenant, channel, etype="n", **data):
    return hubtest.publish(hub, tenant, channel, etype, **data)


@aio
async def test_a_since_past_the_top_in_redis_is_not_recovered(redis):
    c = redistest.cluster(1, redis)
    node = c[0]
    redistest.wait_until(lambda: redistest.readyz(node) == 200, "node ready")
    t, ch = uniq(), "job:" + uniq("j")
    a = await node.connect(t, "alice")
    await a.subscribe(ch)
    r1 = publish(node, t, ch, seq=1)
    check_event(await a.next(), "n", ch, r1.channels[0], {"seq": 1})
    b = await node.connect(t, "bob")
    m = await b.request({"type": "subscribe", "channel": ch,
                         "since": {"offset": 1000000, "epoch": r1.epoch}})
    assert (m["offset"], m["epoch"], m["recovered"]) == (1, r1.epoch, False), m
    # Bob was not told he is at 1000000: the next event reaches him.
    r2 = publish(node, t, ch, seq=2)
    check_event(await b.next(), "n", ch, r2.channels[0], {"seq": 2})
    check_event(await a.next(), "n", ch, r2.channels[0], {"seq": 2})


@aio
async def test_a_subscribe_undone_before_its_reply_is_still_answered(redis):
    c = redistest.cluster(1, redis)
    node = c[0]
    redistest.wait_until(lambda: redistest.readyz(node) == 200, "node ready")
    t = uniq()
    a = await node.connect(t, "alice")
    for k in range(5):
        ch = "job:" + uniq("j")
        # The first subscriber: the reply waits for Redis, and the
        # unsubscribe (the last one) comes meanwhile.
        await a.send({"type": "subscribe", "channel": ch, "id": 10 * k + 1})
        await a.send({"type": "unsubscribe", "channel": ch, "id": 10 * k + 2})
        got = [await a.next(), await a.next()]
        assert sorted((m["type"], m.get("id")) for m in got) == [
            ("subscribed", 10 * k + 1), ("unsubscribed", 10 * k + 2)], got
