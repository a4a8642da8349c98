/*
 * cluster: Redis mode on the service thread. See cluster.h.
 *
 * Per followed channel (struct cchan): its position as delivered to the
 * local subscribers (top, epoch), whether that position is known from
 * Redis (state), and the messages held back while a subscribe reply is
 * being prepared (held). A channel's record lives from its first local
 * subscriber to its last; callbacks still owed to a record hold a
 * reference, so a record unfollowed meanwhile is only marked dead.
 */
#include "cluster.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "dict.h"
#include "frame.h"
#include "history.h"
#include "hub.h"
#include "livehub.h"
#include "log.h"
#include "metrics.h"
#include "names.h"
#include "presence.h"
#include "publication.h"
#include "ws_protocol.h"

/* Makes sure the channel's meta exists (so it has an epoch before its
 * first publication) and reads it. KEYS: meta. ARGV: a random epoch, ttl s.
 * Returns {epoch, top|nil}. */
static const char meta_lua[] =
        "if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 and tonumber(ARGV[2]) > 0 "
        "then redis.call('EXPIRE', KEYS[1], ARGV[2]) end\n"
        "return redis.call('HMGET', KEYS[1], 'epoch', 'top')\n";

/* Reads a channel's position and history in one go. KEYS: meta, stream.
 * ARGV: since offset (-1: none), limit (0: all). Returns {epoch|nil,
 * top|nil, entries}: with since, the entries after it, oldest first;
 * without, the newest limit entries, oldest first. */
static const char read_lua[] =
        "local m = redis.call('HMGET', KEYS[1], 'epoch', 'top')\n"
        "local since = tonumber(ARGV[1])\n"
        "local limit = tonumber(ARGV[2])\n"
        "local e\n"
        "if since >= 0 then\n"
        "  if limit > 0 then e = redis.call('XRANGE', KEYS[2], '(' .. since .. '-0', '+', "
        "'COUNT', limit)\n"
        "  else e = redis.call('XRANGE', KEYS[2], '(' .. since .. '-0', '+') end\n"
        "elseif limit > 0 then\n"
        "  e = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)\n"
        "  local r = {}\n"
        "  for i = #e, 1, -1 do r[#r + 1] = e[i] end\n"
        "  e = r\n"
        "else e = redis.call('XRANGE', KEYS[2], '-', '+') end\n"
        "return {m[1], m[2], e}\n";

enum cstate { CC_SYNCING, CC_READY, CC_DOWN };

/* A message held back (a copy). */
struct held {
	struct held *next;
	size_t len;
	char msg[];
};

/* A connection that has seen the channel's events up to upto already (it
 * recovered here with a since ahead of what this node had delivered). */
struct skip {
	char conn_id[32];
	uint64_t upto;
};

struct cchan {
	struct cluster *cl;
	struct skip *skips; /* few; dropped once top reaches them */
	size_t nskips;
	enum cstate state;
	bool dead;      /* unfollowed: dropped from the table, freed at refs 0 */
	bool known;     /* top/epoch came from Redis once */
	uint32_t refs;  /* the table's, plus one per callback owed */
	uint32_t waits; /* subscribe replies being prepared: hold messages */
	uint64_t top;   /* the last offset delivered here */
	char epoch[17];
	struct held *held, *held_tail;
	struct waiter *waiters; /* waiting for the channel's position (SYNCING) */
	char tenant[LH_TENANT_MAX + 1];
	char name[LH_CHANNEL_MAX + 1];
	size_t klen;
	char key[LH_TENANT_MAX + LH_CHANNEL_MAX + 2]; /* "tenant\x1fname" */
};

/* A subscribe reply being prepared. */
struct waiter {
	struct waiter *next;
	struct cchan *ch; /* a reference */
	char conn_id[32];
	bool has_since;
	uint64_t since;
	char since_epoch[33];
	uint64_t top; /* what the replay goes up to */
	/* The request's fields a reply needs. */
	char channel[LH_CHANNEL_MAX + 1];
	size_t channel_len;
	bool project_alias;
	char id[WSP_ID_JSON_MAX + 1];
	size_t id_len;
};

struct cluster {
	struct hub *h;
	struct broker *b;
	struct presence *pres;
	struct dict *chans; /* key -> struct cchan */
	struct dict *conns; /* hub_conn_id -> struct hub_conn */
	uint64_t rng;
	struct hub_cluster hooks;
	struct hist_limits hist;
};

/* An open connection, by its id (the lookup of asynchronous replies). */
struct cconn {
	struct hub_conn *c;
	char id[32];
};

static struct hub_conn *conn_find(struct cluster *cl, const char *id)
{
	struct cconn *cc = dict_get(cl->conns, id, strlen(id));
	return cc ? cc->c : NULL;
}

static uint64_t next_rand(struct cluster *cl)
{
	uint64_t z = (cl->rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static size_t make_key(char *buf, const char *tenant, const char *name)
{
	size_t t = strlen(tenant), n = strlen(name);
	memcpy(buf, tenant, t);
	buf[t] = LH_KEY_SEP;
	memcpy(buf + t + 1, name, n);
	buf[t + 1 + n] = '\0';
	return t + 1 + n;
}

static struct cchan *chan_find(struct cluster *cl, const char *tenant, const char *name)
{
	char key[LH_TENANT_MAX + LH_CHANNEL_MAX + 2];
	size_t k = make_key(key, tenant, name);
	return dict_get(cl->chans, key, k);
}

static void held_free(struct cchan *ch)
{
	for (struct held *m = ch->held, *next; m; m = next) {
		next = m->next;
		free(m);
	}
	ch->held = ch->held_tail = NULL;
}

static void chan_unref(struct cchan *ch)
{
	if (--ch->refs > 0)
		return;
	held_free(ch);
	free(ch->skips);
	free(ch);
}

static bool skip_conn(void *arg, const struct hub_conn *c)
{
	const struct cchan *ch = arg;
	char buf[HUB_CONN_ID_MAX];
	const char *id = hub_conn_id(c, buf);
	for (size_t i = 0; i < ch->nskips; i++)
		if (ch->top <= ch->skips[i].upto && strcmp(ch->skips[i].conn_id, id) == 0)
			return true;
	return false;
}

/* Forgets the skips the channel's top has reached (all of them when its
 * epoch changed: offsets start again). */
static void skips_trim(struct cchan *ch, bool all)
{
	size_t k = 0;
	for (size_t i = 0; i < ch->nskips; i++)
		if (!all && ch->skips[i].upto > ch->top)
			ch->skips[k++] = ch->skips[i];
	ch->nskips = k;
}

/* ------------------------------------------------------------------------
 * Delivery
 * ------------------------------------------------------------------------ */

static void deliver(struct cchan *ch, const char *msg, size_t len)
{
	struct cluster *cl = ch->cl;
	struct broker_msg m;
	if (broker_msg_parse(msg, len, &m)) {
		log_warn("event=redis_bad_message channel=%s", ch->name);
		return;
	}
	if (m.kind == 'R' && strcmp(m.node, broker_node_id(cl->b)) == 0)
		return; /* delivered here already, when it was sent */
	if (m.kind == 'E') {
		bool same = strcmp(m.epoch, ch->epoch) == 0;
		if (same && m.offset <= ch->top)
			return; /* already delivered, or older than a subscribe's position */
		if (!same) {
			memcpy(ch->epoch, m.epoch, sizeof(ch->epoch)); /* the channel restarted */
			skips_trim(ch, true);
		}
		ch->top = m.offset;
	}
	struct frame *f = frame_from(m.frame, m.frame_len);
	if (!f) {
		log_error("event=redis_deliver_failed reason=\"out of memory\"");
		return;
	}
	if (m.kind == 'E') {
		if (m.conflate_key)
			f->key = hub_conflate_key(m.conflate_key, ch->tenant, ch->name);
		struct broker_frame bf;
		int64_t ts = broker_frame_parts(m.frame, m.frame_len, &bf) == 0 ? bf.ts_ms : 0;
		hub_deliver_event(cl->h, ch->tenant, ch->name, f, m.offset,
		                  strtoull(ch->epoch, NULL, 16), ts, ch->nskips ? skip_conn : NULL,
		                  ch);
		if (ch->nskips)
			skips_trim(ch, false);
	} else {
		hub_deliver(cl->h, ch->tenant, ch->name, f);
	}
	frame_unref(f);
}

static void hold(struct cchan *ch, const char *msg, size_t len)
{
	struct held *m = malloc(sizeof(*m) + len);
	if (!m) {
		log_error("event=redis_hold_failed reason=\"out of memory\" channel=%s", ch->name);
		return;
	}
	m->next = NULL;
	m->len = len;
	memcpy(m->msg, msg, len);
	if (ch->held_tail)
		ch->held_tail->next = m;
	else
		ch->held = m;
	ch->held_tail = m;
}

/* Delivers what was held, once nothing waits any more. */
static void release(struct cchan *ch)
{
	if (ch->waits > 0 || ch->state == CC_SYNCING)
		return;
	struct held *m = ch->held;
	ch->held = ch->held_tail = NULL;
	while (m) {
		struct held *next = m->next;
		if (!ch->dead)
			deliver(ch, m->msg, m->len);
		free(m);
		m = next;
	}
}

static void on_message(void *arg, const char *tenant, const char *name, const char *msg, size_t len)
{
	struct cluster *cl = arg;
	struct cchan *ch = chan_find(cl, tenant, name);
	if (!ch)
		return; /* unfollowed meanwhile */
	if (ch->state == CC_SYNCING || ch->waits > 0)
		hold(ch, msg, len);
	else
		deliver(ch, msg, len);
}

/* ------------------------------------------------------------------------
 * Subscribe replies
 * ------------------------------------------------------------------------ */

static void waiter_request(const struct waiter *w, struct wsp_request *req)
{
	memset(req, 0, sizeof(*req));
	req->type = WSP_SUBSCRIBE;
	memcpy(req->channel, w->channel, w->channel_len + 1);
	req->channel_len = w->channel_len;
	req->project_alias = w->project_alias;
	req->has_since = w->has_since;
	memcpy(req->id, w->id, w->id_len + 1);
	req->id_len = w->id_len;
}

/* Queues the subscribed reply (and the replayed frames) on the waiter's
 * connection, if it is still open. */
static void answer(struct cluster *cl, struct waiter *w, uint64_t top, const char *epoch,
                   bool recovered, const redisReply *entries, size_t nentries,
                   const struct hub_position *cached)
{
	struct hub_conn *c = conn_find(cl, w->conn_id);
	if (!c)
		return;
	if (w->has_since)
		hub_count_recovery(cl->h, recovered);
	static struct wsp_request req; /* large; the service thread's only */
	waiter_request(w, &req);
	struct frame *f = wsp_subscribed_at(&req, top, epoch, recovered);
	if (!f) {
		hub_conn_kill(cl->h, c, 1011, "out of memory");
		return;
	}
	metrics_inc(&lh_metrics.msg_out[MO_REPLY], 1);
	hub_conn_send(cl->h, c, f);
	frame_unref(f);
	if (recovered && entries) {
		for (size_t i = 0; i < nentries && i < entries->elements; i++) {
			redisReply *fv = entries->element[i]->element[1];
			redisReply *v = fv->element[1];
			struct frame *e = frame_from(v->str, v->len);
			if (e) {
				hub_conn_send(cl->h, c, e);
				frame_unref(e);
			}
		}
	}
	if (recovered && cached)
		hub_replay(cl->h, c, cached);
}

/* Answers w from the node's cache of the channel (hub_deliver_event) when
 * it holds every event after w->since up to the channel's top. */
static bool answer_cached(struct cluster *cl, struct waiter *w)
{
	struct cchan *ch = w->ch;
	struct hub_conn *c = conn_find(cl, w->conn_id);
	if (!c)
		return false;
	struct hub_since since = {.given = true, .offset = w->since};
	memcpy(since.epoch, w->since_epoch, sizeof(since.epoch));
	struct hub_position pos;
	if (hub_channel_recover(cl->h, c, w->channel, &since, &pos) || !pos.recovered ||
	    pos.offset != ch->top || strcmp(pos.epoch, ch->epoch) != 0)
		return false;
	answer(cl, w, pos.offset, pos.epoch, true, NULL, 0, &pos);
	return true;
}

static void waiter_done(struct waiter *w)
{
	struct cchan *ch = w->ch;
	free(w);
	ch->waits--;
	release(ch);
	chan_unref(ch);
}

/* Parses a stream entry's id "<offset>-0". */
static bool entry_offset(const redisReply *e, uint64_t *off)
{
	if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
	    e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY ||
	    e->element[1]->elements != 2 || e->element[1]->element[1]->type != REDIS_REPLY_STRING)
		return false;
	char *end;
	unsigned long long v = strtoull(e->element[0]->str, &end, 10);
	if (end == e->element[0]->str || strcmp(end, "-0") != 0)
		return false;
	*off = v;
	return true;
}

/* Whether entries hold exactly the offsets since+1 .. top, in order. */
static bool covers(const redisReply *entries, uint64_t since, uint64_t top, size_t *n)
{
	if (!entries || entries->type != REDIS_REPLY_ARRAY)
		return false;
	uint64_t want = since + 1;
	size_t k = 0;
	for (; k < entries->elements && want <= top; k++, want++) {
		uint64_t off;
		if (!entry_offset(entries->element[k], &off) || off != want)
			return false;
	}
	*n = k;
	return want == top + 1;
}

/* The read for a waiter's replay came back. */
static void on_range(void *arg, redisReply *r)
{
	struct waiter *w = arg;
	struct cchan *ch = w->ch;
	struct cluster *cl = ch->cl;
	if (!ch->dead) {
		redisReply *entries = NULL;
		if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3)
			entries = r->element[2];
		size_t n = 0;
		bool ok = covers(entries, w->since, w->top, &n);
		/* Entries past top come live (held): the first n are replayed. */
		answer(cl, w, w->top, ch->epoch, ok, entries, n, NULL);
	} else {
		/* Left meanwhile: answered all the same, nothing replayed. */
		answer(cl, w, w->top, ch->epoch, false, NULL, 0, NULL);
	}
	waiter_done(w);
}

/* The client is ahead of this node: it saw since on another node, and the
 * events up to it are still on their way here. Nothing was missed: it is
 * answered at since, recovered, and the events up to since skip its
 * connection when they come. */
static bool ahead(struct cchan *ch, struct waiter *w)
{
	struct skip *s = realloc(ch->skips, (ch->nskips + 1) * sizeof(*s));
	if (!s)
		return false;
	ch->skips = s;
	s = &ch->skips[ch->nskips++];
	snprintf(s->conn_id, sizeof(s->conn_id), "%s", w->conn_id);
	s->upto = w->since;
	answer(ch->cl, w, w->since, ch->epoch, true, NULL, 0, NULL);
	return true;
}

/* The channel's meta came back for a client ahead of this node: its since
 * is believed only when Redis has it (same epoch, top at or past it), so
 * that a client cannot claim any offset and leave a skip that the channel
 * never reaches (skips cost every delivery on the channel). */
static void on_ahead(void *arg, redisReply *r)
{
	struct waiter *w = arg;
	struct cchan *ch = w->ch;
	if (!ch->dead) {
		bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
		          r->element[0]->type == REDIS_REPLY_STRING &&
		          r->element[1]->type == REDIS_REPLY_STRING &&
		          strcmp(r->element[0]->str, w->since_epoch) == 0 &&
		          strcmp(ch->epoch, w->since_epoch) == 0 && ch->state == CC_READY &&
		          strtoull(r->element[1]->str, NULL, 10) >= w->since;
		if (!ok || !ahead(ch, w))
			answer(ch->cl, w, ch->top, ch->epoch, false, NULL, 0, NULL);
	} else {
		answer(ch->cl, w, ch->top, ch->epoch, false, NULL, 0, NULL);
	}
	waiter_done(w);
}

/* Answers w from the channel's known position, reading the stream first
 * when its since needs a replay. */
static void resolve(struct cluster *cl, struct waiter *w)
{
	struct cchan *ch = w->ch;
	w->top = ch->top;
	bool same = w->has_since && strcmp(w->since_epoch, ch->epoch) == 0;
	if (ch->state == CC_READY && same && w->since < ch->top) {
		if (answer_cached(cl, w)) {
			waiter_done(w);
			return;
		}
		char meta[512], stream[512], since[24];
		broker_key(cl->b, meta, sizeof(meta), ch->tenant, ch->name, ":meta");
		broker_key(cl->b, stream, sizeof(stream), ch->tenant, ch->name, ":stream");
		snprintf(since, sizeof(since), "%llu", (unsigned long long)w->since);
		const char *argv[] = {"EVAL", read_lua, "2", meta, stream, since, "0"};
		if (broker_cmd(cl->b, on_range, w, 7, argv, NULL) == 0)
			return;
	}
	if (ch->state == CC_READY && same && w->since > ch->top) {
		char meta[512];
		broker_key(cl->b, meta, sizeof(meta), ch->tenant, ch->name, ":meta");
		const char *argv[] = {"HMGET", meta, "epoch", "top"};
		if (broker_cmd(cl->b, on_ahead, w, 4, argv, NULL) == 0)
			return;
	}
	bool recovered = ch->state == CC_READY && same && w->since == ch->top;
	answer(cl, w, ch->top, ch->epoch, recovered, NULL, 0, NULL);
	waiter_done(w);
}

/* ------------------------------------------------------------------------
 * Following a channel
 * ------------------------------------------------------------------------ */

/* The channel's position came back (or not: r NULL or an error). */
static void on_meta(void *arg, redisReply *r)
{
	struct cchan *ch = arg;
	struct cluster *cl = ch->cl;
	if (!ch->dead) {
		bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
		          r->element[0]->type == REDIS_REPLY_STRING &&
		          broker_epoch_ok(r->element[0]->str, r->element[0]->len);
		if (ok) {
			memcpy(ch->epoch, r->element[0]->str, 16);
			ch->epoch[16] = '\0';
			ch->top = r->element[1]->type == REDIS_REPLY_STRING
			                  ? strtoull(r->element[1]->str, NULL, 10)
			                  : 0;
			ch->known = true;
			ch->state = CC_READY;
			hub_channel_sync(cl->h, ch->tenant, ch->name, ch->top,
			                 strtoull(ch->epoch, NULL, 16));
		} else {
			if (r && r->type == REDIS_REPLY_ERROR)
				log_warn("event=redis_meta_failed channel=%s reply=\"%s\"",
				         ch->name, r->str);
			ch->state = CC_DOWN;
		}
		/* Held messages at or below top are older than every answer
		 * below: release() drops them as duplicates. */
		struct waiter *w = ch->waiters;
		ch->waiters = NULL;
		/* Oldest first. */
		struct waiter *rev = NULL;
		while (w) {
			struct waiter *next = w->next;
			w->next = rev;
			rev = w;
			w = next;
		}
		ch->waits++; /* keep holding while the waiters are resolved */
		for (w = rev; w;) {
			struct waiter *next = w->next;
			resolve(cl, w);
			w = next;
		}
		ch->waits--;
		release(ch);
	}
	chan_unref(ch);
}

static void read_meta(struct cluster *cl, struct cchan *ch)
{
	char meta[512], epoch[17], ttl[16];
	broker_key(cl->b, meta, sizeof(meta), ch->tenant, ch->name, ":meta");
	snprintf(epoch, sizeof(epoch), "%016llx", (unsigned long long)next_rand(cl));
	/* The TTL the publish script gives the channel's keys. */
	uint32_t size = 0, ttl_s = 0;
	hist_kind_of(&cl->hist, ch->name, strlen(ch->name), &size, &ttl_s);
	snprintf(ttl, sizeof(ttl), "%u", ttl_s);
	const char *argv[] = {"EVAL", meta_lua, "1", meta, epoch, ttl};
	ch->state = CC_SYNCING;
	ch->refs++;
	if (broker_cmd(cl->b, on_meta, ch, 6, argv, NULL) != 0)
		on_meta(ch, NULL);
}

static void on_followed(void *arg, bool ok)
{
	struct cchan *ch = arg;
	if (!ch->dead) {
		if (ok) {
			read_meta(ch->cl, ch);
		} else {
			ch->refs++;
			on_meta(ch, NULL); /* answers the waiters from what is known */
		}
	}
	chan_unref(ch);
}

static void on_first(void *arg, const char *tenant, const char *name)
{
	struct cluster *cl = arg;
	struct cchan *ch = calloc(1, sizeof(*ch));
	if (!ch) {
		log_error("event=redis_follow_failed reason=\"out of memory\" channel=%s", name);
		return;
	}
	ch->cl = cl;
	ch->refs = 1;
	ch->state = CC_SYNCING;
	snprintf(ch->tenant, sizeof(ch->tenant), "%s", tenant);
	snprintf(ch->name, sizeof(ch->name), "%s", name);
	memcpy(ch->epoch, "0000000000000000", 17);
	ch->klen = make_key(ch->key, tenant, name);
	if (dict_put(cl->chans, ch->key, ch->klen, ch) != 0) {
		free(ch);
		log_error("event=redis_follow_failed reason=\"out of memory\" channel=%s", name);
		return;
	}
	ch->refs++;
	if (broker_follow(cl->b, tenant, name, on_followed, ch) != 0) {
		ch->refs--;
		ch->state = CC_DOWN;
	}
}

static void chan_drop(struct cchan *ch);

static void on_last(void *arg, const char *tenant, const char *name)
{
	struct cluster *cl = arg;
	char key[LH_TENANT_MAX + LH_CHANNEL_MAX + 2];
	size_t k = make_key(key, tenant, name);
	struct cchan *ch = dict_del(cl->chans, key, k);
	if (!ch)
		return;
	broker_unfollow(cl->b, tenant, name);
	chan_drop(ch);
}

/* Marks ch (out of the table) dead and drops the table's reference;
 * callbacks still owed to it find it dead. */
static void chan_drop(struct cchan *ch)
{
	ch->dead = true;
	held_free(ch);
	/* Waiters of a channel nobody is on any more: the connection left it
	 * (an unsubscribe sent right after the subscribe) or closed; one
	 * still open gets its subscribe answered now, before the reply to
	 * what made it leave, with what is known (nothing recovered). */
	for (struct waiter *w = ch->waiters, *next; w; w = next) {
		next = w->next;
		answer(ch->cl, w, ch->top, ch->epoch, false, NULL, 0, NULL);
		ch->waits--;
		free(w);
		chan_unref(ch);
	}
	ch->waiters = NULL;
	chan_unref(ch);
}

/* Redis went down or came back. Down: positions stay as they are (what the
 * local subscribers saw); subscribes are answered from them. Up: every
 * channel reads its position again (the broker has re-subscribed them all
 * before reporting up); messages published while this node was cut off
 * are not delivered live (their offsets show the gap; a resubscribe with
 * since recovers them from the stream). */
static void on_state(void *arg, bool up)
{
	struct cluster *cl = arg;
	size_t pos = 0;
	struct dict_entry de;
	while (dict_next(cl->chans, &pos, &de)) {
		struct cchan *ch = de.val;
		if (up)
			read_meta(cl, ch);
		else if (ch->state != CC_SYNCING)
			ch->state = CC_DOWN;
	}
}

/* ------------------------------------------------------------------------
 * Publishing
 * ------------------------------------------------------------------------ */

static void publish(void *arg, struct publication *p)
{
	struct cluster *cl = arg;
	p->subscribers = 0;
	p->duplicate = false;
	memset(p->pos, 0, sizeof(p->pos));
	int rc = 0;
	if (p->nchannels < 1 || p->nchannels > LH_PUB_MAX_CHANNELS ||
	    !name_tenant_ok(p->tenant, strnlen(p->tenant, sizeof(p->tenant))) ||
	    !name_type_ok(p->type, strnlen(p->type, sizeof(p->type))))
		rc = LH_EINVAL;
	for (int i = 0; rc == 0 && i < p->nchannels; i++)
		if (!name_channel_any_ok(p->channels[i],
		                         strnlen(p->channels[i], LH_CHANNEL_MAX + 1)))
			rc = LH_EINVAL;
	if (rc == 0)
		rc = broker_publish(cl->b, p);
	if (rc == 0)
		return; /* p->on_done comes from the broker */
	p->status = rc;
	if (p->on_done)
		p->on_done(p);
}

/* ------------------------------------------------------------------------
 * History RPC
 * ------------------------------------------------------------------------ */

static struct hub_history_result *history_build(const struct publication *p, redisReply *r,
                                                int *status)
{
	struct hub_history_result hdr;
	memset(&hdr, 0, sizeof(hdr));
	snprintf(hdr.channel, sizeof(hdr.channel), "%s", p->channels[0]);
	redisReply *entries = NULL;
	if (r->element[0]->type == REDIS_REPLY_STRING &&
	    broker_epoch_ok(r->element[0]->str, r->element[0]->len)) {
		memcpy(hdr.epoch, r->element[0]->str, 16);
		hdr.epoch[16] = '\0';
	}
	if (r->element[1]->type == REDIS_REPLY_STRING)
		hdr.offset = strtoull(r->element[1]->str, NULL, 10);
	if (r->element[2]->type == REDIS_REPLY_ARRAY)
		entries = r->element[2];
	size_t n = entries ? entries->elements : 0;
	if (p->hist_has_since) {
		size_t have = 0;
		/* The oldest hist_limit of those after since, when none is
		 * missing: the first must be since+1. */
		uint64_t first = 0;
		bool same = hdr.epoch[0] && strcmp(p->hist_since_epoch, hdr.epoch) == 0;
		if (p->hist_since_offset == hdr.offset)
			hdr.recovered = same;
		else if (same && n > 0 && entry_offset(entries->element[0], &first) &&
		         first == p->hist_since_offset + 1)
			hdr.recovered = true;
		if (!hdr.recovered)
			n = 0;
		(void)have;
	}
	/* Only entries of the stream's shape are read (entry_offset checks
	 * it): a broken Redis must not make us follow a NULL element. */
	size_t text = 0;
	uint64_t off;
	for (size_t i = 0; i < n; i++)
		if (entry_offset(entries->element[i], &off))
			text += entries->element[i]->element[1]->element[1]->len + 2;
	size_t head = sizeof(hdr) + n * sizeof(hdr.items[0]);
	struct hub_history_result *res = malloc(head + text);
	if (!res) {
		*status = LH_ENOMEM;
		return NULL;
	}
	*res = hdr;
	res->n = 0;
	char *o = (char *)res + head;
	for (size_t i = 0; i < n; i++) {
		if (!entry_offset(entries->element[i], &off))
			continue;
		redisReply *v = entries->element[i]->element[1]->element[1];
		struct broker_frame bf;
		if (broker_frame_parts(v->str, v->len, &bf))
			continue;
		struct hub_history_item *it = &res->items[res->n++];
		it->offset = off;
		it->ts_ms = bf.ts_ms;
		it->type = o;
		memcpy(o, bf.type, bf.type_len);
		o += bf.type_len;
		*o++ = '\0';
		it->data = o;
		it->data_len = bf.data_len;
		memcpy(o, bf.data, bf.data_len);
		o += bf.data_len;
		*o++ = '\0';
	}
	*status = 0;
	return res;
}

static void on_history(void *arg, redisReply *r)
{
	struct publication *p = arg;
	p->history = NULL;
	if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3) {
		p->status = LH_EUNAVAILABLE;
	} else {
		int status = 0;
		p->history = history_build(p, r, &status);
		p->status = status;
	}
	if (p->on_done)
		p->on_done(p);
}

static void history(void *arg, struct publication *p)
{
	struct cluster *cl = arg;
	const char *name = p->channels[0];
	p->history = NULL;
	if (!name_tenant_ok(p->tenant, strnlen(p->tenant, sizeof(p->tenant))) ||
	    !name_channel_any_ok(name, strnlen(name, sizeof(p->channels[0])))) {
		p->status = LH_EINVAL;
		if (p->on_done)
			p->on_done(p);
		return;
	}
	char meta[512], stream[512], since[24], limit[16];
	broker_key(cl->b, meta, sizeof(meta), p->tenant, name, ":meta");
	broker_key(cl->b, stream, sizeof(stream), p->tenant, name, ":stream");
	snprintf(since, sizeof(since), "%lld",
	         p->hist_has_since ? (long long)p->hist_since_offset : -1LL);
	snprintf(limit, sizeof(limit), "%u", p->hist_limit);
	const char *argv[] = {"EVAL", read_lua, "2", meta, stream, since, limit};
	int rc = broker_cmd(cl->b, on_history, p, 7, argv, NULL);
	if (rc) {
		p->status = rc;
		if (p->on_done)
			p->on_done(p);
	}
}

/* ------------------------------------------------------------------------
 * The front's side
 * ------------------------------------------------------------------------ */

void cluster_conn_open(struct cluster *cl, struct hub_conn *c)
{
	char buf[HUB_CONN_ID_MAX];
	const char *id = hub_conn_id(c, buf);
	struct cconn *cc = malloc(sizeof(*cc));
	if (cc) {
		cc->c = c;
		snprintf(cc->id, sizeof(cc->id), "%s", id);
	}
	if (!cc || dict_put(cl->conns, cc->id, strlen(cc->id), cc) != 0) {
		free(cc);
		log_error("event=redis_conn_track_failed client=%s", id);
	}
}

void cluster_conn_close(struct cluster *cl, struct hub_conn *c)
{
	char buf[HUB_CONN_ID_MAX];
	const char *id = hub_conn_id(c, buf);
	free(dict_del(cl->conns, id, strlen(id)));
}

static struct frame *subscribe_error(int rc, const struct wsp_request *req)
{
	switch (rc) {
	case LH_ELIMIT:
		return wsp_error(WSP_LIMIT_EXCEEDED,
		                 "the connection is on the maximum number of channels", true, req);
	case LH_EINVAL:
		if (req->channel[0] == '$')
			return wsp_error(WSP_CHANNEL_ACCESS_DENIED,
			                 "\"channel\": not one of this connection's own channels",
			                 true, req);
		return wsp_error(WSP_BAD_REQUEST, "invalid \"channel\"", true, req);
	default: return wsp_error(WSP_SERVER_ERROR, "out of memory", true, req);
	}
}

/* After hub_subscribe_since answered rc (0 or LH_EEXIST) for req: queues
 * the reply now or when the channel's position is known (*replied), else
 * returns the error frame to queue (NULL: out of memory). */
static struct frame *subscribe_reply(struct cluster *cl, struct hub_conn *c,
                                     const struct wsp_request *req, int rc, bool *replied)
{
	*replied = false;
	/* The channel as the hub names it: "$user" is the user's channel. */
	char name[LH_CHANNEL_MAX + 1];
	if (strcmp(req->channel, "$user") == 0)
		snprintf(name, sizeof(name), "$user:%s", hub_conn_user(c));
	else
		snprintf(name, sizeof(name), "%s", req->channel);
	struct cchan *ch = chan_find(cl, hub_conn_tenant(c), name);
	struct waiter *w = calloc(1, sizeof(*w));
	if (!w || !ch) {
		free(w);
		return wsp_error(WSP_SERVER_ERROR, "out of memory", true, req);
	}
	hub_conn_id(c, w->conn_id);
	w->has_since = req->has_since;
	w->since = req->since_offset;
	memcpy(w->since_epoch, req->since_epoch, sizeof(w->since_epoch));
	memcpy(w->channel, req->channel, req->channel_len + 1);
	w->channel_len = req->channel_len;
	w->project_alias = req->project_alias;
	memcpy(w->id, req->id, req->id_len + 1);
	w->id_len = req->id_len;
	w->ch = ch;
	ch->refs++;
	ch->waits++;
	/* The join is announced now, not with the (maybe later) reply: an
	 * unsubscribe sent meanwhile announces the leave after it. It goes to
	 * the other connections only, so c's own frames keep their order. */
	if (rc == 0 && req->channel[0] != '$' && cl->pres)
		presence_on_subscribed(cl->pres, cl->h, c, req->channel);
	*replied = true;
	if (ch->state == CC_SYNCING) {
		w->next = ch->waiters;
		ch->waiters = w;
		return NULL;
	}
	resolve(cl, w);
	return NULL;
}

struct frame *cluster_subscribe(struct cluster *cl, struct hub_conn *c,
                                const struct wsp_request *req, bool *replied)
{
	*replied = false;
	struct hub_position pos;
	int rc = hub_subscribe_since(cl->h, c, req->channel, NULL, &pos);
	if (rc != 0 && rc != LH_EEXIST)
		return subscribe_error(rc, req);
	metrics_inc(&lh_metrics.msg_in[MI_SUBSCRIBE], 1);
	return subscribe_reply(cl, c, req, rc, replied);
}

int cluster_subscribe_server(struct cluster *cl, struct hub_conn *c, const char *channel)
{
	if (hub_conn_subscribed(cl->h, c, channel))
		return LH_EEXIST; /* nothing changes, nothing is sent */
	struct hub_position pos;
	int rc = hub_subscribe_since(cl->h, c, channel, NULL, &pos);
	if (rc)
		return rc;
	static struct wsp_request req; /* large; the service thread's only */
	memset(&req, 0, sizeof(req));
	req.type = WSP_SUBSCRIBE;
	req.channel_len = strnlen(channel, LH_CHANNEL_MAX);
	memcpy(req.channel, channel, req.channel_len);
	bool replied;
	struct frame *f = subscribe_reply(cl, c, &req, 0, &replied);
	frame_unref(f);
	return replied ? 0 : LH_ENOMEM;
}

void cluster_publish_raw(struct cluster *cl, const char *tenant, const char *name,
                         const struct frame *f)
{
	if (broker_up(cl->b))
		broker_publish_raw(cl->b, tenant, name, (const char *)f->mem + LH_FRAME_HEADROOM,
		                   f->len);
}

void cluster_set_limits(struct cluster *cl, const struct hist_limits *hist)
{
	cl->hist = *hist;
}

void cluster_set_presence(struct cluster *cl, struct presence *pr)
{
	cl->pres = pr;
}

struct cluster *cluster_new(struct hub *h, struct broker *b, const struct hist_limits *hist)
{
	struct cluster *cl = calloc(1, sizeof(*cl));
	if (!cl)
		return NULL;
	if (hist)
		cl->hist = *hist;
	cl->h = h;
	cl->b = b;
	cl->rng = (uint64_t)(uintptr_t)cl ^ 0x5bd1e995ULL;
	cl->rng ^= (uint64_t)metrics_now_us();
	cl->chans = dict_new(next_rand(cl), offsetof(struct cchan, key));
	cl->conns = dict_new(next_rand(cl), offsetof(struct cconn, id));
	if (!cl->chans || !cl->conns) {
		cluster_free(cl);
		return NULL;
	}
	cl->hooks = (struct hub_cluster){on_first, on_last, publish, history};
	broker_set_channel_fn(b, on_message, cl);
	if (broker_on_state(b, on_state, cl)) {
		cluster_free(cl);
		return NULL;
	}
	hub_set_cluster(h, &cl->hooks, cl);
	return cl;
}

void cluster_free(struct cluster *cl)
{
	if (!cl)
		return;
	if (cl->h)
		hub_set_cluster(cl->h, NULL, NULL);
	if (cl->chans) {
		size_t pos = 0;
		struct dict_entry de;
		while (dict_next(cl->chans, &pos, &de)) {
			dict_del(cl->chans, de.key, de.len);
			chan_drop(de.val);
		}
	}
	dict_free(cl->chans);
	if (cl->conns) {
		size_t pos = 0;
		struct dict_entry de;
		while (dict_next(cl->conns, &pos, &de)) {
			dict_del(cl->conns, de.key, de.len);
			free(de.val);
		}
	}
	dict_free(cl->conns);
	free(cl);
}
