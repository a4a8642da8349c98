/*
 * hub: channels, subscriptions, tenants, users and the per-connection send
 * queues. See hub.h.
 *
 * Data layout. Channels live in a dict under "tenant\x1fname". A channel
 * holds an array of its subscribers and each connection an array of its
 * channels; every entry on one side records its index on the other side, so
 * a subscription is removed from both arrays in O(1) by swapping the last
 * entry into its place and fixing that entry's back-index. Entry 0 of a
 * connection's array is its "$tenant" channel, entry 1 its "$user:{user}"
 * channel, explicit subscriptions follow.
 *
 * Memory. A connection is 120 bytes plus 16 per channel it is on (one entry
 * in the channel's array); the first three channel entries and the first
 * queue slot live inside struct hub_conn. The tenant and user strings are
 * not copied per connection: they are read from the keys of the
 * connection's "$tenant" and "$user:" channels. A channel is ~70 bytes plus
 * its key until something is published on it (struct chan_hist).
 */
#include "hub.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "dict.h"
#include "idem.h"
#include "livehub.h"
#include "names.h"

#define KEY_MAX         (LH_TENANT_MAX + 1 + LH_CHANNEL_MAX)
#define USER_PREFIX     "$user:"
#define USER_PREFIX_LEN (sizeof(USER_PREFIX) - 1)
#define TENANT_NAME     "$tenant"

#define SUB_TENANT          0 /* index of the tenant channel in hub_conn.subs */
#define SUB_USER            1 /* index of the user channel */
#define SUB_FIRST           2 /* first explicit subscription */
#define CONN_INLINE_SUBS    3
#define CONN_INLINE_Q       1  /* a power of two, like every ring capacity */
#define QUEUE_KEEP          8  /* ring slots kept when the queue drains */
#define ID_SEQ_BITS         36 /* the connection counter's share of hub_conn.idv */
#define ID_PREFIX_MASK      0xfffffffULL
#define CLOSE_SLOW_CONSUMER 4000
#define CLOSE_INTERNAL      1011

enum chan_kind { CHAN_PLAIN, CHAN_TENANT, CHAN_USER };

/* A subscriber of a channel; cidx is the channel's index in conn->subs. */
struct sub {
	struct hub_conn *conn;
	uint32_t cidx;
};

/* A channel of a connection; sidx is the connection's index in ch->subs. */
struct csub {
	struct chan *ch;
	uint32_t sidx;
};

/* What a channel needs once something is published on it: its history and
 * its kind's bounds. Allocated at the first publication and given back by
 * hub_sweep once the history is empty, so that the many channels nobody
 * publishes on (a $user: channel per user, idle job: channels) do not carry
 * it: 32 bytes of heap fewer for each (docs/PERFORMANCE.md). */
struct chan_hist {
	struct hist hist;
	uint32_t hsize, httl_s; /* the kind's history bounds, as of lim_gen */
	uint32_t lim_gen;       /* hub's lim_gen when hsize/httl_s were looked up */
};

struct chan {
	struct sub *subs; /* &one while cap is 1, else heap */
	uint32_t nsubs, cap;
	uint64_t next;        /* offset of the next publication, from 1 */
	uint64_t epoch;       /* random; shown as 16 hex digits */
	int64_t last_ms;      /* last publication, creation or loss of the last subscriber */
	struct chan_hist *hx; /* NULL until the first publication (chan_limits) */
	struct sub one;
	uint16_t klen; /* key bytes, without the NUL */
	uint8_t tlen;  /* tenant bytes at the start of the key */
	uint8_t kind;  /* enum chan_kind */
	/* "tenant\x1fname\0"; a CHAN_TENANT record appends "tenant\0" so that
	 * hub_conn_tenant() has a NUL-terminated string to return. */
	char key[];
};

/* The history of a channel without one: empty. */
static const struct hist no_hist;

/* ch's history, empty when it has none. */
static const struct hist *chan_hist(const struct chan *ch)
{
	return ch->hx ? &ch->hx->hist : &no_hist;
}

/* 120 bytes, so that glibc gives it a 128-byte chunk: an idle connection
 * is mostly this, its channels and what lws allocates (docs/PERFORMANCE.md,
 * "Memory per connection"). Check the size when adding a field. */
struct hub_conn {
	void *tctx;
	struct csub *subs; /* inl while subcap is CONN_INLINE_SUBS, else heap */
	struct frame **q;  /* ring; qinl while qcap is CONN_INLINE_Q, else heap */
	uint64_t qbytes;   /* payload bytes queued */
	/* The id, formatted on demand (hub_conn_id): the hub's random 28-bit
	 * prefix above ID_SEQ_BITS bits of its connection counter. */
	uint64_t idv;
	uint32_t nsubs, subcap;
	uint32_t qhead, qlen, qcap;
	uint32_t nkeyed : 30; /* queued frames with a conflation key (< sendq_max_frames) */
	uint32_t dead : 1;    /* killed: nothing more is queued */
	uint32_t pressed : 1; /* raised hub.pressure since its queue was last empty */
	struct csub inl[CONN_INLINE_SUBS];
	struct frame *qinl[CONN_INLINE_Q];
};
_Static_assert(sizeof(struct hub_conn) <= 120, "struct hub_conn outgrew its 128-byte chunk");

struct hub {
	struct hub_limits lim;
	struct hub_transport tr;
	struct dict *chans; /* key -> struct chan */
	uint64_t rng;       /* splitmix64 state */
	uint64_t conn_seq;
	uint32_t id_prefix; /* random, 28 bits: the 7 hex digits of every id */
	uint32_t lim_gen;   /* raised by hub_set_limits */
	bool pressure;      /* a queue crossed half its bound (hub_publish_some) */
	struct hist_pool pool;
	struct idem *idem;
	struct hub_stats st;
	/* Runs control commands (publications with cmd set); see
	 * hub_set_command_runner. */
	void (*run_cmd)(void *arg, struct publication *p);
	void *run_cmd_arg;
	/* Redis mode (hub_set_cluster); NULL in memory mode. */
	const struct hub_cluster *cl;
	void *cl_arg;
};

static int enqueue(struct hub *h, struct hub_conn *c, struct frame *f);
static struct chan *chan_find(struct hub *h, const char *tenant, const char *name);
static void chan_trim(struct hub *h, struct chan *ch, int64_t now_ms);

/* ------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------ */

/* Counters have one writer (the service thread): a relaxed load and store
 * is enough and cheaper than an atomic read-modify-write. */
static void stat_add(_Atomic uint64_t *v, int64_t d)
{
	uint64_t x = atomic_load_explicit(v, memory_order_relaxed);
	atomic_store_explicit(v, x + (uint64_t)d, memory_order_relaxed);
}

static uint64_t rng_next(struct hub *h)
{
	uint64_t z = (h->rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t seed_random(void)
{
	uint64_t s = 0;
	if (getrandom(&s, sizeof(s), 0) == (ssize_t)sizeof(s))
		return s;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)&s;
}

/* Wall-clock milliseconds, the clock of p->ts_ms and of hub_sweep's now. */
static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *put(char *o, const char *s, size_t n)
{
	memcpy(o, s, n);
	return o + n;
}

#define PUTS(o, lit) put((o), (lit), sizeof(lit) - 1)

static char *put_u64(char *o, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	return put(o, tmp + i, sizeof(tmp) - i);
}

static char *put_i64(char *o, int64_t v)
{
	if (v < 0) {
		*o++ = '-';
		return put_u64(o, (uint64_t)0 - (uint64_t)v);
	}
	return put_u64(o, (uint64_t)v);
}

/* Writes v as n lowercase hex digits (no NUL). */
static char *put_hex(char *o, uint64_t v, int n)
{
	static const char hex[] = "0123456789abcdef";
	for (int i = n - 1; i >= 0; i--) {
		o[i] = hex[v & 15];
		v >>= 4;
	}
	return o + n;
}

/* Writes "tenant\x1fname" into buf (KEY_MAX bytes); returns its length. */
static size_t make_key(char *buf, const char *tenant, size_t tlen, const char *name, size_t nlen)
{
	char *o = put(buf, tenant, tlen);
	*o++ = LH_KEY_SEP;
	o = put(o, name, nlen);
	return (size_t)(o - buf);
}

/* ------------------------------------------------------------------------
 * Channels
 * ------------------------------------------------------------------------ */

/* Publishes the history pool's gauges. */
static void hist_stats(struct hub *h)
{
	atomic_store_explicit(&h->st.history_bytes, h->pool.bytes, memory_order_relaxed);
	atomic_store_explicit(&h->st.history_entries, h->pool.entries, memory_order_relaxed);
}

static const char *chan_name(const struct chan *ch)
{
	return ch->key + ch->tlen + 1;
}

static size_t chan_name_len(const struct chan *ch)
{
	return (size_t)ch->klen - ch->tlen - 1;
}

static enum chan_kind kind_of(const char *name, size_t n)
{
	if (n == sizeof(TENANT_NAME) - 1 && memcmp(name, TENANT_NAME, n) == 0)
		return CHAN_TENANT;
	if (n > USER_PREFIX_LEN && memcmp(name, USER_PREFIX, USER_PREFIX_LEN) == 0)
		return CHAN_USER;
	return CHAN_PLAIN;
}

/* Creates the channel keyed key[0..klen) whose tenant is key[0..tlen) and
 * adds it to the dict. Returns it, or NULL when out of memory. */
static struct chan *chan_new(struct hub *h, const char *key, size_t klen, size_t tlen)
{
	enum chan_kind kind = kind_of(key + tlen + 1, klen - tlen - 1);
	size_t extra = kind == CHAN_TENANT ? tlen + 1 : 0;
	/* The key starts inside the struct's tail padding. */
	struct chan *ch = calloc(1, offsetof(struct chan, key) + klen + 1 + extra);
	if (!ch)
		return NULL;
	memcpy(ch->key, key, klen);
	if (kind == CHAN_TENANT)
		memcpy(ch->key + klen + 1, key, tlen);
	ch->klen = (uint16_t)klen;
	ch->tlen = (uint8_t)tlen;
	ch->kind = (uint8_t)kind;
	ch->subs = &ch->one;
	ch->cap = 1;
	ch->next = 1;
	ch->epoch = rng_next(h);
	ch->last_ms = wall_ms();
	if (dict_put(h->chans, ch->key, klen, ch) != 0) {
		free(ch);
		return NULL;
	}
	stat_add(&h->st.channels, 1);
	return ch;
}

static struct chan *chan_get(struct hub *h, const char *key, size_t klen, size_t tlen)
{
	struct chan *ch = dict_get(h->chans, key, klen);
	return ch ? ch : chan_new(h, key, klen, tlen);
}

/* Removes ch from the dict and frees it; it has no subscriber. */
static void chan_free(struct hub *h, struct chan *ch)
{
	dict_del(h->chans, ch->key, ch->klen);
	if (ch->hx) {
		hist_clear(&h->pool, &ch->hx->hist);
		hist_stats(h);
		free(ch->hx);
	}
	if (ch->subs != &ch->one)
		free(ch->subs);
	free(ch);
	stat_add(&h->st.channels, -1);
}

/* Makes room for one more subscriber. Returns 0 or LH_ENOMEM. */
static int chan_reserve(struct chan *ch)
{
	if (ch->nsubs < ch->cap)
		return 0;
	if (ch->cap > UINT32_MAX / 2)
		return LH_ENOMEM;
	uint32_t cap = ch->cap * 2;
	struct sub *s;
	if (ch->subs == &ch->one) {
		s = malloc(cap * sizeof(*s));
		if (s)
			s[0] = ch->one;
	} else {
		s = realloc(ch->subs, cap * sizeof(*s));
	}
	if (!s)
		return LH_ENOMEM;
	ch->subs = s;
	ch->cap = cap;
	return 0;
}

/* Counts tenants and users online: the implicit channels with a subscriber. */
static void count_presence(struct hub *h, const struct chan *ch, int d)
{
	if (ch->kind == CHAN_TENANT)
		stat_add(&h->st.tenants, d);
	else if (ch->kind == CHAN_USER)
		stat_add(&h->st.users, d);
}

/* Tells the cluster glue about ch (its first subscriber came, or its last
 * went). */
static void cluster_hook(struct hub *h, const struct chan *ch,
                         void (*fn)(void *arg, const char *tenant, const char *name))
{
	char tenant[LH_TENANT_MAX + 1];
	memcpy(tenant, ch->key, ch->tlen);
	tenant[ch->tlen] = '\0';
	fn(h->cl_arg, tenant, chan_name(ch));
}

/* Removes subscriber i from ch, moving the last one into its place. An
 * emptied channel gives back its array and starts its idle time. */
static void chan_del_sub(struct hub *h, struct chan *ch, uint32_t i)
{
	uint32_t last = --ch->nsubs;
	if (i != last) {
		struct sub *s = &ch->subs[i];
		*s = ch->subs[last];
		s->conn->subs[s->cidx].sidx = i;
	}
	if (ch->nsubs > 0)
		return;
	if (ch->subs != &ch->one) {
		free(ch->subs);
		ch->subs = &ch->one;
		ch->cap = 1;
	}
	ch->last_ms = wall_ms();
	count_presence(h, ch, -1);
	if (h->cl)
		cluster_hook(h, ch, h->cl->on_last);
	/* A channel that never carried a publication has no offsets worth
	 * keeping: free it now, so subscribe/unsubscribe loops cannot pile up
	 * empty channels until the sweep. Callers must not use ch after this. */
	if (ch->next == 1)
		chan_free(h, ch);
}

/* ------------------------------------------------------------------------
 * Connections and subscriptions
 * ------------------------------------------------------------------------ */

/* Makes room for one more channel in c->subs. Returns 0 or LH_ENOMEM. */
static int conn_reserve(struct hub_conn *c)
{
	if (c->nsubs < c->subcap)
		return 0;
	if (c->subcap > UINT32_MAX / 2)
		return LH_ENOMEM;
	uint32_t cap = c->subcap * 2;
	struct csub *s;
	if (c->subs == c->inl) {
		s = malloc(cap * sizeof(*s));
		if (s)
			memcpy(s, c->inl, sizeof(c->inl));
	} else {
		s = realloc(c->subs, cap * sizeof(*s));
	}
	if (!s)
		return LH_ENOMEM;
	c->subs = s;
	c->subcap = cap;
	return 0;
}

/* Puts c on ch. Returns 0 or LH_ENOMEM. */
static int link_chan(struct hub *h, struct hub_conn *c, struct chan *ch)
{
	if (conn_reserve(c) || chan_reserve(ch))
		return LH_ENOMEM;
	uint32_t k = c->nsubs++;
	uint32_t i = ch->nsubs++;
	c->subs[k] = (struct csub){ch, i};
	ch->subs[i] = (struct sub){c, k};
	if (i == 0) {
		count_presence(h, ch, 1);
		if (h->cl)
			cluster_hook(h, ch, h->cl->on_first);
	}
	return 0;
}

/* Removes explicit subscription k (>= SUB_FIRST) from both sides. */
static void unlink_chan(struct hub *h, struct hub_conn *c, uint32_t k)
{
	chan_del_sub(h, c->subs[k].ch, c->subs[k].sidx);
	uint32_t last = --c->nsubs;
	if (k != last) {
		struct csub *s = &c->subs[k];
		*s = c->subs[last];
		s->ch->subs[s->sidx].cidx = k;
	}
	/* Back to the inline array once only the implicit channels are left. */
	if (c->nsubs == SUB_FIRST && c->subs != c->inl) {
		memcpy(c->inl, c->subs, SUB_FIRST * sizeof(*c->subs));
		free(c->subs);
		c->subs = c->inl;
		c->subcap = CONN_INLINE_SUBS;
	}
}

/* Index of ch in c->subs, or -1. Scans the shorter of the connection's
 * explicit subscriptions (bounded by max_subs_per_conn) and the channel's
 * subscribers, so neither a busy channel nor a busy connection is slow. */
static int64_t find_sub(const struct hub_conn *c, const struct chan *ch)
{
	if (c->nsubs - SUB_FIRST <= ch->nsubs) {
		for (uint32_t k = SUB_FIRST; k < c->nsubs; k++)
			if (c->subs[k].ch == ch)
				return k;
	} else {
		for (uint32_t i = 0; i < ch->nsubs; i++)
			if (ch->subs[i].conn == c)
				return ch->subs[i].cidx;
	}
	return -1;
}

/* Gives c the next id. When the counter has used its ID_SEQ_BITS bits the
 * hub takes a new random prefix and counts from 1 again. */
static void conn_set_id(struct hub *h, struct hub_conn *c)
{
	if (++h->conn_seq >> ID_SEQ_BITS) {
		h->id_prefix = (uint32_t)(rng_next(h) & ID_PREFIX_MASK);
		h->conn_seq = 1;
	}
	c->idv = (uint64_t)h->id_prefix << ID_SEQ_BITS | h->conn_seq;
}

/* Drops every queued frame and returns the ring to its inline slots. */
static void queue_clear(struct hub_conn *c)
{
	for (uint32_t i = 0; i < c->qlen; i++)
		frame_unref(c->q[(c->qhead + i) & (c->qcap - 1)]);
	if (c->q != c->qinl)
		free(c->q);
	c->q = c->qinl;
	c->qcap = CONN_INLINE_Q;
	c->qhead = c->qlen = 0;
	c->nkeyed = 0;
	c->qbytes = 0;
}

/* Takes c off every channel and frees it; no stats but the presence ones. */
static void conn_destroy(struct hub *h, struct hub_conn *c)
{
	for (uint32_t k = 0; k < c->nsubs; k++)
		chan_del_sub(h, c->subs[k].ch, c->subs[k].sidx);
	if (c->subs != c->inl)
		free(c->subs);
	queue_clear(c);
	free(c);
}

struct hub_conn *hub_conn_open(struct hub *h, const char *tenant, const char *user, void *tctx)
{
	size_t tlen = strnlen(tenant, LH_TENANT_MAX + 1);
	size_t ulen = strnlen(user, LH_USER_MAX + 1);
	if (!name_tenant_ok(tenant, tlen) || !name_user_ok(user, ulen))
		return NULL;
	struct hub_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->tctx = tctx;
	c->subs = c->inl;
	c->subcap = CONN_INLINE_SUBS;
	c->q = c->qinl;
	c->qcap = CONN_INLINE_Q;

	char key[KEY_MAX], name[USER_PREFIX_LEN + LH_USER_MAX];
	size_t klen = make_key(key, tenant, tlen, TENANT_NAME, sizeof(TENANT_NAME) - 1);
	struct chan *ch = chan_get(h, key, klen, tlen);
	if (!ch || link_chan(h, c, ch))
		goto fail;
	memcpy(name, USER_PREFIX, USER_PREFIX_LEN);
	memcpy(name + USER_PREFIX_LEN, user, ulen);
	klen = make_key(key, tenant, tlen, name, USER_PREFIX_LEN + ulen);
	ch = chan_get(h, key, klen, tlen);
	if (!ch || link_chan(h, c, ch))
		goto fail;

	conn_set_id(h, c);
	stat_add(&h->st.connections, 1);
	stat_add(&h->st.connections_total, 1);
	return c;
fail:
	/* A channel created above stays empty until hub_sweep frees it. */
	conn_destroy(h, c);
	return NULL;
}

void hub_conn_close(struct hub *h, struct hub_conn *c)
{
	if (!c)
		return;
	stat_add(&h->st.subscriptions, -(int64_t)(c->nsubs - SUB_FIRST));
	stat_add(&h->st.connections, -1);
	conn_destroy(h, c);
}

uint32_t hub_tenant_conns(struct hub *h, const char *tenant)
{
	char key[KEY_MAX];
	size_t tlen = strnlen(tenant, LH_TENANT_MAX + 1);
	if (!name_tenant_ok(tenant, tlen))
		return 0;
	size_t klen = make_key(key, tenant, tlen, TENANT_NAME, sizeof(TENANT_NAME) - 1);
	const struct chan *ch = dict_get(h->chans, key, klen);
	return ch ? ch->nsubs : 0;
}

uint32_t hub_user_conns(struct hub *h, const char *tenant, const char *user)
{
	char key[KEY_MAX], name[USER_PREFIX_LEN + LH_USER_MAX];
	size_t tlen = strnlen(tenant, LH_TENANT_MAX + 1);
	size_t ulen = strnlen(user, LH_USER_MAX + 1);
	if (!name_tenant_ok(tenant, tlen) || !name_user_ok(user, ulen))
		return 0;
	memcpy(name, USER_PREFIX, USER_PREFIX_LEN);
	memcpy(name + USER_PREFIX_LEN, user, ulen);
	size_t klen = make_key(key, tenant, tlen, name, USER_PREFIX_LEN + ulen);
	const struct chan *ch = dict_get(h->chans, key, klen);
	return ch ? ch->nsubs : 0;
}

const char *hub_conn_tenant(const struct hub_conn *c)
{
	const struct chan *ch = c->subs[SUB_TENANT].ch;
	return ch->key + ch->klen + 1;
}

const char *hub_conn_user(const struct hub_conn *c)
{
	return chan_name(c->subs[SUB_USER].ch) + USER_PREFIX_LEN;
}

const char *hub_conn_id(const struct hub_conn *c, char buf[HUB_CONN_ID_MAX])
{
	char *o = buf;
	*o++ = 'c';
	o = put_hex(o, c->idv >> ID_SEQ_BITS, 7);
	*o++ = '-';
	o = put_u64(o, c->idv & (((uint64_t)1 << ID_SEQ_BITS) - 1));
	*o = '\0';
	return buf;
}

/* Looks up the channel c calls name, validated with name_channel_ok.
 * Returns 0 and *out (NULL when absent and !create), or an LH_E* value. */
static int conn_chan(struct hub *h, struct hub_conn *c, const char *name, bool create,
                     struct chan **out)
{
	size_t nlen = strnlen(name, LH_CHANNEL_MAX + 1);
	if (!name_channel_ok(name, nlen))
		return LH_EINVAL;
	const struct chan *tch = c->subs[SUB_TENANT].ch;
	char key[KEY_MAX];
	size_t klen = make_key(key, tch->key, tch->tlen, name, nlen);
	*out = create ? chan_get(h, key, klen, tch->tlen) : dict_get(h->chans, key, klen);
	return create && !*out ? LH_ENOMEM : 0;
}

/* hub_subscribe, giving back the channel (also when LH_EEXIST). */
static int subscribe_chan(struct hub *h, struct hub_conn *c, const char *name, struct chan **out)
{
	struct chan *ch;
	/* At the limit, only look: a client must not create channels it
	 * cannot join. */
	bool full = c->nsubs - SUB_FIRST >= h->lim.max_subs_per_conn;
	int rc = conn_chan(h, c, name, !full, &ch);
	if (rc)
		return rc;
	*out = ch;
	if (ch && find_sub(c, ch) >= 0)
		return LH_EEXIST;
	if (full)
		return LH_ELIMIT;
	rc = link_chan(h, c, ch);
	if (rc)
		return rc;
	stat_add(&h->st.subscriptions, 1);
	return 0;
}

int hub_subscribe(struct hub *h, struct hub_conn *c, const char *name)
{
	struct chan *ch;
	return subscribe_chan(h, c, name, &ch);
}

/* The implicit channel of c that name means ("$tenant", "$user",
 * "$user:{own user}"), or NULL. */
static struct chan *implicit_chan(const struct hub_conn *c, const char *name)
{
	if (strcmp(name, TENANT_NAME) == 0)
		return c->subs[SUB_TENANT].ch;
	struct chan *uch = c->subs[SUB_USER].ch;
	if (strcmp(name, "$user") == 0 || strcmp(name, chan_name(uch)) == 0)
		return uch;
	return NULL;
}

/* Fills pos with ch's top offset and epoch and, when since is given,
 * whether its history covers everything after since->offset. */
static void chan_position(struct hub *h, struct chan *ch, const struct hub_since *since,
                          struct hub_position *pos, bool count)
{
	chan_trim(h, ch, wall_ms());
	pos->offset = ch->next - 1;
	put_hex(pos->epoch, ch->epoch, 16);
	pos->epoch[16] = '\0';
	pos->recovered = false;
	pos->replay = 0;
	pos->from = NULL;
	if (!since || !since->given)
		return;
	const struct hist_entry *first = NULL;
	uint32_t n = 0;
	pos->recovered = strcmp(since->epoch, pos->epoch) == 0 &&
	                 hist_range(chan_hist(ch), since->offset, pos->offset, &first, &n);
	if (pos->recovered) {
		pos->from = first;
		pos->replay = n;
	}
	if (count)
		stat_add(pos->recovered ? &h->st.recoveries : &h->st.recovery_misses, 1);
}

int hub_subscribe_since(struct hub *h, struct hub_conn *c, const char *name,
                        const struct hub_since *since, struct hub_position *pos)
{
	struct chan *ch = NULL;
	int rc;
	if (name[0] == '$') {
		ch = implicit_chan(c, name);
		rc = ch ? 0 : LH_EINVAL;
	} else {
		rc = subscribe_chan(h, c, name, &ch);
	}
	if (rc != 0 && rc != LH_EEXIST)
		return rc;
	chan_position(h, ch, since, pos, true);
	return rc;
}

void hub_replay(struct hub *h, struct hub_conn *c, const struct hub_position *pos)
{
	const struct hist_entry *e = pos->from;
	uint32_t n = 0;
	for (uint32_t i = 0; e && i < pos->replay; i++, e = e->next)
		if (enqueue(h, c, e->f) == 0)
			n++;
	stat_add(&h->st.messages_delivered, n);
}

int hub_unsubscribe(struct hub *h, struct hub_conn *c, const char *name)
{
	struct chan *ch;
	int rc = conn_chan(h, c, name, false, &ch);
	if (rc)
		return rc;
	int64_t k = ch ? find_sub(c, ch) : -1;
	if (k < 0)
		return LH_ENOENT;
	unlink_chan(h, c, (uint32_t)k);
	stat_add(&h->st.subscriptions, -1);
	return 0;
}

/* ------------------------------------------------------------------------
 * Send queues
 * ------------------------------------------------------------------------ */

/* Marks c dead, frees its queue (it will never be written) and asks the
 * transport to close it. */
static void conn_kill(struct hub *h, struct hub_conn *c, int code, const char *reason)
{
	c->dead = true;
	stat_add(&h->st.dropped, c->qlen);
	queue_clear(c);
	h->tr.kill(c->tctx, code, reason);
}

/* Doubles the ring, unwrapping it to start at slot 0. */
static int queue_grow(struct hub_conn *c)
{
	if (c->qcap > UINT32_MAX / 2)
		return LH_ENOMEM;
	uint32_t cap = c->qcap * 2;
	struct frame **q = malloc(cap * sizeof(*q));
	if (!q)
		return LH_ENOMEM;
	for (uint32_t i = 0; i < c->qlen; i++)
		q[i] = c->q[(c->qhead + i) & (c->qcap - 1)];
	if (c->q != c->qinl)
		free(c->q);
	c->q = q;
	c->qcap = cap;
	c->qhead = 0;
	return 0;
}

/* The i-th oldest queued frame; i < c->qlen. */
static struct frame *queue_at(const struct hub_conn *c, uint32_t i)
{
	return c->q[(c->qhead + i) & (c->qcap - 1)];
}

/* Drops a queued frame with the same conflation key as f, if any: scans
 * from the newest (a conflated key is usually near the back) and closes
 * the gap by moving the newer frames one slot towards the front. Cheap
 * when nothing keyed is queued, which is the case of a healthy reader. */
static void conflate(struct hub *h, struct hub_conn *c, const struct frame *f)
{
	if (c->nkeyed == 0)
		return;
	uint32_t i = c->qlen;
	while (i-- > 0)
		if (queue_at(c, i)->key == f->key)
			break;
	if (i == UINT32_MAX)
		return;
	struct frame *old = queue_at(c, i);
	for (uint32_t j = i; j + 1 < c->qlen; j++)
		c->q[(c->qhead + j) & (c->qcap - 1)] = queue_at(c, j + 1);
	c->qlen--;
	c->nkeyed--;
	c->qbytes -= old->len;
	frame_unref(old);
	stat_add(&h->st.conflated, 1);
}

/* Queues a reference to f on c. Past the bound (or out of memory) c is
 * killed instead. Returns 0, LH_EFULL or LH_ENOMEM. The transport's kill
 * must not call hub_conn_close() from inside (see hub.h). */
static int enqueue(struct hub *h, struct hub_conn *c, struct frame *f)
{
	if (c->dead)
		return LH_EFULL;
	if (f->key)
		conflate(h, c, f);
	/* A frame bigger than the byte bound alone still goes to an empty
	 * queue: the bound is on a backlog, not on one message. */
	if (c->qlen >= h->lim.sendq_max_frames ||
	    (c->qlen > 0 && c->qbytes + f->len > h->lim.sendq_max_bytes)) {
		stat_add(&h->st.slow_consumers, 1);
		conn_kill(h, c, CLOSE_SLOW_CONSUMER, "SLOW_CONSUMER");
		return LH_EFULL;
	}
	if (c->qlen == c->qcap && queue_grow(c)) {
		conn_kill(h, c, CLOSE_INTERNAL, "SERVER_ERROR");
		return LH_ENOMEM;
	}
	c->q[(c->qhead + c->qlen) & (c->qcap - 1)] = frame_ref(f);
	/* Half the bound, crossed going up: the drain lets c write first. Once
	 * per busy period of c (until its queue is empty again), so that a
	 * reader that never catches up cannot make the drain yield for every
	 * publication and slow everyone else. */
	uint32_t half_frames = h->lim.sendq_max_frames / 2;
	uint64_t half_bytes = h->lim.sendq_max_bytes / 2;
	if (!c->pressed && ((half_frames >= 2 && c->qlen + 1 >= half_frames) ||
	                    c->qbytes + f->len >= half_bytes)) {
		c->pressed = true;
		h->pressure = true;
	}
	c->qbytes += f->len;
	c->nkeyed += f->key != 0;
	if (c->qlen++ == 0)
		h->tr.want_write(c->tctx);
	return 0;
}

int hub_conn_send(struct hub *h, struct hub_conn *c, struct frame *f)
{
	return enqueue(h, c, f);
}

struct frame *hub_conn_peek(struct hub_conn *c)
{
	return c->qlen ? c->q[c->qhead] : NULL;
}

void hub_conn_pop(struct hub_conn *c)
{
	if (!c->qlen)
		return;
	struct frame *f = c->q[c->qhead];
	c->qbytes -= f->len;
	c->nkeyed -= f->key != 0;
	frame_unref(f);
	c->qhead = (c->qhead + 1) & (c->qcap - 1);
	/* A drained ring that grew large for a burst gives its memory back;
	 * small ones are kept to avoid a malloc per burst. */
	if (--c->qlen == 0)
		c->pressed = false;
	if (c->qlen == 0 && c->qcap > QUEUE_KEEP)
		queue_clear(c);
}

size_t hub_conn_queued(const struct hub_conn *c)
{
	return c->qlen;
}

uint64_t hub_conn_queued_bytes(const struct hub_conn *c)
{
	return c->qbytes;
}

size_t hub_conn_take_batch(struct hub_conn *c, unsigned char *buf, size_t cap, size_t max_frames,
                           size_t *nframes)
{
	/* Count first, so that a batch of one is never copied. */
	size_t n = 0, bytes = 0;
	while (n < c->qlen && n < max_frames) {
		size_t len = queue_at(c, (uint32_t)n)->len + (n > 0);
		if (len > cap - bytes)
			break;
		bytes += len;
		n++;
	}
	*nframes = 0;
	if (n < 2)
		return 0;
	unsigned char *o = buf;
	for (size_t i = 0; i < n; i++) {
		struct frame *f = hub_conn_peek(c);
		if (i > 0)
			*o++ = '\n';
		memcpy(o, frame_payload(f), f->len);
		o += f->len;
		hub_conn_pop(c);
	}
	*nframes = n;
	return bytes;
}

/* ------------------------------------------------------------------------
 * Publishing
 * ------------------------------------------------------------------------ */

/* Checks every name of p. Returns 0 or LH_EINVAL. */
static int pub_check(const struct publication *p)
{
	if (p->nchannels < 1 || p->nchannels > LH_PUB_MAX_CHANNELS)
		return LH_EINVAL;
	if (!name_tenant_ok(p->tenant, strnlen(p->tenant, sizeof(p->tenant))) ||
	    !name_type_ok(p->type, strnlen(p->type, sizeof(p->type))))
		return LH_EINVAL;
	for (int i = 0; i < p->nchannels; i++) {
		const char *n = p->channels[i];
		if (!name_channel_any_ok(n, strnlen(n, sizeof(p->channels[i]))))
			return LH_EINVAL;
	}
	return 0;
}

/* The conflation key of a frame on ch: the publication's key (tenant, job,
 * item) mixed with the channel, so that the job: and project: frames of
 * one progress event never replace each other. Never 0. */
static uint64_t chan_conflate_key(uint64_t key, const struct chan *ch)
{
	uint64_t x = key;
	for (uint16_t i = 0; i < ch->klen; i++)
		x = (x ^ (unsigned char)ch->key[i]) * 1099511628211ULL;
	return x ? x : 1;
}

/* Gives ch its history part if it has none and brings its history bounds
 * up to date with the hub's limits. Returns it, or NULL when out of memory. */
static struct chan_hist *chan_limits(struct hub *h, struct chan *ch)
{
	struct chan_hist *hx = ch->hx;
	if (!hx) {
		hx = calloc(1, sizeof(*hx));
		if (!hx)
			return NULL;
		ch->hx = hx;
	}
	if (hx->lim_gen == h->lim_gen)
		return hx;
	hist_kind_of(&h->lim.hist, chan_name(ch), chan_name_len(ch), &hx->hsize, &hx->httl_s);
	hx->lim_gen = h->lim_gen;
	return hx;
}

/* Drops ch's history entries past its kind's size and TTL at now_ms. */
static void chan_trim(struct hub *h, struct chan *ch, int64_t now_ms)
{
	if (!ch->hx || !ch->hx->hist.n)
		return;
	struct chan_hist *hx = chan_limits(h, ch);
	int64_t cutoff = hx->httl_s ? now_ms - (int64_t)hx->httl_s * 1000 : INT64_MIN;
	hist_trim(&h->pool, &hx->hist, cutoff, hx->hsize);
	hist_stats(h);
}

/* Builds the event frame of p on ch at offset ch->next, written straight
 * into the frame (names are validated charsets: no escaping needed).
 * Returns it with one reference, or NULL when out of memory. */
static struct frame *event_frame(const struct publication *p, const struct chan *ch)
{
	static const char fixed[] =
	        "{\"type\":\"\",\"channel\":\"\",\"offset\":,\"epoch\":\"\",\"ts\":,\"data\":}";
	const char *data = p->data && p->data_len ? p->data : "{}";
	size_t dlen = p->data && p->data_len ? p->data_len : 2;
	size_t tlen = strlen(p->type), nlen = chan_name_len(ch);
	struct frame *f = frame_new(sizeof(fixed) - 1 + tlen + nlen + 20 + 16 + 20 + dlen);
	if (!f)
		return NULL;
	char *o = (char *)frame_payload(f);
	char *start = o;
	o = PUTS(o, "{\"type\":\"");
	o = put(o, p->type, tlen);
	o = PUTS(o, "\",\"channel\":\"");
	o = put(o, chan_name(ch), nlen);
	o = PUTS(o, "\",\"offset\":");
	o = put_u64(o, ch->next);
	o = PUTS(o, ",\"epoch\":\"");
	o = put_hex(o, ch->epoch, 16);
	o = PUTS(o, "\",\"ts\":");
	o = put_i64(o, p->ts_ms);
	o = PUTS(o, ",\"data\":");
	o = put(o, data, dlen);
	*o++ = '}';
	f->len = (uint32_t)(o - start);
	f->key = p->conflate_key ? chan_conflate_key(p->conflate_key, ch) : 0;
	f->t0_us = p->t0_us;
	return f;
}

/* Publishes p on its channel i. Returns 0 or LH_ENOMEM. */
static int publish_one(struct hub *h, struct publication *p, int i)
{
	size_t tlen = strlen(p->tenant);
	char key[KEY_MAX];
	size_t klen = make_key(key, p->tenant, tlen, p->channels[i], strlen(p->channels[i]));
	struct chan *ch = chan_get(h, key, klen, tlen);
	if (!ch)
		return LH_ENOMEM;
	/* Nobody on the channel and no history: the offset still advances,
	 * no frame is built. */
	struct chan_hist *hx = chan_limits(h, ch);
	if (!hx)
		return LH_ENOMEM;
	struct frame *f = NULL;
	if ((ch->nsubs > 0 || hx->hsize > 0) && !(f = event_frame(p, ch)))
		return LH_ENOMEM;
	struct pub_position *pos = &p->pos[i];
	pos->offset = ch->next++;
	/* Out of memory for the history entry only makes a hole, which a
	 * recovery across it reports as recovered:false. */
	if (hx->hsize > 0) {
		hist_push(&h->pool, &hx->hist, f, pos->offset, p->ts_ms, hx->hsize);
		chan_trim(h, ch, p->ts_ms);
	}
	put_hex(pos->epoch, ch->epoch, 16);
	pos->epoch[16] = '\0';
	if (p->ts_ms > ch->last_ms)
		ch->last_ms = p->ts_ms;
	uint32_t n = 0;
	for (uint32_t s = 0; s < ch->nsubs; s++)
		if (enqueue(h, ch->subs[s].conn, f) == 0)
			n++;
	frame_unref(f);
	pos->subscribers = n;
	p->subscribers += n;
	stat_add(&h->st.messages_published, 1);
	stat_add(&h->st.messages_delivered, n);
	return 0;
}

/* An idempotent retry: fills p from the first call's result (or fails it
 * with LH_EEXIST when the key was used for a different publication).
 * Returns false when (tenant, key) is not in the window. */
static bool publish_again(struct hub *h, struct publication *p, int64_t now_ms)
{
	int64_t since = now_ms - (int64_t)h->lim.idem_window_s * 1000;
	const struct idem_result *r = idem_get(h->idem, p->tenant, p->idem_key, since);
	if (!r)
		return false;
	if (r->digest != idem_digest(p)) {
		p->status = LH_EEXIST;
		return true;
	}
	p->status = 0;
	p->subscribers = r->subscribers;
	memcpy(p->pos, r->pos, sizeof(p->pos));
	p->duplicate = true;
	stat_add(&h->st.deduplicated, 1);
	return true;
}

/* Records p's result under its idempotency key. */
static void remember(struct hub *h, const struct publication *p, int64_t now_ms)
{
	struct idem_result r = {
	        .digest = idem_digest(p), .nchannels = p->nchannels, .subscribers = p->subscribers};
	memcpy(r.pos, p->pos, sizeof(r.pos));
	idem_put(h->idem, p->tenant, p->idem_key, &r, now_ms, h->lim.idem_max);
	atomic_store_explicit(&h->st.idempotency_keys, idem_count(h->idem), memory_order_relaxed);
}

void hub_set_command_runner(struct hub *h, void (*run)(void *arg, struct publication *p), void *arg)
{
	h->run_cmd = run;
	h->run_cmd_arg = arg;
}

void hub_publish(struct hub *h, struct publication *p)
{
	if (p->cmd) {
		if (h->run_cmd) {
			h->run_cmd(h->run_cmd_arg, p);
		} else {
			p->status = LH_EINVAL;
			if (p->on_done)
				p->on_done(p);
		}
		return;
	}
	if (p->kind == PUB_HISTORY) {
		if (h->cl)
			h->cl->history(h->cl_arg, p);
		else
			hub_history(h, p);
		return;
	}
	if (h->cl) {
		h->cl->publish(h->cl_arg, p);
		return;
	}
	p->subscribers = 0;
	p->duplicate = false;
	memset(p->pos, 0, sizeof(p->pos));
	int rc = pub_check(p);
	bool keyed = rc == 0 && p->idem_key[0] != '\0';
	int64_t now = keyed ? wall_ms() : 0;
	if (keyed && publish_again(h, p, now)) {
		if (p->on_done)
			p->on_done(p);
		return;
	}
	for (int i = 0; rc == 0 && i < p->nchannels; i++)
		rc = publish_one(h, p, i);
	if (keyed && rc == 0)
		remember(h, p, now);
	p->status = rc;
	if (p->on_done)
		p->on_done(p);
}

void hub_set_cluster(struct hub *h, const struct hub_cluster *cl, void *arg)
{
	h->cl = cl;
	h->cl_arg = arg;
}

uint64_t hub_conflate_key(uint64_t key, const char *tenant, const char *name)
{
	char k[KEY_MAX];
	size_t tlen = strlen(tenant);
	size_t klen = make_key(k, tenant, tlen, name, strlen(name));
	uint64_t x = key;
	for (size_t i = 0; i < klen; i++)
		x = (x ^ (unsigned char)k[i]) * 1099511628211ULL;
	return x ? x : 1;
}

void hub_channel_sync(struct hub *h, const char *tenant, const char *name, uint64_t top,
                      uint64_t epoch)
{
	struct chan *ch = chan_find(h, tenant, name);
	if (!ch)
		return;
	if ((ch->epoch != epoch || ch->next != top + 1) && ch->hx) {
		hist_clear(&h->pool, &ch->hx->hist);
		hist_stats(h);
	}
	ch->epoch = epoch;
	ch->next = top + 1;
}

size_t hub_deliver_event(struct hub *h, const char *tenant, const char *name, struct frame *f,
                         uint64_t offset, uint64_t epoch, int64_t ts_ms,
                         bool (*skip)(void *arg, const struct hub_conn *c), void *skip_arg)
{
	struct chan *ch = chan_find(h, tenant, name);
	if (!ch)
		return 0;
	/* The cache holds a contiguous run of one epoch, like a history. */
	if (ch->epoch != epoch || offset != ch->next) {
		if (ch->hx)
			hist_clear(&h->pool, &ch->hx->hist);
		ch->epoch = epoch;
	}
	ch->next = offset + 1;
	/* Out of memory for the cache only makes a hole (a read instead). */
	struct chan_hist *hx = chan_limits(h, ch);
	if (hx && hx->hsize > 0) {
		hist_push(&h->pool, &hx->hist, f, offset, ts_ms, hx->hsize);
		chan_trim(h, ch, wall_ms());
	}
	if (ts_ms > ch->last_ms)
		ch->last_ms = ts_ms;
	if (!skip)
		return hub_deliver(h, tenant, name, f);
	uint32_t n = 0;
	for (uint32_t s = 0; s < ch->nsubs; s++)
		if (!skip(skip_arg, ch->subs[s].conn) && enqueue(h, ch->subs[s].conn, f) == 0)
			n++;
	stat_add(&h->st.messages_delivered, n);
	return n;
}

int hub_channel_recover(struct hub *h, struct hub_conn *c, const char *name,
                        const struct hub_since *since, struct hub_position *pos)
{
	struct chan *ch =
	        name[0] == '$' ? implicit_chan(c, name) : chan_find(h, hub_conn_tenant(c), name);
	if (!ch)
		return LH_ENOENT;
	chan_position(h, ch, since, pos, false);
	return 0;
}

void hub_count_recovery(struct hub *h, bool recovered)
{
	stat_add(recovered ? &h->st.recoveries : &h->st.recovery_misses, 1);
}

size_t hub_deliver(struct hub *h, const char *tenant, const char *name, struct frame *f)
{
	struct chan *ch = chan_find(h, tenant, name);
	if (!ch)
		return 0;
	uint32_t n = 0;
	for (uint32_t s = 0; s < ch->nsubs; s++)
		if (enqueue(h, ch->subs[s].conn, f) == 0)
			n++;
	stat_add(&h->st.messages_delivered, n);
	return n;
}

/* ------------------------------------------------------------------------
 * Reading a history (History RPC)
 * ------------------------------------------------------------------------ */

/* Where the type and the data are in an event frame built by
 * event_frame(): names never hold '"', so the first ",\"data\":" is the
 * data's. Returns false for a frame of another shape. */
static bool frame_parts(const struct frame *f, const char **type, size_t *tlen, const char **data,
                        size_t *dlen)
{
	static const char tkey[] = "{\"type\":\"", dkey[] = ",\"data\":";
	const char *s = (const char *)f->mem + LH_FRAME_HEADROOM;
	size_t n = f->len;
	if (n < sizeof(tkey) || memcmp(s, tkey, sizeof(tkey) - 1) != 0)
		return false;
	*type = s + sizeof(tkey) - 1;
	const char *q = memchr(*type, '"', n - (sizeof(tkey) - 1));
	if (!q)
		return false;
	*tlen = (size_t)(q - *type);
	for (const char *d = q; d + sizeof(dkey) - 1 < s + n; d++) {
		if (memcmp(d, dkey, sizeof(dkey) - 1) == 0) {
			*data = d + sizeof(dkey) - 1;
			*dlen = (size_t)(s + n - 1 - *data); /* without the closing '}' */
			return true;
		}
	}
	return false;
}

/* The entries of ch that p asks for: *first and *n. */
static void history_select(struct hub *h, struct chan *ch, struct publication *p,
                           struct hub_history_result *hdr, const struct hist_entry **first,
                           uint32_t *n)
{
	struct hub_since since = {.given = p->hist_has_since, .offset = p->hist_since_offset};
	memcpy(since.epoch, p->hist_since_epoch, sizeof(since.epoch));
	since.epoch[sizeof(since.epoch) - 1] = '\0';
	struct hub_position pos;
	chan_position(h, ch, &since, &pos, true);
	hdr->offset = pos.offset;
	memcpy(hdr->epoch, pos.epoch, sizeof(hdr->epoch));
	hdr->recovered = pos.recovered;
	*first = chan_hist(ch)->head;
	*n = chan_hist(ch)->n;
	if (since.given) {
		*first = pos.from;
		*n = pos.replay;
		if (p->hist_limit && *n > p->hist_limit)
			*n = p->hist_limit; /* the oldest ones: the client pages on */
		return;
	}
	while (p->hist_limit && *n > p->hist_limit) {
		*first = (*first)->next; /* the newest ones */
		(*n)--;
	}
}

/* Copies n entries from first into one allocation with hdr in front. */
static struct hub_history_result *history_copy(const struct hub_history_result *hdr,
                                               const struct hist_entry *first, uint32_t n)
{
	size_t text = 0;
	const struct hist_entry *e = first;
	for (uint32_t i = 0; i < n; i++, e = e->next)
		text += e->f->len + 2;
	size_t head = sizeof(*hdr) + n * sizeof(hdr->items[0]);
	struct hub_history_result *r = malloc(head + text);
	if (!r)
		return NULL;
	*r = *hdr;
	r->n = 0;
	char *o = (char *)r + head;
	e = first;
	for (uint32_t i = 0; i < n; i++, e = e->next) {
		const char *t, *d;
		size_t tl, dl;
		if (!frame_parts(e->f, &t, &tl, &d, &dl))
			continue;
		struct hub_history_item *it = &r->items[r->n++];
		it->offset = e->offset;
		it->ts_ms = e->ts_ms;
		it->type = o;
		o = put(o, t, tl);
		*o++ = '\0';
		it->data = o;
		it->data_len = dl;
		o = put(o, d, dl);
		*o++ = '\0';
	}
	return r;
}

void hub_history(struct hub *h, struct publication *p)
{
	struct hub_history_result hdr;
	memset(&hdr, 0, sizeof(hdr));
	p->history = NULL;
	p->status = 0;
	size_t tlen = strnlen(p->tenant, sizeof(p->tenant));
	const char *name = p->channels[0];
	size_t nlen = strnlen(name, sizeof(p->channels[0]));
	if (!name_tenant_ok(p->tenant, tlen) || !name_channel_any_ok(name, nlen)) {
		p->status = LH_EINVAL;
		goto done;
	}
	memcpy(hdr.channel, name, nlen + 1);
	char key[KEY_MAX];
	size_t klen = make_key(key, p->tenant, tlen, name, nlen);
	struct chan *ch = dict_get(h->chans, key, klen);
	const struct hist_entry *first = NULL;
	uint32_t n = 0;
	if (ch)
		history_select(h, ch, p, &hdr, &first, &n);
	p->history = history_copy(&hdr, first, n);
	if (!p->history)
		p->status = LH_ENOMEM;
done:
	if (p->on_done)
		p->on_done(p);
}

void hub_history_free(struct hub_history_result *r)
{
	free(r);
}

/* ------------------------------------------------------------------------
 * The hub
 * ------------------------------------------------------------------------ */

void hub_set_limits(struct hub *h, const struct hub_limits *lim)
{
	h->lim = *lim;
	h->lim_gen++;
	h->pool.max_bytes = lim->hist.max_bytes;
}

struct hub *hub_new(const struct hub_limits *lim, const struct hub_transport *tr)
{
	struct hub *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->lim = *lim;
	h->tr = *tr;
	h->rng = seed_random();
	h->chans = dict_new(rng_next(h), offsetof(struct chan, key));
	if (!h->chans) {
		free(h);
		return NULL;
	}
	h->lim_gen = 1;
	h->pool.max_bytes = lim->hist.max_bytes;
	h->idem = idem_new(rng_next(h));
	if (!h->idem) {
		dict_free(h->chans);
		free(h);
		return NULL;
	}
	h->id_prefix = (uint32_t)(rng_next(h) & ID_PREFIX_MASK);
	return h;
}

void hub_free(struct hub *h)
{
	if (!h)
		return;
	size_t pos = 0;
	struct dict_entry e;
	while (dict_next(h->chans, &pos, &e))
		chan_free(h, e.val);
	dict_free(h->chans);
	idem_free(h->idem);
	free(h);
}

void hub_sweep(struct hub *h, int64_t now_ms, int64_t idle_ms)
{
	size_t pos = 0;
	struct dict_entry e;
	while (dict_next(h->chans, &pos, &e)) {
		struct chan *ch = e.val;
		chan_trim(h, ch, now_ms);
		if (ch->nsubs == 0 && chan_hist(ch)->n == 0 && now_ms - ch->last_ms > idle_ms) {
			chan_free(h, ch);
		} else if (ch->hx && ch->hx->hist.n == 0) {
			free(ch->hx); /* nothing refers to an empty history */
			ch->hx = NULL;
		}
	}
	idem_expire(h->idem, now_ms - (int64_t)h->lim.idem_window_s * 1000);
	atomic_store_explicit(&h->st.idempotency_keys, idem_count(h->idem), memory_order_relaxed);
}

void hub_count_received(struct hub *h)
{
	stat_add(&h->st.messages_received, 1);
}

size_t hub_publish_some(struct hub *h, struct publication **list, size_t max_pubs, bool yield,
                        bool *pressed)
{
	size_t n = 0;
	h->pressure = false;
	*pressed = false;
	while (*list && n < max_pubs) {
		struct publication *p = *list;
		/* on_done may hand p back to its publisher: read next first. */
		*list = p->next;
		hub_publish(h, p);
		n++;
		if (yield && h->pressure) {
			*pressed = true;
			break;
		}
	}
	return n;
}

uint64_t hub_delivered(struct hub *h)
{
	return atomic_load_explicit(&h->st.messages_delivered, memory_order_relaxed);
}

void hub_stats_read(struct hub *h, struct hub_stats_snapshot *out)
{
#define LOAD(f) out->f = atomic_load_explicit(&h->st.f, memory_order_relaxed)
	LOAD(connections);
	LOAD(users);
	LOAD(tenants);
	LOAD(channels);
	LOAD(subscriptions);
	LOAD(connections_total);
	LOAD(messages_published);
	LOAD(messages_delivered);
	LOAD(messages_received);
	LOAD(slow_consumers);
	LOAD(conflated);
	LOAD(dropped);
	LOAD(history_bytes);
	LOAD(history_entries);
	LOAD(recoveries);
	LOAD(recovery_misses);
	LOAD(deduplicated);
	LOAD(idempotency_keys);
#undef LOAD
}

/* ------------------------------------------------------------------------
 * Walking channels and connections
 * ------------------------------------------------------------------------ */

/* The channel tenant's clients call name, or NULL. */
static struct chan *chan_find(struct hub *h, const char *tenant, const char *name)
{
	size_t tlen = strnlen(tenant, LH_TENANT_MAX + 1);
	size_t nlen = strnlen(name, LH_CHANNEL_MAX + 1);
	if (!name_tenant_ok(tenant, tlen) || !name_channel_any_ok(name, nlen))
		return NULL;
	char key[KEY_MAX];
	size_t klen = make_key(key, tenant, tlen, name, nlen);
	return dict_get(h->chans, key, klen);
}

size_t hub_channel_each(struct hub *h, const char *tenant, const char *name,
                        void (*fn)(struct hub_conn *c, void *arg), void *arg)
{
	struct chan *ch = chan_find(h, tenant, name);
	if (!ch)
		return 0;
	uint32_t n = ch->nsubs;
	for (uint32_t i = 0; i < n; i++)
		fn(ch->subs[i].conn, arg);
	return n;
}

void hub_channels_each(struct hub *h, const char *tenant, const char *prefix,
                       void (*fn)(const char *name, uint32_t subscribers, void *arg), void *arg)
{
	size_t tlen = strlen(tenant), plen = strlen(prefix);
	size_t pos = 0;
	struct dict_entry e;
	while (dict_next(h->chans, &pos, &e)) {
		const struct chan *ch = e.val;
		const char *name = chan_name(ch);
		if (ch->nsubs == 0 || ch->kind != CHAN_PLAIN || ch->tlen != tlen ||
		    memcmp(ch->key, tenant, tlen) != 0 || strncmp(name, prefix, plen) != 0)
			continue;
		fn(name, ch->nsubs, arg);
	}
}

void hub_conn_each_channel(struct hub_conn *c, void (*fn)(const char *name, void *arg), void *arg)
{
	for (uint32_t k = SUB_FIRST; k < c->nsubs; k++)
		fn(chan_name(c->subs[k].ch), arg);
}

bool hub_conn_subscribed(struct hub *h, struct hub_conn *c, const char *name)
{
	struct chan *ch;
	if (conn_chan(h, c, name, false, &ch) || !ch)
		return false;
	return find_sub(c, ch) >= 0;
}

int hub_channel_top(struct hub *h, const char *tenant, const char *name, uint64_t *offset,
                    char epoch[17])
{
	const struct chan *ch = chan_find(h, tenant, name);
	if (!ch)
		return LH_ENOENT;
	*offset = ch->next - 1;
	put_hex(epoch, ch->epoch, 16);
	epoch[16] = '\0';
	return 0;
}

bool hub_conn_kill(struct hub *h, struct hub_conn *c, int close_code, const char *reason)
{
	if (c->dead)
		return false;
	conn_kill(h, c, close_code, reason);
	return true;
}
