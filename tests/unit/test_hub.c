/* Unit tests of the hub (channels, subscriptions, send queues, stats) and
 * of the dict it keys channels with. A fake transport records the calls. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "dict.h"
#include "hub.h"
#include "livehub.h"

/* ------------------------------------------------------------------------
 * Fixtures
 * ------------------------------------------------------------------------ */

struct fake {
	int wants;
	int kills;
	int code;
	char reason[32];
};

static void fake_want_write(void *tctx)
{
	((struct fake *)tctx)->wants++;
}

static void fake_kill(void *tctx, int code, const char *reason)
{
	struct fake *f = tctx;
	f->kills++;
	f->code = code;
	snprintf(f->reason, sizeof(f->reason), "%s", reason);
}

static const struct hub_transport fake_tr = {fake_want_write, fake_kill};

static struct hub *new_hub(uint32_t max_subs, uint32_t max_frames)
{
	struct hub_limits lim = {.max_subs_per_conn = max_subs,
	                         .sendq_max_frames = max_frames,
	                         .sendq_max_bytes = UINT64_MAX};
	struct hub *h = hub_new(&lim, &fake_tr);
	assert_non_null(h);
	return h;
}

static int done_calls;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_done(struct publication *p)
{
	(void)p;
	done_calls++;
}

/* Fills p for a publication of type on one or two channels of tenant. */
static void make_pub(struct publication *p, const char *tenant, const char *type, const char *ch0,
                     const char *ch1, const char *data)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->tenant, sizeof(p->tenant), "%s", tenant);
	snprintf(p->type, sizeof(p->type), "%s", type);
	snprintf(p->channels[0], sizeof(p->channels[0]), "%s", ch0);
	p->nchannels = 1;
	if (ch1) {
		snprintf(p->channels[1], sizeof(p->channels[1]), "%s", ch1);
		p->nchannels = 2;
	}
	p->data = (char *)data;
	p->data_len = data ? strlen(data) : 0;
	p->ts_ms = now_ms();
	p->on_done = on_done;
}

/* Publishes and returns p->status. */
static int publish(struct hub *h, struct publication *p, const char *tenant, const char *ch,
                   const char *data)
{
	make_pub(p, tenant, "test:event", ch, NULL, data);
	int before = done_calls;
	hub_publish(h, p);
	assert_int_equal(done_calls, before + 1);
	return p->status;
}

/* The payload of c's oldest queued frame as a NUL-terminated copy in buf. */
static const char *head_text(struct hub_conn *c, char *buf, size_t size)
{
	struct frame *f = hub_conn_peek(c);
	assert_non_null(f);
	assert_true(f->len < size);
	memcpy(buf, frame_payload(f), f->len);
	buf[f->len] = '\0';
	return buf;
}

static void drain(struct hub_conn *c)
{
	while (hub_conn_queued(c))
		hub_conn_pop(c);
}

static struct hub_stats_snapshot stats(struct hub *h)
{
	struct hub_stats_snapshot s;
	hub_stats_read(h, &s);
	return s;
}

/* ------------------------------------------------------------------------
 * Subscriptions
 * ------------------------------------------------------------------------ */

static void test_subscribe_codes(void **state)
{
	struct hub *h = new_hub(3, 16);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "alice", &fk);
	assert_non_null(c);

	assert_int_equal(hub_subscribe(h, c, "job:1"), 0);
	assert_int_equal(hub_subscribe(h, c, "job:1"), LH_EEXIST);
	assert_int_equal(stats(h).subscriptions, 1);
	assert_int_equal(hub_unsubscribe(h, c, "job:1"), 0);
	assert_int_equal(hub_unsubscribe(h, c, "job:1"), LH_ENOENT);
	assert_int_equal(hub_unsubscribe(h, c, "never:seen"), LH_ENOENT);
	assert_int_equal(stats(h).subscriptions, 0);

	/* Reserved and malformed names. */
	assert_int_equal(hub_subscribe(h, c, "$tenant"), LH_EINVAL);
	assert_int_equal(hub_subscribe(h, c, "$user:alice"), LH_EINVAL);
	assert_int_equal(hub_subscribe(h, c, "$user:bob"), LH_EINVAL);
	assert_int_equal(hub_subscribe(h, c, ""), LH_EINVAL);
	assert_int_equal(hub_subscribe(h, c, "a b"), LH_EINVAL);
	assert_int_equal(hub_subscribe(h, c,
	                               "a\x1f"
	                               "b"),
	                 LH_EINVAL);
	assert_int_equal(hub_unsubscribe(h, c, "$tenant"), LH_EINVAL);
	char longname[LH_CHANNEL_MAX + 2];
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(hub_subscribe(h, c, longname), LH_EINVAL);
	longname[LH_CHANNEL_MAX] = '\0';
	assert_int_equal(hub_subscribe(h, c, longname), 0);

	/* The limit counts explicit subscriptions only. */
	assert_int_equal(hub_subscribe(h, c, "b"), 0);
	assert_int_equal(hub_subscribe(h, c, "c"), 0);
	uint64_t nch = stats(h).channels;
	assert_int_equal(hub_subscribe(h, c, "d"), LH_ELIMIT);
	assert_int_equal(stats(h).channels, nch); /* nothing created */
	assert_int_equal(hub_subscribe(h, c, "c"), LH_EEXIST);
	assert_int_equal(hub_unsubscribe(h, c, "b"), 0);
	assert_int_equal(hub_subscribe(h, c, "d"), 0);
	assert_int_equal(stats(h).subscriptions, 3);

	hub_conn_close(h, c);
	assert_int_equal(stats(h).subscriptions, 0);
	hub_free(h);
}

static void test_accessors_and_ids(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *a = hub_conn_open(h, "acme", "alice@x.io", &fk);
	struct hub_conn *b = hub_conn_open(h, "acme", "bob", &fk);
	assert_non_null(a);
	assert_non_null(b);
	assert_string_equal(hub_conn_tenant(a), "acme");
	assert_string_equal(hub_conn_user(a), "alice@x.io");
	assert_string_equal(hub_conn_user(b), "bob");

	char ba[HUB_CONN_ID_MAX], bb[HUB_CONN_ID_MAX];
	const char *ia = hub_conn_id(a, ba), *ib = hub_conn_id(b, bb);
	assert_string_not_equal(ia, ib);
	/* "c" and 7 hex digits fixed per hub, '-', a counter. */
	assert_int_equal(ia[0], 'c');
	assert_int_equal(ia[8], '-');
	assert_int_equal(strncmp(ia, ib, 9), 0);
	for (int i = 1; i < 8; i++)
		assert_non_null(strchr("0123456789abcdef", ia[i]));

	/* Bad names are refused. */
	assert_null(hub_conn_open(h, "ac me", "x", &fk));
	assert_null(hub_conn_open(h, "acme", "", &fk));

	hub_conn_close(h, a);
	hub_conn_close(h, b);
	hub_free(h);
}

/* Closing connections takes them off every channel and zeroes the gauges;
 * channels that carried a publication wait for the sweep, the others go at
 * once. */
static void test_close_cleanup(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *c[4];
	c[0] = hub_conn_open(h, "acme", "alice", &fk);
	c[1] = hub_conn_open(h, "acme", "alice", &fk);
	c[2] = hub_conn_open(h, "acme", "bob", &fk);
	c[3] = hub_conn_open(h, "globex", "alice", &fk);
	for (int i = 0; i < 4; i++) {
		assert_non_null(c[i]);
		assert_int_equal(hub_subscribe(h, c[i], "job:1"), 0);
		assert_int_equal(hub_subscribe(h, c[i], i % 2 ? "odd" : "even"), 0);
	}
	struct hub_stats_snapshot s = stats(h);
	assert_int_equal(s.connections, 4);
	assert_int_equal(s.connections_total, 4);
	assert_int_equal(s.users, 3);
	assert_int_equal(s.tenants, 2);
	assert_int_equal(s.subscriptions, 8);
	/* acme: $tenant $user:alice $user:bob job:1 odd even; globex: $tenant
	 * $user:alice job:1 odd. */
	assert_int_equal(s.channels, 10);
	/* job:1 of acme carries a publication: it outlives its subscribers. */
	struct publication p;
	assert_int_equal(publish(h, &p, "acme", "job:1", NULL), 0);
	assert_int_equal(p.subscribers, 3);

	hub_conn_close(h, c[1]);
	s = stats(h);
	assert_int_equal(s.users, 3);
	hub_conn_close(h, c[0]);
	hub_conn_close(h, c[3]);
	hub_conn_close(h, c[2]);
	s = stats(h);
	assert_int_equal(s.connections, 0);
	assert_int_equal(s.connections_total, 4);
	assert_int_equal(s.users, 0);
	assert_int_equal(s.tenants, 0);
	assert_int_equal(s.subscriptions, 0);
	assert_int_equal(s.channels, 1);

	/* A publication reaches nobody now, and continues the offsets. */
	assert_int_equal(publish(h, &p, "acme", "job:1", NULL), 0);
	assert_int_equal(p.subscribers, 0);
	assert_int_equal(p.pos[0].offset, 2);

	hub_sweep(h, p.ts_ms + 1000, 60000); /* recent: kept */
	assert_int_equal(stats(h).channels, 1);
	hub_sweep(h, INT64_MAX / 2, 60000);
	assert_int_equal(stats(h).channels, 0);
	hub_free(h);
}

/* ------------------------------------------------------------------------
 * Routing
 * ------------------------------------------------------------------------ */

static void test_implicit_channels(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *d1 = hub_conn_open(h, "acme", "alice", &fk);
	struct hub_conn *d2 = hub_conn_open(h, "acme", "alice", &fk);
	struct hub_conn *bob = hub_conn_open(h, "acme", "bob", &fk);
	struct hub_conn *other = hub_conn_open(h, "globex", "alice", &fk);
	struct publication p;
	char buf[512];

	assert_int_equal(publish(h, &p, "acme", "$user:alice", "{\"n\":1}"), 0);
	assert_int_equal(p.subscribers, 2);
	assert_int_equal(p.pos[0].subscribers, 2);
	assert_int_equal(hub_conn_queued(d1), 1);
	assert_int_equal(hub_conn_queued(d2), 1);
	assert_int_equal(hub_conn_queued(bob), 0);
	assert_int_equal(hub_conn_queued(other), 0);
	assert_non_null(strstr(head_text(d1, buf, sizeof(buf)), "\"channel\":\"$user:alice\""));

	assert_int_equal(publish(h, &p, "acme", "$tenant", NULL), 0);
	assert_int_equal(p.subscribers, 3);
	assert_int_equal(hub_conn_queued(bob), 1);
	assert_int_equal(hub_conn_queued(other), 0);
	assert_int_equal(stats(h).subscriptions, 0);

	assert_int_equal(publish(h, &p, "globex", "$tenant", NULL), 0);
	assert_int_equal(p.subscribers, 1);
	assert_int_equal(hub_conn_queued(other), 1);

	hub_conn_close(h, d1);
	hub_conn_close(h, d2);
	hub_conn_close(h, bob);
	hub_conn_close(h, other);
	hub_free(h);
}

/* The per-user and per-tenant counts the connection limits read. */
static void test_conn_counts(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	assert_int_equal(hub_tenant_conns(h, "acme"), 0);
	assert_int_equal(hub_user_conns(h, "acme", "alice"), 0);
	struct hub_conn *d1 = hub_conn_open(h, "acme", "alice", &fk);
	struct hub_conn *d2 = hub_conn_open(h, "acme", "alice", &fk);
	struct hub_conn *bob = hub_conn_open(h, "acme", "bob", &fk);
	struct hub_conn *other = hub_conn_open(h, "globex", "alice", &fk);
	assert_int_equal(hub_tenant_conns(h, "acme"), 3);
	assert_int_equal(hub_tenant_conns(h, "globex"), 1);
	assert_int_equal(hub_user_conns(h, "acme", "alice"), 2);
	assert_int_equal(hub_user_conns(h, "acme", "bob"), 1);
	assert_int_equal(hub_user_conns(h, "globex", "alice"), 1);
	assert_int_equal(hub_user_conns(h, "globex", "bob"), 0);
	/* Invalid names count nothing (and never reach another key). */
	assert_int_equal(hub_tenant_conns(h, "acme\x1f$tenant"), 0);
	assert_int_equal(hub_user_conns(h, "acme", "al ice"), 0);
	hub_conn_close(h, d1);
	assert_int_equal(hub_user_conns(h, "acme", "alice"), 1);
	assert_int_equal(hub_tenant_conns(h, "acme"), 2);
	hub_conn_close(h, d2);
	hub_conn_close(h, bob);
	hub_conn_close(h, other);
	assert_int_equal(hub_tenant_conns(h, "acme"), 0);
	hub_free(h);
}

static void test_tenant_isolation(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *a = hub_conn_open(h, "acme", "u1", &fk);
	struct hub_conn *g = hub_conn_open(h, "globex", "u1", &fk);
	assert_int_equal(hub_subscribe(h, a, "job:42"), 0);
	assert_int_equal(hub_subscribe(h, g, "job:42"), 0);

	struct publication p;
	assert_int_equal(publish(h, &p, "acme", "job:42", NULL), 0);
	assert_int_equal(p.subscribers, 1);
	assert_int_equal(hub_conn_queued(a), 1);
	assert_int_equal(hub_conn_queued(g), 0);
	/* Each tenant's channel counts its own offsets. */
	assert_int_equal(publish(h, &p, "globex", "job:42", NULL), 0);
	assert_int_equal(p.pos[0].offset, 1);
	assert_int_equal(hub_conn_queued(a), 1);
	assert_int_equal(hub_conn_queued(g), 1);

	hub_conn_close(h, a);
	hub_conn_close(h, g);
	hub_free(h);
}

static void test_publish_validation(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct publication p;
	make_pub(&p, "acme", "bad type", "job:1", NULL, NULL);
	done_calls = 0;
	hub_publish(h, &p);
	assert_int_equal(p.status, LH_EINVAL);
	assert_int_equal(done_calls, 1);
	assert_int_equal(publish(h, &p, "ac/me", "job:1", NULL), LH_EINVAL);
	assert_int_equal(publish(h, &p, "acme", "job 1", NULL), LH_EINVAL);
	assert_int_equal(publish(h, &p, "acme", "$", NULL), LH_EINVAL);
	make_pub(&p, "acme", "t", "job:1", NULL, NULL);
	p.nchannels = 0;
	hub_publish(h, &p);
	assert_int_equal(p.status, LH_EINVAL);
	/* Nothing was created by the failures. */
	assert_int_equal(stats(h).channels, 0);
	assert_int_equal(stats(h).messages_published, 0);
	/* Reserved channels are fine for publishers; on_done may be NULL. */
	make_pub(&p, "acme", "t", "$user:zed", NULL, NULL);
	p.on_done = NULL;
	hub_publish(h, &p);
	assert_int_equal(p.status, 0);
	assert_int_equal(p.pos[0].offset, 1);
	hub_free(h);
}

/* ------------------------------------------------------------------------
 * Offsets, epochs and frames
 * ------------------------------------------------------------------------ */

static void test_offsets(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "alice", &fk);
	assert_int_equal(hub_subscribe(h, c, "a"), 0);
	struct publication p;
	for (uint64_t i = 1; i <= 3; i++) {
		assert_int_equal(publish(h, &p, "acme", "a", NULL), 0);
		assert_int_equal(p.pos[0].offset, i);
	}
	assert_int_equal(publish(h, &p, "acme", "b", NULL), 0);
	assert_int_equal(p.pos[0].offset, 1);
	assert_int_equal(p.pos[0].subscribers, 0);

	/* Two channels in one publication: each gets its own offset and frame. */
	make_pub(&p, "acme", "t", "a", "b", NULL);
	hub_publish(h, &p);
	assert_int_equal(p.status, 0);
	assert_int_equal(p.pos[0].offset, 4);
	assert_int_equal(p.pos[1].offset, 2);
	assert_int_equal(p.subscribers, 1);
	assert_string_not_equal(p.pos[0].epoch, p.pos[1].epoch);
	assert_int_equal(strlen(p.pos[0].epoch), 16);
	assert_int_equal(hub_conn_queued(c), 4);

	/* Losing the last subscriber does not reset the channel. */
	assert_int_equal(hub_unsubscribe(h, c, "a"), 0);
	char epoch[17];
	memcpy(epoch, p.pos[0].epoch, sizeof(epoch));
	hub_sweep(h, p.ts_ms + 1000, 60000);
	assert_int_equal(publish(h, &p, "acme", "a", NULL), 0);
	assert_int_equal(p.pos[0].offset, 5);
	assert_string_equal(p.pos[0].epoch, epoch);

	hub_conn_close(h, c);
	hub_free(h);
}

static void test_frame_bytes(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "alice", &fk);
	assert_int_equal(hub_subscribe(h, c, "job:42"), 0);
	struct publication p;
	char buf[512], want[512];

	make_pub(&p, "acme", "test:event", "job:42", NULL,
	         "{\"progress\":40,\"msg\":\"a \\\"b\\\"\"}");
	p.ts_ms = 1763719200123;
	hub_publish(h, &p);
	assert_int_equal(p.status, 0);
	snprintf(want, sizeof(want),
	         "{\"type\":\"test:event\",\"channel\":\"job:42\",\"offset\":1,\"epoch\":\"%s\","
	         "\"ts\":1763719200123,\"data\":{\"progress\":40,\"msg\":\"a \\\"b\\\"\"}}",
	         p.pos[0].epoch);
	assert_string_equal(head_text(c, buf, sizeof(buf)), want);
	for (int i = 0; i < 16; i++)
		assert_non_null(strchr("0123456789abcdef", p.pos[0].epoch[i]));
	hub_conn_pop(c);

	/* No data is an empty object; a negative time prints as such. */
	make_pub(&p, "acme", "job:progress", "job:42", NULL, NULL);
	p.ts_ms = -5;
	p.conflate_key = 77;
	hub_publish(h, &p);
	snprintf(want, sizeof(want),
	         "{\"type\":\"job:progress\",\"channel\":\"job:42\",\"offset\":2,\"epoch\":\"%s\","
	         "\"ts\":-5,\"data\":{}}",
	         p.pos[0].epoch);
	assert_string_equal(head_text(c, buf, sizeof(buf)), want);
	/* The key is the publication's, mixed with the channel: never 0. */
	assert_true(hub_conn_peek(c)->key != 0);

	hub_conn_close(h, c);
	hub_free(h);
}

/* Every subscriber holds a reference to one and the same frame. */
static void test_shared_frame(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *c[3];
	for (int i = 0; i < 3; i++) {
		c[i] = hub_conn_open(h, "acme", "u", &fk);
		assert_int_equal(hub_subscribe(h, c[i], "x"), 0);
	}
	struct publication p;
	assert_int_equal(publish(h, &p, "acme", "x", NULL), 0);
	assert_int_equal(p.subscribers, 3);
	struct frame *f = hub_conn_peek(c[0]);
	assert_ptr_equal(hub_conn_peek(c[1]), f);
	assert_ptr_equal(hub_conn_peek(c[2]), f);
	assert_int_equal(f->refs, 3);
	hub_conn_pop(c[0]);
	assert_int_equal(f->refs, 2);
	hub_conn_close(h, c[1]); /* close drops its reference */
	assert_int_equal(f->refs, 1);
	hub_conn_pop(c[2]);
	hub_conn_close(h, c[0]);
	hub_conn_close(h, c[2]);
	hub_free(h);
}

/* Queues the NUL-terminated text as a frame on c. */
static void send_text(struct hub *h, struct hub_conn *c, const char *text)
{
	struct frame *f = frame_from(text, strlen(text));
	assert_non_null(f);
	assert_int_equal(hub_conn_send(h, c, f), 0);
	frame_unref(f);
}

/* Batches join the oldest frames with '\n', in order, within cap bytes
 * and max_frames, and pop exactly what they took. */
static void test_take_batch(void **state)
{
	struct hub *h = new_hub(8, 64);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "u", &fk);
	unsigned char buf[64];
	char text[8];
	size_t n = 99;

	/* Empty queue, and a single frame: nothing taken (zero-copy path). */
	assert_int_equal(hub_conn_take_batch(c, buf, sizeof(buf), 64, &n), 0);
	assert_int_equal(n, 0);
	send_text(h, c, "aaa");
	assert_int_equal(hub_conn_take_batch(c, buf, sizeof(buf), 64, &n), 0);
	assert_int_equal(hub_conn_queued(c), 1);

	/* Ten frames "m0".."m9" (2 bytes each); 3 + 1 + 2 = 6 bytes of cap
	 * "aaa\nm0" take two; the cap is exact, not one more. */
	for (int i = 0; i < 10; i++) {
		snprintf(text, sizeof(text), "m%d", i);
		send_text(h, c, text);
	}
	assert_int_equal(hub_conn_take_batch(c, buf, 6, 64, &n), 6);
	assert_int_equal(n, 2);
	assert_memory_equal(buf, "aaa\nm0", 6);
	assert_int_equal(hub_conn_queued(c), 9);

	/* max_frames bounds the count. */
	assert_int_equal(hub_conn_take_batch(c, buf, sizeof(buf), 3, &n), 8);
	assert_int_equal(n, 3);
	assert_memory_equal(buf, "m1\nm2\nm3", 8);

	/* A cap that fits one frame only: nothing taken. */
	assert_int_equal(hub_conn_take_batch(c, buf, 4, 64, &n), 0);
	assert_int_equal(hub_conn_queued(c), 6);

	/* The rest, across the ring's wrap-around. */
	assert_int_equal(hub_conn_take_batch(c, buf, sizeof(buf), 64, &n), 17);
	assert_int_equal(n, 6);
	assert_memory_equal(buf, "m4\nm5\nm6\nm7\nm8\nm9", 17);
	assert_int_equal(hub_conn_queued(c), 0);
	assert_null(hub_conn_peek(c));

	/* The queue works as before afterwards, and want_write fires again. */
	int wants = fk.wants;
	send_text(h, c, "x");
	assert_int_equal(fk.wants, wants + 1);
	hub_conn_close(h, c);
	hub_free(h);
}

/* A batch drops exactly one reference per frame it took. */
static void test_take_batch_refs(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *c[2];
	for (int i = 0; i < 2; i++) {
		c[i] = hub_conn_open(h, "acme", "u", &fk);
		assert_int_equal(hub_subscribe(h, c[i], "x"), 0);
	}
	struct publication p[2];
	assert_int_equal(publish(h, &p[0], "acme", "x", "{\"a\":1}"), 0);
	assert_int_equal(publish(h, &p[1], "acme", "x", "{\"a\":2}"), 0);
	struct frame *f = hub_conn_peek(c[1]);
	assert_int_equal(f->refs, 2);
	unsigned char buf[1024];
	size_t n;
	size_t len = hub_conn_take_batch(c[0], buf, sizeof(buf), 64, &n);
	assert_int_equal(n, 2);
	assert_int_equal(f->refs, 1);
	buf[len] = '\0';
	char *nl = strchr((char *)buf, '\n');
	assert_non_null(nl);
	assert_null(strchr(nl + 1, '\n'));
	assert_non_null(strstr((char *)buf, "\"offset\":1"));
	assert_non_null(strstr(nl, "\"offset\":2"));
	hub_conn_close(h, c[0]);
	hub_conn_close(h, c[1]);
	hub_free(h);
}

static void test_epoch_after_sweep(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct publication p;
	assert_int_equal(publish(h, &p, "acme", "job:9", NULL), 0);
	assert_int_equal(publish(h, &p, "acme", "job:9", NULL), 0);
	assert_int_equal(p.pos[0].offset, 2);
	char epoch[17];
	memcpy(epoch, p.pos[0].epoch, sizeof(epoch));
	assert_int_equal(stats(h).channels, 1);

	hub_sweep(h, p.ts_ms + 60000, 60000); /* exactly idle_ms: kept */
	assert_int_equal(stats(h).channels, 1);
	hub_sweep(h, p.ts_ms + 60001, 60000);
	assert_int_equal(stats(h).channels, 0);

	assert_int_equal(publish(h, &p, "acme", "job:9", NULL), 0);
	assert_int_equal(p.pos[0].offset, 1);
	assert_string_not_equal(p.pos[0].epoch, epoch);
	hub_free(h);
}

static void test_sweep_keeps_subscribed(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "alice", &fk);
	assert_int_equal(hub_subscribe(h, c, "kept"), 0);
	assert_int_equal(hub_subscribe(h, c, "dropped"), 0);
	struct publication p;
	for (int i = 0; i < 50; i++) {
		char name[16];
		snprintf(name, sizeof(name), "idle:%d", i);
		assert_int_equal(publish(h, &p, "acme", name, NULL), 0);
	}
	assert_int_equal(hub_unsubscribe(h, c, "dropped"), 0);
	/* "dropped" never carried a publication: freed at once. */
	assert_int_equal(stats(h).channels, 3 + 50);
	hub_sweep(h, INT64_MAX / 2, 1000);
	/* $tenant, $user:alice and kept remain. */
	assert_int_equal(stats(h).channels, 3);
	assert_int_equal(publish(h, &p, "acme", "kept", NULL), 0);
	assert_int_equal(p.subscribers, 1);
	assert_int_equal(p.pos[0].offset, 1);
	assert_int_equal(publish(h, &p, "acme", "$user:alice", NULL), 0);
	assert_int_equal(p.subscribers, 1);
	hub_conn_close(h, c);
	hub_free(h);
}

/* ------------------------------------------------------------------------
 * Send queues
 * ------------------------------------------------------------------------ */

static void test_want_write_edges(void **state)
{
	struct hub *h = new_hub(8, 100);
	struct fake fk = {0};
	struct hub_conn *c = hub_conn_open(h, "acme", "alice", &fk);
	struct publication p;
	assert_int_equal(hub_conn_queued(c), 0);
	assert_null(hub_conn_peek(c));
	hub_conn_pop(c); /* harmless when empty */

	for (int i = 0; i < 10; i++)
		assert_int_equal(publish(h, &p, "acme", "$tenant", NULL), 0);
	assert_int_equal(fk.wants, 1);
	assert_int_equal(hub_conn_queued(c), 10);
	/* FIFO across ring growth. */
	char buf[512];
	for (int i = 1; i <= 4; i++) {
		char want[32];
		snprintf(want, sizeof(want), "\"offset\":%d,", i);
		assert_non_null(strstr(head_text(c, buf, sizeof(buf)), want));
		hub_conn_pop(c);
	}
	assert_int_equal(publish(h, &p, "acme", "$tenant", NULL), 0);
	assert_int_equal(fk.wants, 1);
	drain(c);
	assert_int_equal(publish(h, &p, "acme", "$tenant", NULL), 0);
	assert_int_equal(fk.wants, 2);

	/* hub_conn_send follows the same rule and takes its own reference. */
	struct frame *f = frame_from("{\"type\":\"pong\"}", 15);
	assert_int_equal(hub_conn_send(h, c, f), 0);
	assert_int_equal(fk.wants, 2);
	assert_int_equal(f->refs, 2);
	drain(c);
	assert_int_equal(f->refs, 1);
	assert_int_equal(hub_conn_send(h, c, f), 0);
	assert_int_equal(fk.wants, 3);
	frame_unref(f);
	hub_conn_close(h, c); /* frees the frame */
	hub_free(h);
}

static void test_slow_consumer(void **state)
{
	struct hub *h = new_hub(8, 3);
	struct fake slow = {0}, fast = {0};
	struct hub_conn *s = hub_conn_open(h, "acme", "slow", &slow);
	struct hub_conn *f = hub_conn_open(h, "acme", "fast", &fast);
	struct publication p;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(publish(h, &p, "acme", "$tenant", NULL), 0);
		assert_int_equal(p.subscribers, 2);
		drain(f);
	}
	assert_int_equal(hub_conn_queued(s), 3);
	assert_int_equal(slow.kills, 0);

	assert_int_equal(publish(h, &p, "acme", "$tenant", NULL), 0);
	assert_int_equal(p.subscribers, 1);
	assert_int_equal(slow.kills, 1);
	assert_int_equal(slow.code, 4000);
	assert_string_equal(slow.reason, "SLOW_CONSUMER");
	assert_int_equal(hub_conn_queued(s), 0);
	assert_int_equal(stats(h).slow_consumers, 1);
	assert_int_equal(fast.kills, 0);

	/* Dead: nothing more is queued, no second kill, still subscribed. */
	assert_int_equal(publish(h, &p, "acme", "$tenant", NULL), 0);
	assert_int_equal(p.subscribers, 1);
	assert_int_equal(slow.kills, 1);
	struct frame *fr = frame_from("x", 1);
	assert_int_equal(hub_conn_send(h, s, fr), LH_EFULL);
	frame_unref(fr);
	assert_int_equal(stats(h).slow_consumers, 1);
	assert_int_equal(stats(h).users, 2);

	hub_conn_close(h, s);
	assert_int_equal(stats(h).users, 1);
	hub_conn_close(h, f);
	hub_free(h);
}

static void test_stats(void **state)
{
	struct hub *h = new_hub(8, 16);
	struct fake fk = {0};
	struct hub_conn *a = hub_conn_open(h, "acme", "alice", &fk);
	struct hub_conn *b = hub_conn_open(h, "acme", "bob", &fk);
	assert_int_equal(hub_subscribe(h, a, "x"), 0);
	assert_int_equal(hub_subscribe(h, b, "x"), 0);
	struct publication p;
	make_pub(&p, "acme", "t", "x", "$user:alice", NULL);
	hub_publish(h, &p);
	assert_int_equal(p.subscribers, 3);
	assert_int_equal(publish(h, &p, "acme", "nobody", NULL), 0);
	hub_count_received(h);
	hub_count_received(h);
	struct hub_stats_snapshot s = stats(h);
	assert_int_equal(s.messages_published, 3);
	assert_int_equal(s.messages_delivered, 3);
	assert_int_equal(s.messages_received, 2);
	assert_int_equal(s.connections, 2);
	assert_int_equal(s.users, 2);
	assert_int_equal(s.tenants, 1);
	assert_int_equal(s.subscriptions, 2);
	assert_int_equal(s.channels, 5);
	hub_conn_close(h, a);
	hub_conn_close(h, b);
	hub_free(h);
}

/* ------------------------------------------------------------------------
 * Scale: swap-remove bookkeeping under many subscribers
 * ------------------------------------------------------------------------ */

static uint64_t rnd_state = 88172645463325252ULL;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

/* 10k connections on shared channels, unsubscribed and closed in random
 * order: every publication must reach exactly the remaining subscribers. */
static void test_many_connections(void **state)
{
	enum { N = 10000 };
	struct hub *h = new_hub(8, 1000);
	struct fake fk = {0};
	struct hub_conn **c = calloc(N, sizeof(*c));
	bool *on_big = calloc(N, sizeof(*on_big));
	char user[16];
	for (int i = 0; i < N; i++) {
		snprintf(user, sizeof(user), "u%d", i % 3000);
		c[i] = hub_conn_open(h, "acme", user, &fk);
		assert_non_null(c[i]);
		assert_int_equal(hub_subscribe(h, c[i], "big"), 0);
		assert_int_equal(hub_subscribe(h, c[i], i % 2 ? "odd" : "even"), 0);
		on_big[i] = true;
	}
	assert_int_equal(stats(h).users, 3000);
	int left = N;
	for (int i = 0; i < N / 4; i++) {
		int k = (int)(rnd() % N);
		if (on_big[k]) {
			assert_int_equal(hub_unsubscribe(h, c[k], "big"), 0);
			on_big[k] = false;
			left--;
		}
	}
	/* Shuffle, then close half. */
	for (int i = N - 1; i > 0; i--) {
		int j = (int)(rnd() % (uint64_t)(i + 1));
		struct hub_conn *t = c[i];
		c[i] = c[j];
		c[j] = t;
		bool b = on_big[i];
		on_big[i] = on_big[j];
		on_big[j] = b;
	}
	for (int i = 0; i < N / 2; i++) {
		left -= on_big[i];
		hub_conn_close(h, c[i]);
	}
	struct publication p;
	assert_int_equal(publish(h, &p, "acme", "big", NULL), 0);
	assert_int_equal(p.subscribers, (uint32_t)left);
	for (int i = N / 2; i < N; i++) {
		assert_int_equal(hub_conn_queued(c[i]), on_big[i] ? 1 : 0);
		drain(c[i]);
	}
	assert_int_equal(publish(h, &p, "acme", "$tenant", NULL), 0);
	assert_int_equal(p.subscribers, N / 2);
	for (int i = N / 2; i < N; i++)
		hub_conn_close(h, c[i]);
	struct hub_stats_snapshot s = stats(h);
	assert_int_equal(s.connections, 0);
	assert_int_equal(s.users, 0);
	assert_int_equal(s.subscriptions, 0);
	free(c);
	free(on_big);
	hub_free(h);
}

/* ------------------------------------------------------------------------
 * dict
 * ------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------
 * Redis mode hooks (hub_set_cluster) and the delivery of events from Redis
 * ------------------------------------------------------------------------ */

struct hooks_log {
	char calls[16][64];
	int n;
	int published, histories;
};

static struct hooks_log hlog;

static void log_call(const char *what, const char *tenant, const char *name)
{
	if (hlog.n < 16)
		snprintf(hlog.calls[hlog.n++], sizeof(hlog.calls[0]), "%s %s/%s", what, tenant,
		         name);
}

static void hk_first(void *arg, const char *tenant, const char *name)
{
	log_call("first", tenant, name);
}

static void hk_last(void *arg, const char *tenant, const char *name)
{
	log_call("last", tenant, name);
}

static void hk_publish(void *arg, struct publication *p)
{
	hlog.published++;
	p->status = 0;
	if (p->on_done)
		p->on_done(p);
}

static void hk_history(void *arg, struct publication *p)
{
	hlog.histories++;
	p->status = 0;
	if (p->on_done)
		p->on_done(p);
}

static const struct hub_cluster test_hooks = {hk_first, hk_last, hk_publish, hk_history};

static struct frame *event_at(uint64_t off)
{
	char text[160];
	int n = snprintf(text, sizeof text,
	                 "{\"type\":\"x\",\"channel\":\"job:1\",\"offset\":%llu,"
	                 "\"epoch\":\"00000000000000aa\",\"ts\":1,\"data\":{}}",
	                 (unsigned long long)off);
	return frame_from(text, (size_t)n);
}

static void deliver_at(struct hub *h, uint64_t off, uint64_t epoch)
{
	struct frame *f = event_at(off);
	assert_non_null(f);
	hub_deliver_event(h, "acme", "job:1", f, off, epoch, now_ms(), NULL, NULL);
	frame_unref(f);
}

static void test_cluster_hooks_and_cache(void **state)
{
	memset(&hlog, 0, sizeof(hlog));
	struct hub_limits lim = {.max_subs_per_conn = 8,
	                         .sendq_max_frames = 100,
	                         .sendq_max_bytes = UINT64_MAX,
	                         .hist = {.size = 10, .ttl_s = 0, .max_bytes = 1 << 20}};
	struct hub *h = hub_new(&lim, &fake_tr);
	assert_non_null(h);
	hub_set_cluster(h, &test_hooks, NULL);
	struct fake fa = {0};
	struct hub_conn *a = hub_conn_open(h, "acme", "alice", &fa);
	assert_int_equal(hlog.n, 2); /* $tenant and $user:alice */
	assert_string_equal(hlog.calls[0], "first acme/$tenant");
	assert_string_equal(hlog.calls[1], "first acme/$user:alice");
	assert_int_equal(hub_subscribe(h, a, "job:1"), 0);
	assert_string_equal(hlog.calls[2], "first acme/job:1");

	/* Publications and History go to the hooks, not to the hub. */
	struct publication p;
	make_pub(&p, "acme", "x", "job:1", NULL, "{}");
	p.on_done = on_done;
	hub_publish(h, &p);
	p.kind = PUB_HISTORY;
	hub_publish(h, &p);
	assert_int_equal(hlog.published, 1);
	assert_int_equal(hlog.histories, 1);
	assert_int_equal(hub_conn_queued(a), 0);

	/* Redis's position, then its events: delivered and cached. */
	hub_channel_sync(h, "acme", "job:1", 4, 0xaa);
	for (uint64_t off = 5; off <= 7; off++)
		deliver_at(h, off, 0xaa);
	assert_int_equal(hub_conn_queued(a), 3);
	drain(a);
	struct hub_since since = {.given = true, .offset = 5};
	snprintf(since.epoch, sizeof since.epoch, "00000000000000aa");
	struct hub_position pos;
	assert_int_equal(hub_channel_recover(h, a, "job:1", &since, &pos), 0);
	assert_true(pos.recovered);
	assert_int_equal(pos.offset, 7);
	assert_string_equal(pos.epoch, "00000000000000aa");
	assert_int_equal(pos.replay, 2);
	hub_replay(h, a, &pos);
	assert_int_equal(hub_conn_queued(a), 2);
	drain(a);
	/* Before the first cached event: not held. */
	since.offset = 3;
	assert_int_equal(hub_channel_recover(h, a, "job:1", &since, &pos), 0);
	assert_false(pos.recovered);

	/* A gap empties the cache; so does a sync that does not continue it. */
	deliver_at(h, 9, 0xaa);
	since.offset = 7;
	assert_int_equal(hub_channel_recover(h, a, "job:1", &since, &pos), 0);
	assert_false(pos.recovered);
	assert_int_equal(pos.offset, 9);
	since.offset = 8; /* 9 is held: a client that saw 8 elsewhere recovers */
	assert_int_equal(hub_channel_recover(h, a, "job:1", &since, &pos), 0);
	assert_true(pos.recovered);
	assert_int_equal(pos.replay, 1);
	hub_channel_sync(h, "acme", "job:1", 20, 0xbb);
	assert_int_equal(hub_channel_recover(h, a, "job:1", NULL, &pos), 0);
	assert_int_equal(pos.offset, 20);
	assert_string_equal(pos.epoch, "00000000000000bb");
	assert_int_equal(hub_channel_recover(h, a, "job:2", NULL, &pos), LH_ENOENT);
	/* Raw frames (client events of other nodes) go to everyone on it. */
	struct frame *f = frame_from("{}", 2);
	assert_int_equal(hub_deliver(h, "acme", "job:1", f), 1);
	assert_int_equal(hub_deliver(h, "acme", "job:9", f), 0);
	frame_unref(f);
	drain(a);

	assert_int_equal(hub_unsubscribe(h, a, "job:1"), 0);
	assert_string_equal(hlog.calls[3], "last acme/job:1");
	hub_conn_close(h, a);
	assert_int_equal(hlog.n, 6);
	hub_set_cluster(h, NULL, NULL);
	hub_free(h);
}

/* A value that holds its key, as every user of dict does. */
struct item {
	int i;
	char key[16];
};

static void test_dict_basic(void **state)
{
	struct dict *d = dict_new(42, offsetof(struct item, key));
	assert_non_null(d);
	struct item a = {1, "k"}, b = {2, "k"}, e = {3, ""}, z = {4, "z"};
	assert_null(dict_get(d, "k", 1));
	assert_int_equal(dict_put(d, a.key, 1, &a), 0);
	assert_int_equal(dict_put(d, b.key, 1, &b), LH_EEXIST);
	assert_int_equal(dict_put(d, z.key, 1, NULL), LH_EINVAL);
	assert_int_equal(dict_put(d, "z", 1, &z), LH_EINVAL); /* the key is not z's */
	assert_ptr_equal(dict_get(d, "k", 1), &a);
	assert_null(dict_get(d, "k\0", 2));             /* lengths matter */
	assert_int_equal(dict_put(d, e.key, 0, &e), 0); /* the empty key is a key */
	assert_ptr_equal(dict_get(d, "", 0), &e);
	assert_int_equal(dict_count(d), 2);
	assert_ptr_equal(dict_del(d, "k", 1), &a);
	assert_null(dict_del(d, "k", 1));
	assert_int_equal(dict_count(d), 1);
	dict_free(d);
	dict_free(NULL);
}

/* Many keys; then removal of every other entry during an iteration, which
 * must still visit every entry exactly once. */
static void test_dict_many(void **state)
{
	enum { N = 100000 };
	struct dict *d = dict_new(7, offsetof(struct item, key));
	struct item *it = calloc(N, sizeof(*it));
	int *seen = calloc(N, sizeof(*seen));
	for (int i = 0; i < N; i++) {
		snprintf(it[i].key, sizeof(it[i].key), "acme\x1fk%d", i);
		it[i].i = i;
		assert_int_equal(dict_put(d, it[i].key, strlen(it[i].key), &it[i]), 0);
	}
	assert_int_equal(dict_count(d), N);
	for (int i = 0; i < N; i++)
		assert_ptr_equal(dict_get(d, it[i].key, strlen(it[i].key)), &it[i]);

	size_t pos = 0;
	struct dict_entry e;
	while (dict_next(d, &pos, &e)) {
		int i = ((struct item *)e.val)->i;
		assert_int_equal(e.len, strlen(it[i].key));
		assert_ptr_equal(e.key, it[i].key);
		seen[i]++;
		if (i % 2 == 0)
			assert_ptr_equal(dict_del(d, e.key, e.len), &it[i]);
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(seen[i], 1);
	assert_int_equal(dict_count(d), N / 2);
	for (int i = 0; i < N; i++)
		assert_ptr_equal(dict_get(d, it[i].key, strlen(it[i].key)), i % 2 ? &it[i] : NULL);

	/* Remove the rest, then reuse the table (tombstones get cleared). */
	for (int i = 1; i < N; i += 2)
		assert_non_null(dict_del(d, it[i].key, strlen(it[i].key)));
	assert_int_equal(dict_count(d), 0);
	pos = 0;
	assert_false(dict_next(d, &pos, &e));
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++)
			assert_int_equal(dict_put(d, it[i].key, strlen(it[i].key), &it[i]), 0);
		for (int i = 0; i < N; i++)
			assert_ptr_equal(dict_del(d, it[i].key, strlen(it[i].key)), &it[i]);
	}
	assert_int_equal(dict_count(d), 0);
	free(it);
	free(seen);
	dict_free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_subscribe_codes),
	        cmocka_unit_test(test_accessors_and_ids),
	        cmocka_unit_test(test_close_cleanup),
	        cmocka_unit_test(test_implicit_channels),
	        cmocka_unit_test(test_conn_counts),
	        cmocka_unit_test(test_tenant_isolation),
	        cmocka_unit_test(test_publish_validation),
	        cmocka_unit_test(test_offsets),
	        cmocka_unit_test(test_frame_bytes),
	        cmocka_unit_test(test_shared_frame),
	        cmocka_unit_test(test_take_batch),
	        cmocka_unit_test(test_take_batch_refs),
	        cmocka_unit_test(test_epoch_after_sweep),
	        cmocka_unit_test(test_sweep_keeps_subscribed),
	        cmocka_unit_test(test_want_write_edges),
	        cmocka_unit_test(test_slow_consumer),
	        cmocka_unit_test(test_stats),
	        cmocka_unit_test(test_many_connections),
	        cmocka_unit_test(test_cluster_hooks_and_cache),
	        cmocka_unit_test(test_dict_basic),
	        cmocka_unit_test(test_dict_many),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
