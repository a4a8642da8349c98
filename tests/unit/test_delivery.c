/* Unit tests of the hub's delivery guarantees: send queue bounds in frames
 * and bytes, conflation per channel, channel history (size, TTL, byte cap),
 * recovery ranges and epochs, idempotent publishes and History reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "history.h"
#include "hub.h"
#include "idem.h"
#include "livehub.h"

struct fake {
	int wants, kills, code;
};

static void fake_want_write(void *tctx)
{
	((struct fake *)tctx)->wants++;
}

static void fake_kill(void *tctx, int code, const char *reason)
{
	(void)reason;
	struct fake *f = tctx;
	f->kills++;
	f->code = code;
}

static const struct hub_transport fake_tr = {fake_want_write, fake_kill};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Limits with no history and no idempotency unless a test sets them. */
static struct hub_limits base_limits(void)
{
	struct hub_limits lim;
	memset(&lim, 0, sizeof lim);
	lim.max_subs_per_conn = 16;
	lim.sendq_max_frames = 1000;
	lim.sendq_max_bytes = UINT64_MAX;
	lim.hist.max_bytes = UINT64_MAX;
	return lim;
}

static void make_pub(struct publication *p, const char *type, const char *ch0, const char *ch1,
                     const char *data)
{
	memset(p, 0, sizeof(*p));
	strcpy(p->tenant, "acme");
	snprintf(p->type, sizeof p->type, "%s", type);
	snprintf(p->channels[0], sizeof p->channels[0], "%s", ch0);
	p->nchannels = 1;
	if (ch1) {
		snprintf(p->channels[1], sizeof p->channels[1], "%s", ch1);
		p->nchannels = 2;
	}
	p->data = (char *)data;
	p->data_len = data ? strlen(data) : 0;
	p->ts_ms = now_ms();
}

/* Publishes one event of type on ch; returns its offset. */
static uint64_t pub(struct hub *h, const char *type, const char *ch, const char *data)
{
	struct publication p;
	make_pub(&p, type, ch, NULL, data);
	hub_publish(h, &p);
	assert_int_equal(p.status, 0);
	return p.pos[0].offset;
}

/* The offset and data of the i-th queued frame of c, parsed from its text. */
static uint64_t frame_offset(struct hub_conn *c, char *data, size_t n)
{
	struct frame *f = hub_conn_peek(c);
	assert_non_null(f);
	char buf[1024];
	assert_true(f->len < sizeof buf);
	memcpy(buf, frame_payload(f), f->len);
	buf[f->len] = '\0';
	const char *o = strstr(buf, "\"offset\":");
	assert_non_null(o);
	if (data) {
		const char *d = strstr(buf, "\"data\":");
		assert_non_null(d);
		snprintf(data, n, "%s", d + 7);
	}
	return strtoull(o + 9, NULL, 10);
}

static struct hub_stats_snapshot stats(struct hub *h)
{
	struct hub_stats_snapshot s;
	hub_stats_read(h, &s);
	return s;
}

static void drain(struct hub_conn *c)
{
	while (hub_conn_queued(c))
		hub_conn_pop(c);
}

/* ------------------------------------------------------------------------
 * Send queue bounds and conflation
 * ------------------------------------------------------------------------ */

static void test_byte_bound(void **state)
{
	(void)state;
	struct hub_limits lim = base_limits();
	lim.sendq_max_bytes = 300;
	struct hub *h = hub_new(&lim, &fake_tr);
	struct fake fs = {0}, ff = {0};
	struct hub_conn *slow = hub_conn_open(h, "acme", "s", &fs);
	struct hub_conn *fast = hub_conn_open(h, "acme", "f", &ff);
	assert_int_equal(hub_subscribe(h, slow, "c"), 0);
	assert_int_equal(hub_subscribe(h, fast, "c"), 0);
	char big[400];
	memset(big, 'x', sizeof big);
	strcpy(big, "{\"s\":\"");
	memset(big + 6, 'y', 350);
	strcpy(big + 356, "\"}");
	/* One frame over the bound alone still goes to an empty queue. */
	pub(h, "t", "c", big);
	assert_int_equal(fs.kills, 0);
	assert_int_equal(hub_conn_queued(slow), 1);
	drain(fast);
	/* A second one while the first is queued is over the bound. */
	pub(h, "t", "c", "{\"a\":1}");
	assert_int_equal(fs.kills, 1);
	assert_int_equal(fs.code, 4000);
	assert_int_equal(hub_conn_queued(slow), 0);
	assert_int_equal(ff.kills, 0);
	assert_int_equal(hub_conn_queued(fast), 1);
	struct hub_stats_snapshot s = stats(h);
	assert_int_equal(s.slow_consumers, 1);
	assert_int_equal(s.dropped, 1);
	/* Bytes are accounted on pop too: the fast one never hits the bound. */
	for (int i = 0; i < 50; i++) {
		pub(h, "t", "c", "{\"a\":1}");
		hub_conn_pop(fast);
	}
	assert_int_equal(ff.kills, 0);
	assert_int_equal(hub_conn_queued_bytes(fast), hub_conn_peek(fast)->len);
	hub_conn_close(h, slow);
	hub_conn_close(h, fast);
	hub_free(h);
}

static void test_conflation_per_channel(void **state)
{
	(void)state;
	struct hub_limits lim = base_limits();
	struct hub *h = hub_new(&lim, &fake_tr);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "u", &fk);
	assert_int_equal(hub_subscribe(h, c, "job:1"), 0);
	assert_int_equal(hub_subscribe(h, c, "project:p"), 0);
	char data[32];
	for (int i = 1; i <= 3; i++) {
		struct publication p;
		snprintf(data, sizeof data, "{\"progress\":%d}", i * 10);
		make_pub(&p, "job:progress", "job:1", "project:p", data);
		p.conflate_key = 99;
		hub_publish(h, &p);
		assert_int_equal(p.status, 0);
	}
	/* One frame per channel is left, each the newest. */
	assert_int_equal(hub_conn_queued(c), 2);
	assert_int_equal(stats(h).conflated, 4);
	char d[64];
	frame_offset(c, d, sizeof d);
	assert_string_equal(d, "{\"progress\":30}}");
	hub_conn_pop(c);
	frame_offset(c, d, sizeof d);
	assert_string_equal(d, "{\"progress\":30}}");
	hub_conn_pop(c);

	/* A replaced frame leaves its place: channel order stays offset order. */
	struct publication p;
	make_pub(&p, "job:progress", "job:1", NULL, "{\"progress\":40}");
	p.conflate_key = 99;
	hub_publish(h, &p);
	pub(h, "job:completed", "job:1", "{}");
	make_pub(&p, "job:progress", "job:1", NULL, "{\"progress\":100}");
	p.conflate_key = 99;
	hub_publish(h, &p);
	assert_int_equal(hub_conn_queued(c), 2);
	uint64_t a = frame_offset(c, NULL, 0);
	hub_conn_pop(c);
	uint64_t b = frame_offset(c, d, sizeof d);
	assert_true(a < b);
	assert_string_equal(d, "{\"progress\":100}}");
	/* Another job's progress is not conflated with this one. */
	make_pub(&p, "job:progress", "job:1", NULL, "{\"progress\":1}");
	p.conflate_key = 98;
	hub_publish(h, &p);
	assert_int_equal(hub_conn_queued(c), 2);
	hub_conn_close(h, c);
	hub_free(h);
}

/* A backlog of 3000 publications against a 400-frame bound: published in
 * steps that stop when the queue is half full, with the queue written
 * (emptied) between steps, the reader is never closed; all at once, it
 * is. */
static void test_publish_some_yields(void **state)
{
	(void)state;
	struct hub_limits lim = base_limits();
	lim.sendq_max_frames = 400;
	struct hub *h = hub_new(&lim, &fake_tr);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "u", &fk);
	assert_int_equal(hub_subscribe(h, c, "c"), 0);
	enum { N = 3000 };
	struct publication *ps = calloc(N, sizeof(*ps));
	for (int i = 0; i < N; i++) {
		make_pub(&ps[i], "t", "c", NULL, "{}");
		ps[i].next = i + 1 < N ? &ps[i + 1] : NULL;
	}
	struct publication *list = &ps[0];
	size_t done = 0, steps = 0, got = 0;
	while (list) {
		bool pressed;
		done += hub_publish_some(h, &list, SIZE_MAX, true, &pressed);
		steps++;
		assert_true(pressed || !list);
		assert_int_equal(fk.kills, 0);
		assert_true(hub_conn_queued(c) < 400);
		got += hub_conn_queued(c);
		drain(c);
	}
	assert_int_equal(done, N);
	assert_int_equal(got, N);
	assert_true(steps >= N / 200);
	/* A reader that does not write makes the drain yield once, not for
	 * every publication: the second step takes the rest of the budget. */
	for (int i = 0; i < 300; i++) {
		make_pub(&ps[i], "t", "c", NULL, "{}");
		ps[i].next = i + 1 < 300 ? &ps[i + 1] : NULL;
	}
	list = &ps[0];
	bool once;
	assert_int_equal(hub_publish_some(h, &list, SIZE_MAX, true, &once), 200);
	assert_true(once);
	assert_int_equal(hub_publish_some(h, &list, SIZE_MAX, true, &once), 100);
	assert_false(once);
	assert_int_equal(hub_conn_queued(c), 300);
	drain(c);
	/* The same backlog in one go overflows the reader's queue. */
	for (int i = 0; i < N; i++) {
		make_pub(&ps[i], "t", "c", NULL, "{}");
		ps[i].next = i + 1 < N ? &ps[i + 1] : NULL;
	}
	list = &ps[0];
	bool pressed;
	assert_int_equal(hub_publish_some(h, &list, SIZE_MAX, false, &pressed), N);
	assert_false(pressed);
	assert_int_equal(fk.kills, 1);
	assert_int_equal(fk.code, 4000);
	free(ps);
	hub_conn_close(h, c);
	hub_free(h);
}

/* ------------------------------------------------------------------------
 * History
 * ------------------------------------------------------------------------ */

static void test_parse_kinds(void **state)
{
	(void)state;
	struct hist_limits l = {.size = 100, .ttl_s = 300};
	char err[200];
	assert_int_equal(hist_parse_kinds("job:50/600,price:0,$user:20", &l, err, sizeof err), 0);
	assert_int_equal(l.nkinds, 3);
	uint32_t size, ttl;
	hist_kind_of(&l, "job:42", 6, &size, &ttl);
	assert_int_equal(size, 50);
	assert_int_equal(ttl, 600);
	hist_kind_of(&l, "price:x", 7, &size, &ttl);
	assert_int_equal(size, 0);
	hist_kind_of(&l, "$user:bob", 9, &size, &ttl);
	assert_int_equal(size, 20);
	assert_int_equal(ttl, 300);
	hist_kind_of(&l, "order:1", 7, &size, &ttl);
	assert_int_equal(size, 100);
	assert_int_equal(hist_parse_kinds("", &l, err, sizeof err), 0);
	assert_int_equal(l.nkinds, 0);
	const char *bad[] = {"job",    "job:",       "job:x",
	                     ":5",     "job:5/",     "job:5/x",
	                     "j\"b:5", "job:100001", "job:5/99999999999"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(hist_parse_kinds(bad[i], &l, err, sizeof err), LH_EINVAL);
}

static struct hub *history_hub(uint32_t size, uint32_t ttl_s, uint64_t max_bytes)
{
	struct hub_limits lim = base_limits();
	lim.hist.size = size;
	lim.hist.ttl_s = ttl_s;
	lim.hist.max_bytes = max_bytes;
	struct hub *h = hub_new(&lim, &fake_tr);
	assert_non_null(h);
	return h;
}

static void test_history_size(void **state)
{
	(void)state;
	struct hub *h = history_hub(3, 0, UINT64_MAX);
	for (int i = 0; i < 5; i++)
		pub(h, "t", "c", "{}");
	assert_int_equal(stats(h).history_entries, 3);
	/* Nobody was subscribed: the frames were built for the history. */
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "u", &fk);
	struct hub_since since = {.given = true, .offset = 2};
	struct hub_position pos;
	/* The epoch is the channel's: read it first. */
	assert_int_equal(hub_subscribe_since(h, c, "c", NULL, &pos), 0);
	assert_int_equal(pos.offset, 5);
	strcpy(since.epoch, pos.epoch);
	assert_int_equal(hub_subscribe_since(h, c, "c", &since, &pos), LH_EEXIST);
	assert_true(pos.recovered);
	assert_int_equal(pos.replay, 3);
	/* Offset 1 is gone: not recoverable. */
	since.offset = 1;
	assert_int_equal(hub_subscribe_since(h, c, "c", &since, &pos), LH_EEXIST);
	assert_false(pos.recovered);
	assert_int_equal(pos.replay, 0);
	assert_int_equal(stats(h).recoveries, 1);
	assert_int_equal(stats(h).recovery_misses, 1);
	hub_conn_close(h, c);
	hub_free(h);
}

static void test_history_ttl_and_epoch(void **state)
{
	(void)state;
	struct hub *h = history_hub(10, 60, UINT64_MAX);
	struct publication p;
	make_pub(&p, "t", "c", NULL, "{}");
	p.ts_ms = now_ms() - 120 * 1000; /* published two minutes ago */
	hub_publish(h, &p);
	char epoch[17];
	strcpy(epoch, p.pos[0].epoch);
	make_pub(&p, "t", "c", NULL, "{}");
	hub_publish(h, &p);
	/* The old entry went at the second publish. */
	assert_int_equal(stats(h).history_entries, 1);
	/* The sweep keeps a channel while it holds history: same epoch. */
	hub_sweep(h, now_ms(), 0);
	assert_int_equal(stats(h).channels, 1);
	make_pub(&p, "t", "c", NULL, "{}");
	hub_publish(h, &p);
	assert_string_equal(p.pos[0].epoch, epoch);
	assert_int_equal(p.pos[0].offset, 3);
	/* Once the history is past its TTL the channel goes, and comes back
	 * with a new epoch from offset 1. */
	hub_sweep(h, now_ms() + 61 * 1000, 0);
	assert_int_equal(stats(h).history_entries, 0);
	assert_int_equal(stats(h).channels, 0);
	make_pub(&p, "t", "c", NULL, "{}");
	hub_publish(h, &p);
	assert_int_equal(p.pos[0].offset, 1);
	assert_string_not_equal(p.pos[0].epoch, epoch);
	hub_free(h);
}

/* A channel's history part comes with its first publication and goes at the
 * sweep that finds its history empty, while the channel stays (subscribed):
 * offsets, epoch and recovery carry on across that. */
static void test_history_part_released(void **state)
{
	(void)state;
	struct hub *h = history_hub(10, 60, UINT64_MAX);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "u", &fk);
	struct hub_position pos;
	assert_int_equal(hub_subscribe_since(h, c, "c", NULL, &pos), 0);
	assert_int_equal(pos.offset, 0);
	char epoch[17];
	strcpy(epoch, pos.epoch);
	/* Nothing published yet: nothing missed, nothing to replay. */
	struct hub_since since = {.given = true, .offset = 0};
	strcpy(since.epoch, epoch);
	assert_int_equal(hub_subscribe_since(h, c, "c", &since, &pos), LH_EEXIST);
	assert_true(pos.recovered);
	assert_int_equal(pos.replay, 0);

	struct publication p;
	for (int i = 0; i < 2; i++) {
		make_pub(&p, "t", "c", NULL, "{}");
		p.ts_ms = now_ms() - 120 * 1000;
		hub_publish(h, &p);
	}
	drain(c);
	hub_sweep(h, now_ms(), 0); /* past the TTL: history emptied, part freed */
	assert_int_equal(stats(h).history_entries, 0);
	assert_int_equal(stats(h).channels, 3);

	make_pub(&p, "t", "c", NULL, "{}");
	hub_publish(h, &p);
	assert_int_equal(p.pos[0].offset, 3);
	assert_string_equal(p.pos[0].epoch, epoch);
	assert_int_equal(p.subscribers, 1);
	assert_int_equal(stats(h).history_entries, 1);
	since.offset = 2;
	assert_int_equal(hub_subscribe_since(h, c, "c", &since, &pos), LH_EEXIST);
	assert_true(pos.recovered);
	assert_int_equal(pos.replay, 1);
	since.offset = 1;
	assert_int_equal(hub_subscribe_since(h, c, "c", &since, &pos), LH_EEXIST);
	assert_false(pos.recovered);
	hub_conn_close(h, c);
	hub_free(h);
}

static void test_history_byte_cap(void **state)
{
	(void)state;
	struct hub *h = history_hub(100, 0, 0);
	/* Learn what one entry costs, then cap the pool at three of them. */
	hub_free(h);
	h = history_hub(100, 0, UINT64_MAX);
	pub(h, "t", "a", "{}");
	uint64_t one = stats(h).history_bytes;
	assert_true(one > 0);
	hub_free(h);
	h = history_hub(100, 0, 3 * one);
	pub(h, "t", "a", "{}");
	pub(h, "t", "b", "{}");
	pub(h, "t", "a", "{}");
	pub(h, "t", "b", "{}");
	pub(h, "t", "b", "{}");
	/* The oldest entries of the process went first, whatever the channel. */
	struct hub_stats_snapshot s = stats(h);
	assert_int_equal(s.history_entries, 3);
	assert_int_equal(s.history_bytes, 3 * one);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "u", &fk);
	struct hub_position pos;
	assert_int_equal(hub_subscribe_since(h, c, "a", NULL, &pos), 0);
	struct hub_since since = {.given = true, .offset = 1};
	strcpy(since.epoch, pos.epoch);
	/* a: offset 1 evicted, 2 held. */
	assert_int_equal(hub_subscribe_since(h, c, "a", &since, &pos), LH_EEXIST);
	assert_true(pos.recovered);
	assert_int_equal(pos.replay, 1);
	since.offset = 0;
	assert_int_equal(hub_subscribe_since(h, c, "a", &since, &pos), LH_EEXIST);
	assert_false(pos.recovered);
	hub_conn_close(h, c);
	hub_free(h);
}

/* A recovery queues the reply's successors in order: exactly the missed
 * publications, then live ones. */
static void test_replay(void **state)
{
	(void)state;
	struct hub *h = history_hub(100, 0, UINT64_MAX);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "u", &fk);
	struct hub_position pos;
	assert_int_equal(hub_subscribe_since(h, c, "job:7", NULL, &pos), 0);
	assert_int_equal(pos.offset, 0);
	assert_false(pos.recovered);
	char epoch[17];
	strcpy(epoch, pos.epoch);
	pub(h, "t", "job:7", "{\"n\":1}");
	pub(h, "t", "job:7", "{\"n\":2}");
	drain(c);
	assert_int_equal(hub_unsubscribe(h, c, "job:7"), 0);
	for (int i = 3; i <= 7; i++) {
		char d[16];
		snprintf(d, sizeof d, "{\"n\":%d}", i);
		pub(h, "t", "job:7", d);
	}
	struct hub_since since = {.given = true, .offset = 2};
	strcpy(since.epoch, epoch);
	assert_int_equal(hub_subscribe_since(h, c, "job:7", &since, &pos), 0);
	assert_true(pos.recovered);
	assert_int_equal(pos.offset, 7);
	assert_int_equal(pos.replay, 5);
	hub_replay(h, c, &pos);
	pub(h, "t", "job:7", "{\"n\":8}");
	assert_int_equal(hub_conn_queued(c), 6);
	for (uint64_t want = 3; want <= 8; want++) {
		assert_int_equal(frame_offset(c, NULL, 0), want);
		hub_conn_pop(c);
	}
	/* Up to date: recovered with nothing to replay. */
	since.offset = 8;
	assert_int_equal(hub_subscribe_since(h, c, "job:7", &since, &pos), LH_EEXIST);
	assert_true(pos.recovered);
	assert_int_equal(pos.replay, 0);
	/* A wrong epoch, or an offset from the future: not recovered. */
	since.offset = 5;
	strcpy(since.epoch, "0000000000000000");
	assert_int_equal(hub_subscribe_since(h, c, "job:7", &since, &pos), LH_EEXIST);
	assert_false(pos.recovered);
	strcpy(since.epoch, epoch);
	since.offset = 9;
	assert_int_equal(hub_subscribe_since(h, c, "job:7", &since, &pos), LH_EEXIST);
	assert_false(pos.recovered);
	hub_conn_close(h, c);
	hub_free(h);
}

static void test_implicit_recovery(void **state)
{
	(void)state;
	struct hub *h = history_hub(100, 0, UINT64_MAX);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "alice", &fk);
	pub(h, "t", "$tenant", "{}");
	pub(h, "t", "$user:alice", "{}");
	pub(h, "t", "$user:alice", "{}");
	drain(c);
	struct hub_position pos;
	assert_int_equal(hub_subscribe_since(h, c, "$tenant", NULL, &pos), 0);
	assert_int_equal(pos.offset, 1);
	struct hub_since since = {.given = true, .offset = 0};
	strcpy(since.epoch, pos.epoch);
	assert_int_equal(hub_subscribe_since(h, c, "$tenant", &since, &pos), 0);
	assert_true(pos.recovered);
	assert_int_equal(pos.replay, 1);
	assert_int_equal(hub_subscribe_since(h, c, "$user", NULL, &pos), 0);
	assert_int_equal(pos.offset, 2);
	assert_int_equal(hub_subscribe_since(h, c, "$user:alice", NULL, &pos), 0);
	assert_int_equal(pos.offset, 2);
	assert_int_equal(hub_subscribe_since(h, c, "$user:bob", NULL, &pos), LH_EINVAL);
	assert_int_equal(hub_subscribe_since(h, c, "$other", NULL, &pos), LH_EINVAL);
	/* Recovery does not subscribe anything. */
	assert_int_equal(stats(h).subscriptions, 0);
	hub_conn_close(h, c);
	hub_free(h);
}

static int history_done;
static void on_history(struct publication *p)
{
	(void)p;
	history_done++;
}

static void test_history_read(void **state)
{
	(void)state;
	struct hub *h = history_hub(100, 0, UINT64_MAX);
	for (int i = 1; i <= 5; i++) {
		char d[16];
		snprintf(d, sizeof d, "{\"n\":%d}", i);
		pub(h, i == 3 ? "other:type" : "t", "job:9", d);
	}
	struct publication p;
	make_pub(&p, "t", "job:9", NULL, NULL);
	p.kind = PUB_HISTORY;
	p.hist_limit = 2;
	p.on_done = on_history;
	hub_publish(h, &p);
	assert_int_equal(history_done, 1);
	assert_int_equal(p.status, 0);
	struct hub_history_result *r = p.history;
	assert_non_null(r);
	assert_int_equal(r->offset, 5);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->items[0].offset, 4);
	assert_string_equal(r->items[0].data, "{\"n\":4}");
	assert_string_equal(r->items[0].type, "t");
	assert_false(r->recovered);
	char epoch[17];
	strcpy(epoch, r->epoch);
	hub_history_free(r);

	/* With since: the oldest after it, up to the limit. */
	p.hist_has_since = true;
	p.hist_since_offset = 1;
	strcpy(p.hist_since_epoch, epoch);
	hub_publish(h, &p);
	r = p.history;
	assert_true(r->recovered);
	assert_int_equal(r->n, 2);
	assert_int_equal(r->items[0].offset, 2);
	assert_int_equal(r->items[1].offset, 3);
	assert_string_equal(r->items[1].type, "other:type");
	hub_history_free(r);

	/* A channel that does not exist: empty, no epoch. */
	strcpy(p.channels[0], "job:none");
	hub_publish(h, &p);
	r = p.history;
	assert_int_equal(r->n, 0);
	assert_string_equal(r->epoch, "");
	hub_history_free(r);
	assert_int_equal(stats(h).channels, 1);
	hub_free(h);
}

/* ------------------------------------------------------------------------
 * Idempotency
 * ------------------------------------------------------------------------ */

static void test_idempotent_publish(void **state)
{
	(void)state;
	struct hub_limits lim = base_limits();
	lim.idem_window_s = 300;
	lim.idem_max = 2;
	struct hub *h = hub_new(&lim, &fake_tr);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "u", &fk);
	assert_int_equal(hub_subscribe(h, c, "c"), 0);
	struct publication p;
	make_pub(&p, "t", "c", NULL, "{}");
	strcpy(p.idem_key, "k1");
	hub_publish(h, &p);
	assert_false(p.duplicate);
	uint64_t first = p.pos[0].offset;
	make_pub(&p, "t", "c", NULL, "{}");
	p.ts_ms += 1000; /* a retry, later: the time is not compared */
	strcpy(p.idem_key, "k1");
	hub_publish(h, &p);
	assert_int_equal(p.status, 0);
	assert_true(p.duplicate);
	assert_int_equal(p.pos[0].offset, first);
	assert_int_equal(p.subscribers, 1);
	assert_int_equal(hub_conn_queued(c), 1);
	assert_int_equal(stats(h).deduplicated, 1);
	/* The key used for something else (data, type or channel): refused,
	 * nothing published. */
	static const char *const other[][3] = {
	        {"t", "c", "{\"other\":1}"}, {"u", "c", "{}"}, {"t", "d", "{}"}};
	for (int i = 0; i < 3; i++) {
		make_pub(&p, other[i][0], other[i][1], NULL, other[i][2]);
		strcpy(p.idem_key, "k1");
		hub_publish(h, &p);
		assert_int_equal(p.status, LH_EEXIST);
		assert_false(p.duplicate);
	}
	assert_int_equal(hub_conn_queued(c), 1);
	/* Another tenant's key of the same name is its own. */
	make_pub(&p, "t", "c", NULL, "{}");
	strcpy(p.tenant, "beta");
	strcpy(p.idem_key, "k1");
	hub_publish(h, &p);
	assert_false(p.duplicate);
	/* Past the count bound the oldest key is forgotten. */
	make_pub(&p, "t", "c", NULL, "{}");
	strcpy(p.idem_key, "k2");
	hub_publish(h, &p);
	make_pub(&p, "t", "c", NULL, "{}");
	strcpy(p.idem_key, "k1");
	hub_publish(h, &p);
	assert_false(p.duplicate);
	assert_int_equal(stats(h).idempotency_keys, 2);
	/* An invalid publication is not remembered. */
	make_pub(&p, "t", "c", NULL, "{}");
	strcpy(p.channels[0], "bad channel");
	strcpy(p.idem_key, "k3");
	hub_publish(h, &p);
	assert_int_equal(p.status, LH_EINVAL);
	make_pub(&p, "t", "c", NULL, "{}");
	strcpy(p.idem_key, "k3");
	hub_publish(h, &p);
	assert_false(p.duplicate);
	hub_conn_close(h, c);
	hub_free(h);
}

static void test_idem_window(void **state)
{
	(void)state;
	struct idem *t = idem_new(1);
	struct idem_result r = {.nchannels = 1, .subscribers = 3};
	r.pos[0].offset = 9;
	assert_int_equal(idem_put(t, "acme", "k", &r, 1000, 10), 0);
	assert_non_null(idem_get(t, "acme", "k", 1000));
	assert_null(idem_get(t, "acme", "k", 1001)); /* outside the window */
	/* Recording the key again replaces it (the old entry is not found). */
	r.pos[0].offset = 10;
	assert_int_equal(idem_put(t, "acme", "k", &r, 2000, 10), 0);
	assert_int_equal(idem_get(t, "acme", "k", 1500)->pos[0].offset, 10);
	idem_expire(t, 1500); /* drops the replaced entry, not the new one */
	assert_non_null(idem_get(t, "acme", "k", 1500));
	idem_expire(t, 2001);
	assert_null(idem_get(t, "acme", "k", 0));
	assert_int_equal(idem_count(t), 0);
	idem_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_byte_bound),
	        cmocka_unit_test(test_conflation_per_channel),
	        cmocka_unit_test(test_publish_some_yields),
	        cmocka_unit_test(test_parse_kinds),
	        cmocka_unit_test(test_history_size),
	        cmocka_unit_test(test_history_ttl_and_epoch),
	        cmocka_unit_test(test_history_part_released),
	        cmocka_unit_test(test_history_byte_cap),
	        cmocka_unit_test(test_replay),
	        cmocka_unit_test(test_implicit_recovery),
	        cmocka_unit_test(test_history_read),
	        cmocka_unit_test(test_idempotent_publish),
	        cmocka_unit_test(test_idem_window),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
