/* presence_cluster: presence and control commands across nodes. See
 * presence_cluster.h. */
#include "presence_cluster.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "command.h"
#include "livehub.h"
#include "log.h"
#include "names.h"
#include "presence.h"
#include "strbuf.h"

#define TENANT_CHANNEL "$tenant"
#define USER_PREFIX    "$user:"
#define KEY_MAX        (BROKER_PREFIX_MAX + LH_TENANT_MAX + LH_CHANNEL_MAX + 32)
#define NODE_KEY_MAX   (BROKER_PREFIX_MAX + BROKER_NODE_MAX + 16)
#define OP_ARGS        3 /* per change: kind, clientId, user */
#define OP_KEYS        3 /* per change: presence, exp, users */
#define HEAD_ARGS      4 /* EVAL script numkeys ... then ARGV[1..4] */

/* ------------------------------------------------------------------------
 * Lua. Times come from Redis (TIME), so node clocks do not matter.
 * ------------------------------------------------------------------------ */

/* Shared by both scripts: now in ms, and purge(i, h, z, u), which removes
 * the entries of one channel whose expiry passed and reports each user
 * that had no connection left as {'X', i, user, clientId} in out. */
#define LUA_PURGE                                                                         \
	"local t = redis.call('TIME')\n"                                                  \
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"         \
	"local out = {}\n"                                                                \
	"local function gone(i, h, z, u, cid, tag)\n"                                     \
	"  local v = redis.call('HGET', h, cid)\n"                                        \
	"  redis.call('ZREM', z, cid)\n"                                                  \
	"  if not v then return end\n"                                                    \
	"  redis.call('HDEL', h, cid)\n"                                                  \
	"  local ok, e = pcall(cjson.decode, v)\n"                                        \
	"  if not ok or type(e) ~= 'table' or type(e.user) ~= 'string' then return end\n" \
	"  if redis.call('HINCRBY', u, e.user, -1) <= 0 then\n"                           \
	"    redis.call('HDEL', u, e.user)\n"                                             \
	"    out[#out + 1] = tag; out[#out + 1] = i; out[#out + 1] = e.user\n"            \
	"    out[#out + 1] = cid\n"                                                       \
	"  end\n"                                                                         \
	"end\n"                                                                           \
	"local function purge(i, h, z, u)\n"                                              \
	"  local old = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. now)\n"              \
	"  for _, cid in ipairs(old) do gone(i, h, z, u, cid, 'X') end\n"                 \
	"  return #old\n"                                                                 \
	"end\n"

/* KEYS: per change its channel's presence, exp and users keys. ARGV[1]
 * the TTL in ms, ARGV[2] this node, ARGV[3] how long idle keys live (ms),
 * ARGV[4] unused; then per change: 'J' (join or refresh: insert if absent,
 * new expiry) or 'L' (leave), clientId, user. Returns {purged, {kind, i,
 * user, clientId}...}: 'J' a user's first connection on the channel in
 * the cluster, 'L' or 'X' (expired) its last one gone. */
static const char LUA_OPS[] =
        LUA_PURGE "local ttl, node, life = tonumber(ARGV[1]), ARGV[2], ARGV[3]\n"
                  "local done, purged = {}, 0\n"
                  "local n = #KEYS / 3\n"
                  "for i = 1, n do\n"
                  "  local h, z, u = KEYS[i * 3 - 2], KEYS[i * 3 - 1], KEYS[i * 3]\n"
                  "  local kind, cid, user = ARGV[i * 3 + 2], ARGV[i * 3 + 3], ARGV[i * 3 + 4]\n"
                  "  if not done[h] then done[h] = true; purged = purged + purge(i, h, z, u) end\n"
                  "  if kind == 'J' then\n"
                  "    local v = cjson.encode({user = user, node = node})\n"
                  "    if redis.call('HSETNX', h, cid, v) == 1 then\n"
                  "      if redis.call('HINCRBY', u, user, 1) == 1 then\n"
                  "        out[#out + 1] = 'J'; out[#out + 1] = i; out[#out + 1] = user\n"
                  "        out[#out + 1] = cid\n"
                  "      end\n"
                  "    end\n"
                  "    redis.call('ZADD', z, now + ttl, cid)\n"
                  "  else\n"
                  "    gone(i, h, z, u, cid, 'L')\n"
                  "  end\n"
                  "end\n"
                  "for i = 1, n do\n"
                  "  local h = KEYS[i * 3 - 2]\n"
                  "  if done[h] then\n"
                  "    done[h] = nil\n"
                  "    for k = 2, 0, -1 do redis.call('PEXPIRE', KEYS[i * 3 - k], life) end\n"
                  "  end\n"
                  "end\n"
                  "return {purged, out}\n";

/* KEYS: a channel's presence, exp and users keys. Returns {purged,
 * connections, {user, count...}, {'X', 1, user, clientId...}}. */
static const char LUA_READ[] = LUA_PURGE
        "local purged = purge(1, KEYS[1], KEYS[2], KEYS[3])\n"
        "return {purged, redis.call('HLEN', KEYS[1]), redis.call('HGETALL', KEYS[3]), out}\n";

/* KEYS: P:nodes, P:nodes:conns, P:node:<id>. ARGV: this node, its
 * connections, the TTL in ms; ARGV[4] "1" to leave instead. Returns
 * {nodes alive, their connections}. */
static const char LUA_BEAT[] =
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "if ARGV[4] == '1' then\n"
        "  redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('HDEL', KEYS[2], ARGV[1])\n"
        "  redis.call('DEL', KEYS[3])\n"
        "else\n"
        "  redis.call('SET', KEYS[3], cjson.encode({node = ARGV[1],\n"
        "             connections = tonumber(ARGV[2])}), 'PX', ARGV[3])\n"
        "  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])\n"
        "  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])\n"
        "end\n"
        "local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)\n"
        "for _, n in ipairs(dead) do\n"
        "  redis.call('ZREM', KEYS[1], n); redis.call('HDEL', KEYS[2], n)\n"
        "end\n"
        "local total = 0\n"
        "for _, c in ipairs(redis.call('HVALS', KEYS[2])) do\n"
        "  total = total + (tonumber(c) or 0)\n"
        "end\n"
        "return {redis.call('ZCARD', KEYS[1]), total}\n";

/* ------------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------------ */

/* One queued change. */
struct op {
	char kind; /* 'J' or 'L' */
	char tenant[LH_TENANT_MAX + 1];
	char channel[LH_CHANNEL_MAX + 1];
	char cid[LH_CLIENT_ID_MAX + 1];
	char user[LH_USER_MAX + 1];
};

/* The changes of one EVAL, kept until its answer names them by index. */
struct batch {
	struct pcluster *pc;
	size_t n;
	struct op ops[];
};

/* A control command waiting for the other nodes' acknowledgements. */
struct pending {
	struct pending *next;
	struct pcluster *pc;
	uint64_t id;
	struct publication *p;
	int expected;     /* other nodes that received it; -1 until PUBLISH answers */
	int got;          /* acknowledgements counted */
	int64_t deadline; /* monotonic ms */
};

struct pcluster {
	struct broker *b;
	struct pcluster_env env;
	char prefix[BROKER_PREFIX_MAX + 1];
	char node[BROKER_NODE_MAX + 1];
	char ctl[BROKER_PREFIX_MAX + 8];
	int64_t ttl_ms;
	struct op *ops; /* queued changes */
	size_t nops, cap;
	int64_t next_beat; /* monotonic ms; 0: at the next tick */
	int64_t now_ms;    /* the last tick's clock */
	uint64_t next_id;
	struct pending *pending;
	bool leaving;    /* shutting down: entries removed, nothing written again */
	size_t inflight; /* writes (and fences) sent, not answered yet */
	bool oom_logged;
};

static struct {
	_Atomic uint64_t nodes, connections, ops, batches, expired, ctl_sent, ctl_applied, errors;
} stats;

static void stat_add(_Atomic uint64_t *v, uint64_t d)
{
	atomic_fetch_add_explicit(v, d, memory_order_relaxed);
}

void pcluster_stats_read(struct pcluster_stats *out)
{
	out->nodes = atomic_load_explicit(&stats.nodes, memory_order_relaxed);
	out->connections = atomic_load_explicit(&stats.connections, memory_order_relaxed);
	out->ops = atomic_load_explicit(&stats.ops, memory_order_relaxed);
	out->batches = atomic_load_explicit(&stats.batches, memory_order_relaxed);
	out->expired = atomic_load_explicit(&stats.expired, memory_order_relaxed);
	out->ctl_sent = atomic_load_explicit(&stats.ctl_sent, memory_order_relaxed);
	out->ctl_applied = atomic_load_explicit(&stats.ctl_applied, memory_order_relaxed);
	out->errors = atomic_load_explicit(&stats.errors, memory_order_relaxed);
}

bool pcluster_up(const struct pcluster *pc)
{
	return broker_up(pc->b);
}

/* ------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------ */

static bool is_array(const redisReply *r, size_t n)
{
	return r && r->type == REDIS_REPLY_ARRAY && r->elements >= n;
}

static bool is_int(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_INTEGER;
}

static bool is_str(const redisReply *r)
{
	return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* Logs a reply that is not what a script returns (an error, NULL). */
static void reply_failed(const char *what, const redisReply *r)
{
	stat_add(&stats.errors, 1);
	if (!r)
		log_warn("msg=\"cluster presence: redis unavailable\" op=%s", what);
	else if (r->type == REDIS_REPLY_ERROR)
		log_warn("msg=\"cluster presence: redis error\" op=%s error=\"%.*s\"", what,
		         (int)r->len, r->str);
	else
		log_warn("msg=\"cluster presence: unexpected redis reply\" op=%s type=%d", what,
		         r->type);
}

/* ------------------------------------------------------------------------
 * Keys and commands
 * ------------------------------------------------------------------------ */

/* "P:{T:C}:presence" + suffix into buf (KEY_MAX). Returns the length or 0. */
static size_t presence_key(const struct pcluster *pc, char *buf, const char *tenant,
                           const char *channel, const char *suffix)
{
	int n = snprintf(buf, KEY_MAX, "%s:{%s:%s}:presence%s", pc->prefix, tenant, channel,
	                 suffix);
	return n > 0 && n < KEY_MAX ? (size_t)n : 0;
}

/* Sends EVAL script with the nkeys keys and nargs args of argv (after the
 * first HEAD slots, which this fills). Returns broker_cmd's result. */
static int eval(struct pcluster *pc, const char *script, size_t nkeys, size_t nargs,
                const char **argv, size_t *lens, broker_reply_fn fn, void *arg)
{
	char numkeys[24];
	snprintf(numkeys, sizeof numkeys, "%zu", nkeys);
	argv[0] = "EVAL";
	argv[1] = script;
	argv[2] = numkeys;
	for (size_t i = 0; i < 3; i++)
		lens[i] = strlen(argv[i]);
	return broker_cmd(pc->b, fn, arg, (int)(3 + nkeys + nargs), argv, lens);
}

/* ------------------------------------------------------------------------
 * Announcements
 * ------------------------------------------------------------------------ */

/* A user's first connection on tenant's channel in the cluster (join), or
 * its last one gone: tells this node's connections (not client_id) and the
 * other nodes, when the channel announces (presence settings). */
static void announce(struct pcluster *pc, bool join, const char *tenant, const char *channel,
                     const char *user, const char *client_id)
{
	const struct presence *pr = *pc->env.pres;
	bool tenant_wide = strcmp(channel, TENANT_CHANNEL) == 0;
	const char *type;
	if (tenant_wide) {
		if (!presence_tenant_on(pr))
			return;
		type = join ? "user:online" : "user:offline";
	} else {
		if (!presence_events_on(pr, channel))
			return;
		type = join ? "presence:join" : "presence:leave";
	}
	struct frame *f = NULL;
	presence_announce(pc->env.hub, tenant, type, channel, user, client_id, &f);
	if (!f)
		return;
	int rc = broker_publish_raw(pc->b, tenant, channel, (const char *)frame_payload(f), f->len);
	if (rc)
		log_warn("msg=\"cluster presence: cannot tell the other nodes\" type=%s error=%s",
		         type, lh_strerror(rc));
	frame_unref(f);
}

/* Reads a script's {kind, i, user, clientId...} list against the changes
 * (ops, n: index i is 1-based; NULL for a read, whose i is always 1 and
 * whose channel is tenant/channel). */
static void transitions(struct pcluster *pc, const redisReply *list, const struct op *ops, size_t n,
                        const char *tenant, const char *channel)
{
	if (!list || list->type != REDIS_REPLY_ARRAY)
		return;
	for (size_t k = 0; k + 3 < list->elements; k += 4) {
		const redisReply *kind = list->element[k], *i = list->element[k + 1],
		                 *user = list->element[k + 2], *cid = list->element[k + 3];
		if (!is_str(kind) || !is_int(i) || !is_str(user) || !is_str(cid) ||
		    kind->len != 1 || user->len > LH_USER_MAX || cid->len > LH_CLIENT_ID_MAX)
			continue;
		const char *t = tenant, *c = channel;
		if (ops) {
			if (i->integer < 1 || (size_t)i->integer > n)
				continue;
			t = ops[i->integer - 1].tenant;
			c = ops[i->integer - 1].channel;
		}
		char u[LH_USER_MAX + 1], id[LH_CLIENT_ID_MAX + 1];
		memcpy(u, user->str, user->len);
		u[user->len] = '\0';
		memcpy(id, cid->str, cid->len);
		id[cid->len] = '\0';
		if (!name_user_ok(u, user->len))
			continue;
		announce(pc, kind->str[0] == 'J', t, c, u, id);
	}
}

/* ------------------------------------------------------------------------
 * Writing changes
 * ------------------------------------------------------------------------ */

static int push_op(struct pcluster *pc, char kind, const char *tenant, const char *channel,
                   const char *cid, const char *user)
{
	if (pc->nops == pc->cap) {
		size_t cap = pc->cap ? pc->cap * 2 : 64;
		struct op *v = realloc(pc->ops, cap * sizeof(*v));
		if (!v)
			return LH_ENOMEM;
		pc->ops = v;
		pc->cap = cap;
	}
	struct op *o = &pc->ops[pc->nops++];
	o->kind = kind;
	snprintf(o->tenant, sizeof o->tenant, "%s", tenant);
	snprintf(o->channel, sizeof o->channel, "%s", channel);
	snprintf(o->cid, sizeof o->cid, "%s", cid);
	snprintf(o->user, sizeof o->user, "%s", user);
	return 0;
}

void pcluster_member(struct pcluster *pc, struct hub_conn *c, const char *name, bool join)
{
	if (pc->leaving)
		return;
	if (push_op(pc, join ? 'J' : 'L', hub_conn_tenant(c), name, hub_conn_id(c),
	            hub_conn_user(c)) &&
	    !pc->oom_logged) {
		pc->oom_logged = true;
		log_warn("msg=\"cluster presence: out of memory queueing a change\"");
	}
}

static void on_fence(void *arg, redisReply *r)
{
	struct pcluster *pc = arg;
	(void)r;
	pc->inflight--;
}

static void on_batch(void *arg, redisReply *r)
{
	struct batch *bt = arg;
	struct pcluster *pc = bt->pc;
	pc->inflight--;
	if (!is_array(r, 2) || !is_int(r->element[0])) {
		reply_failed("write", r);
	} else {
		stat_add(&stats.expired, (uint64_t)r->element[0]->integer);
		transitions(pc, r->element[1], bt->ops, bt->n, NULL, NULL);
	}
	free(bt);
	/* Shutting down: the announcements just published go out on the
	 * command connection, in order; a PING answered after them says they
	 * have left, so the node may stop (pcluster_busy). */
	if (pc->leaving) {
		const char *argv[1] = {"PING"};
		size_t lens[1] = {4};
		if (broker_cmd(pc->b, on_fence, pc, 1, argv, lens) == 0)
			pc->inflight++;
	}
}

/* Sends ops[0..n) as one EVAL. Returns 0 or an LH_E* value (not sent). */
static int send_batch(struct pcluster *pc, const struct op *ops, size_t n)
{
	size_t nkeys = n * OP_KEYS, nargs = HEAD_ARGS + n * OP_ARGS, argc = 3 + nkeys + nargs;
	struct batch *bt = malloc(sizeof(*bt) + n * sizeof(*ops));
	const char **argv = calloc(argc, sizeof(*argv));
	size_t *lens = calloc(argc, sizeof(*lens));
	char *keys = malloc(nkeys * KEY_MAX);
	int rc = LH_ENOMEM;
	if (!bt || !argv || !lens || !keys)
		goto out;
	bt->pc = pc;
	bt->n = n;
	memcpy(bt->ops, ops, n * sizeof(*ops));
	static const char *const sfx[OP_KEYS] = {"", ":exp", ":users"};
	rc = LH_EINVAL;
	for (size_t i = 0; i < n; i++)
		for (size_t k = 0; k < OP_KEYS; k++) {
			char *key = keys + (i * OP_KEYS + k) * KEY_MAX;
			size_t len = presence_key(pc, key, ops[i].tenant, ops[i].channel, sfx[k]);
			if (!len)
				goto out;
			argv[3 + i * OP_KEYS + k] = key;
			lens[3 + i * OP_KEYS + k] = len;
		}
	char ttl[24], life[24];
	snprintf(ttl, sizeof ttl, "%lld", (long long)pc->ttl_ms);
	snprintf(life, sizeof life, "%lld", (long long)pc->ttl_ms * 3);
	const char **a = argv + 3 + nkeys;
	size_t *l = lens + 3 + nkeys;
	a[0] = ttl;
	a[1] = pc->node;
	a[2] = life;
	a[3] = "";
	for (size_t i = 0; i < n; i++) {
		a[HEAD_ARGS + i * OP_ARGS] = ops[i].kind == 'J' ? "J" : "L";
		a[HEAD_ARGS + i * OP_ARGS + 1] = ops[i].cid;
		a[HEAD_ARGS + i * OP_ARGS + 2] = ops[i].user;
	}
	for (size_t i = 0; i < nargs; i++)
		l[i] = strlen(a[i]);
	rc = eval(pc, LUA_OPS, nkeys, nargs, argv, lens, on_batch, bt);
	if (rc == 0) {
		bt = NULL; /* on_batch frees it */
		pc->inflight++;
		stat_add(&stats.ops, n);
		stat_add(&stats.batches, 1);
	}
out:
	free(bt);
	free(argv);
	free(lens);
	free(keys);
	return rc;
}

size_t pcluster_queued(const struct pcluster *pc)
{
	return pc->nops;
}

void pcluster_flush(struct pcluster *pc)
{
	if (pc->nops == 0)
		return;
	/* Down: the changes are dropped; the refresh after the reconnect
	 * writes every entry this node has, and entries of connections gone
	 * meanwhile expire. */
	if (broker_up(pc->b)) {
		for (size_t i = 0; i < pc->nops; i += PCL_BATCH_OPS) {
			size_t n = pc->nops - i < PCL_BATCH_OPS ? pc->nops - i : PCL_BATCH_OPS;
			int rc = send_batch(pc, pc->ops + i, n);
			if (rc) {
				stat_add(&stats.errors, 1);
				if (rc != LH_EUNAVAILABLE)
					log_warn("msg=\"cluster presence: cannot write changes\" "
					         "error=%s",
					         lh_strerror(rc));
				break;
			}
		}
	}
	pc->nops = 0;
	if (pc->cap > 4096) { /* after a refresh of a big node: give the memory back */
		free(pc->ops);
		pc->ops = NULL;
		pc->cap = 0;
	}
}

/* ------------------------------------------------------------------------
 * Refresh and heartbeat
 * ------------------------------------------------------------------------ */

struct walk {
	struct pcluster *pc;
	char kind;
};

struct conn_walk {
	struct pcluster *pc;
	struct hub_conn *c;
	char kind;
};

static void channel_op(const char *name, void *arg)
{
	struct conn_walk *cw = arg;
	push_op(cw->pc, cw->kind, hub_conn_tenant(cw->c), name, hub_conn_id(cw->c),
	        hub_conn_user(cw->c));
}

static void conn_ops(struct hub_conn *c, void *arg)
{
	struct walk *w = arg;
	struct conn_walk cw = {w->pc, c, w->kind};
	channel_op(TENANT_CHANNEL, &cw);
	hub_conn_each_channel(c, channel_op, &cw);
}

/* Queues kind ('J' refresh, 'L' leave) for every entry of this node. */
static void every_entry(struct pcluster *pc, char kind)
{
	struct walk w = {pc, kind};
	pc->env.each_conn(pc->env.arg, conn_ops, &w);
}

static void on_beat(void *arg, redisReply *r)
{
	struct pcluster *pc = arg;
	pc->inflight--;
	if (!is_array(r, 2) || !is_int(r->element[0]) || !is_int(r->element[1])) {
		reply_failed("heartbeat", r);
		return;
	}
	atomic_store_explicit(&stats.nodes, (uint64_t)r->element[0]->integer, memory_order_relaxed);
	atomic_store_explicit(&stats.connections, (uint64_t)r->element[1]->integer,
	                      memory_order_relaxed);
}

/* Beats (or, with leave, removes) this node's heartbeat. */
static int beat(struct pcluster *pc, bool leave)
{
	char k1[NODE_KEY_MAX], k2[NODE_KEY_MAX], k3[NODE_KEY_MAX], conns[24], ttl[24];
	snprintf(k1, sizeof k1, "%s:nodes", pc->prefix);
	snprintf(k2, sizeof k2, "%s:nodes:conns", pc->prefix);
	snprintf(k3, sizeof k3, "%s:node:%s", pc->prefix, pc->node);
	struct hub_stats_snapshot s;
	hub_stats_read(pc->env.hub, &s);
	snprintf(conns, sizeof conns, "%llu", (unsigned long long)s.connections);
	snprintf(ttl, sizeof ttl, "%lld", (long long)pc->ttl_ms);
	const char *argv[10] = {NULL, NULL,     NULL,  k1,  k2,
	                        k3,   pc->node, conns, ttl, leave ? "1" : "0"};
	size_t lens[10];
	for (size_t i = 3; i < 10; i++)
		lens[i] = strlen(argv[i]);
	int rc = eval(pc, LUA_BEAT, 3, 4, argv, lens, on_beat, pc);
	if (rc == 0)
		pc->inflight++;
	return rc;
}

/* ------------------------------------------------------------------------
 * Reading presence
 * ------------------------------------------------------------------------ */

/* A presence read in flight: who asked (a client, by id, or a control
 * command) and what. */
struct read {
	struct pcluster *pc;
	struct publication *p; /* a Presence call, or NULL: a client */
	char tenant[LH_TENANT_MAX + 1];
	char channel[LH_CHANNEL_MAX + 1];
	char user[LH_USER_MAX + 1];
	char cid[LH_CLIENT_ID_MAX + 1];
	char id[WSP_ID_JSON_MAX + 1];
	size_t id_len;
};

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const struct command_entry *)a)->name,
	              ((const struct command_entry *)b)->name);
}

/* Fills cmd (connections, entries sorted by user) from a read's answer.
 * Returns 0, LH_EIO (not an answer) or LH_ENOMEM. */
static int read_result(const redisReply *r, struct command *cmd)
{
	if (!is_array(r, 4) || !is_int(r->element[0]) || !is_int(r->element[1]) ||
	    r->element[2]->type != REDIS_REPLY_ARRAY)
		return LH_EIO;
	const redisReply *users = r->element[2];
	cmd->connections = (uint32_t)r->element[1]->integer;
	size_t n = users->elements / 2;
	if (n == 0)
		return 0;
	cmd->entries = calloc(n, sizeof(*cmd->entries));
	if (!cmd->entries)
		return LH_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const redisReply *u = users->element[2 * i], *c = users->element[2 * i + 1];
		if (!is_str(u) || !is_str(c))
			continue;
		long long count = strtoll(c->str, NULL, 10);
		if (count <= 0)
			continue;
		struct command_entry *e = &cmd->entries[cmd->nentries];
		if (!(e->name = strndup(u->str, u->len))) {
			command_clear(cmd);
			return LH_ENOMEM;
		}
		e->count = (uint32_t)count;
		cmd->nentries++;
	}
	if (cmd->nentries > 1)
		qsort(cmd->entries, cmd->nentries, sizeof(*cmd->entries), cmp_entry);
	return 0;
}

/* Finds tenant's connection client_id of user. */
struct find {
	const char *cid;
	struct hub_conn *c;
};

static void find_one(struct hub_conn *c, void *arg)
{
	struct find *f = arg;
	if (!f->c && strcmp(hub_conn_id(c), f->cid) == 0)
		f->c = c;
}

static struct hub_conn *find_conn(struct hub *h, const char *tenant, const char *user,
                                  const char *cid)
{
	char uch[LH_CHANNEL_MAX + 1];
	snprintf(uch, sizeof uch, USER_PREFIX "%s", user);
	struct find f = {cid, NULL};
	hub_channel_each(h, tenant, uch, find_one, &f);
	return f.c;
}

/* The answer to a client: the cluster's, or this node's flagged partial. */
static void answer_client(struct read *rd, const redisReply *r)
{
	struct pcluster *pc = rd->pc;
	struct hub_conn *c = find_conn(pc->env.hub, rd->tenant, rd->user, rd->cid);
	if (!c)
		return; /* gone meanwhile */
	struct command cmd;
	memset(&cmd, 0, sizeof cmd);
	int rc = read_result(r, &cmd);
	struct frame *f;
	if (rc == LH_ENOMEM) {
		f = presence_frame_error(rd->id, rd->id_len, "out of memory");
	} else if (rc) {
		reply_failed("read", r);
		f = presence_local_frame(pc->env.hub, rd->tenant, rd->channel, rd->id, rd->id_len,
		                         true);
	} else {
		f = presence_frame_build(rd->channel, rd->id, rd->id_len, &cmd, false);
	}
	command_clear(&cmd);
	if (f) {
		hub_conn_send(pc->env.hub, c, f);
		frame_unref(f);
	}
}

static void on_read(void *arg, redisReply *r)
{
	struct read *rd = arg;
	struct pcluster *pc = rd->pc;
	if (is_array(r, 4) && is_int(r->element[0])) {
		stat_add(&stats.expired, (uint64_t)r->element[0]->integer);
		transitions(pc, r->element[3], NULL, 0, rd->tenant, rd->channel);
	}
	if (rd->p) {
		struct command *cmd = rd->p->cmd;
		int rc = read_result(r, cmd);
		if (rc == LH_EIO)
			reply_failed("read", r);
		rd->p->status = rc == LH_EIO ? LH_EUNAVAILABLE : rc;
		if (rd->p->on_done)
			rd->p->on_done(rd->p);
	} else {
		answer_client(rd, r);
	}
	free(rd);
}

/* Sends the read of rd (owned by the callback once sent). Returns 0 or
 * LH_E* (rd still the caller's). */
static int send_read(struct pcluster *pc, struct read *rd)
{
	char keys[OP_KEYS][KEY_MAX];
	static const char *const sfx[OP_KEYS] = {"", ":exp", ":users"};
	const char *argv[3 + OP_KEYS];
	size_t lens[3 + OP_KEYS];
	for (size_t k = 0; k < OP_KEYS; k++) {
		lens[3 + k] = presence_key(pc, keys[k], rd->tenant, rd->channel, sfx[k]);
		if (!lens[3 + k])
			return LH_EINVAL;
		argv[3 + k] = keys[k];
	}
	return eval(pc, LUA_READ, OP_KEYS, 0, argv, lens, on_read, rd);
}

int pcluster_request(struct pcluster *pc, struct hub_conn *c, const struct wsp_request *req)
{
	if (!broker_up(pc->b))
		return LH_EUNAVAILABLE;
	struct read *rd = calloc(1, sizeof *rd);
	if (!rd)
		return LH_ENOMEM;
	rd->pc = pc;
	snprintf(rd->tenant, sizeof rd->tenant, "%s", hub_conn_tenant(c));
	snprintf(rd->channel, sizeof rd->channel, "%s", req->channel);
	snprintf(rd->user, sizeof rd->user, "%s", hub_conn_user(c));
	snprintf(rd->cid, sizeof rd->cid, "%s", hub_conn_id(c));
	memcpy(rd->id, req->id, req->id_len);
	rd->id_len = req->id_len;
	/* This node's queued changes first, so the answer includes them. */
	pcluster_flush(pc);
	int rc = send_read(pc, rd);
	if (rc)
		free(rd);
	return rc;
}

/* ------------------------------------------------------------------------
 * Control commands across nodes (P:ctl)
 * ------------------------------------------------------------------------ */

static const char *op_name(enum command_kind k)
{
	switch (k) {
	case CMD_DISCONNECT: return "disconnect";
	case CMD_SUBSCRIBE: return "subscribe";
	case CMD_UNSUBSCRIBE: return "unsubscribe";
	default: return NULL;
	}
}

/* The channel's position in Redis for a Subscribe call (this node's idea
 * of it may be behind: the channel may just have been followed). */
static void on_position(void *arg, redisReply *r)
{
	struct publication *p = arg;
	struct command *cmd = p->cmd;
	if (is_array(r, 2) && is_str(r->element[0]) && r->element[0]->len == 16) {
		memcpy(cmd->epoch, r->element[0]->str, 16);
		cmd->epoch[16] = '\0';
		cmd->offset = is_str(r->element[1]) ? strtoull(r->element[1]->str, NULL, 10) : 0;
	} else if (!r || r->type == REDIS_REPLY_ERROR) {
		reply_failed("position", r);
	}
	if (p->on_done)
		p->on_done(p);
}

/* Answers p; a Subscribe call once its channel's position is read. */
static void command_done(struct pcluster *pc, struct publication *p)
{
	if (p->status == 0 && p->cmd->kind == CMD_SUBSCRIBE) {
		char key[KEY_MAX];
		int n = snprintf(key, sizeof key, "%s:{%s:%s}:meta", pc->prefix, p->tenant,
		                 p->cmd->channel);
		const char *argv[4] = {"HMGET", key, "epoch", "top"};
		size_t lens[4] = {5, (size_t)n, 5, 3};
		if (n > 0 && n < KEY_MAX && broker_cmd(pc->b, on_position, p, 4, argv, lens) == 0)
			return;
	}
	if (p->on_done)
		p->on_done(p);
}

/* Answers p with what it has. */
static void pending_finish(struct pcluster *pc, struct pending *pd)
{
	for (struct pending **pp = &pc->pending; *pp; pp = &(*pp)->next)
		if (*pp == pd) {
			*pp = pd->next;
			break;
		}
	struct publication *p = pd->p;
	if (p->status == 0 && pd->expected < 0)
		p->status = LH_EUNAVAILABLE;
	free(pd);
	command_done(pc, p);
}

static struct pending *pending_find(struct pcluster *pc, uint64_t id)
{
	for (struct pending *pd = pc->pending; pd; pd = pd->next)
		if (pd->id == id)
			return pd;
	return NULL;
}

static void pending_check(struct pcluster *pc, struct pending *pd)
{
	if (pd->expected >= 0 && pd->got >= pd->expected)
		pending_finish(pc, pd);
}

/* Which command a PUBLISH answer is for (the command may have been
 * answered already, after PCL_CTL_WAIT_MS). */
struct ref {
	struct pcluster *pc;
	uint64_t id;
};

/* PUBLISH answered: how many nodes listen on P:ctl, this one included. */
static void on_published(void *arg, redisReply *r)
{
	struct ref *ref = arg;
	struct pcluster *pc = ref->pc;
	struct pending *pd = pending_find(pc, ref->id);
	free(ref);
	if (!pd)
		return;
	if (!is_int(r)) {
		reply_failed("control", r);
		pending_finish(pc, pd); /* expected < 0: UNAVAILABLE */
		return;
	}
	pd->expected = r->integer > 0 ? (int)r->integer - 1 : 0;
	pending_check(pc, pd);
}

/* {"node":…,"op":…,"req":N,"tenant":…,…} for cmd. */
static char *ctl_message(struct pcluster *pc, uint64_t id, const char *tenant,
                         const struct command *cmd)
{
	json_t *o = json_pack("{s:s,s:s,s:I,s:s}", "node", pc->node, "op", op_name(cmd->kind),
	                      "req", (json_int_t)id, "tenant", tenant);
	if (!o)
		return NULL;
	int bad = 0;
	if (cmd->user[0])
		bad |= json_object_set_new(o, "user", json_string(cmd->user));
	if (cmd->kind == CMD_DISCONNECT) {
		if (cmd->client_id[0])
			bad |= json_object_set_new(o, "client", json_string(cmd->client_id));
		bad |= json_object_set_new(o, "reason", json_string(cmd->reason));
		bad |= json_object_set_new(o, "code", json_integer(cmd->close_code));
	} else {
		bad |= json_object_set_new(o, "channel", json_string(cmd->channel));
	}
	char *s = bad ? NULL : json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

static int ctl_publish(struct pcluster *pc, const char *msg, broker_reply_fn fn, void *arg)
{
	const char *argv[3] = {"PUBLISH", pc->ctl, msg};
	size_t lens[3] = {7, strlen(pc->ctl), strlen(msg)};
	return broker_cmd(pc->b, fn, arg, 3, argv, lens);
}

static void on_ignored(void *arg, redisReply *r)
{
	(void)arg;
	if (!r || r->type == REDIS_REPLY_ERROR)
		reply_failed("control", r);
}

/* A read for a Presence call. */
static bool command_presence(struct pcluster *pc, struct publication *p)
{
	struct read *rd = calloc(1, sizeof *rd);
	int rc = LH_ENOMEM;
	if (rd) {
		rd->pc = pc;
		rd->p = p;
		snprintf(rd->tenant, sizeof rd->tenant, "%s", p->tenant);
		snprintf(rd->channel, sizeof rd->channel, "%s",
		         p->cmd->channel[0] ? p->cmd->channel : TENANT_CHANNEL);
		pcluster_flush(pc);
		rc = broker_up(pc->b) ? send_read(pc, rd) : LH_EUNAVAILABLE;
	}
	if (rc) {
		free(rd);
		p->status = rc;
		if (p->on_done)
			p->on_done(p);
	}
	return true;
}

bool pcluster_command(struct pcluster *pc, struct publication *p)
{
	struct command *cmd = p->cmd;
	if (cmd->kind == CMD_PRESENCE)
		return command_presence(pc, p);
	if (!op_name(cmd->kind))
		return false;
	/* Here first, exactly as on one node. */
	p->status = presence_run(*pc->env.pres, pc->env.hub, p->tenant, cmd);
	if (p->status) {
		if (p->on_done)
			p->on_done(p);
		return true;
	}
	struct pending *pd = calloc(1, sizeof *pd);
	struct ref *ref = malloc(sizeof *ref);
	uint64_t id = pc->next_id + 1;
	char *msg = pd && ref ? ctl_message(pc, id, p->tenant, cmd) : NULL;
	if (!msg) {
		free(pd);
		free(ref);
		p->status = LH_ENOMEM;
		if (p->on_done)
			p->on_done(p);
		return true;
	}
	/* Waiting before it is sent: an answer may come at any time after. */
	pc->next_id = id;
	*ref = (struct ref){pc, id};
	*pd = (struct pending){.next = pc->pending,
	                       .pc = pc,
	                       .id = id,
	                       .p = p,
	                       .expected = -1,
	                       .deadline = pc->now_ms + PCL_CTL_WAIT_MS};
	pc->pending = pd;
	int rc = ctl_publish(pc, msg, on_published, ref);
	free(msg);
	if (rc) {
		free(ref);
		pending_finish(pc, pd); /* expected < 0: UNAVAILABLE */
		return true;
	}
	stat_add(&stats.ctl_sent, 1);
	return true;
}

/* Copies string field key of o into buf (cap bytes); "" when absent.
 * Returns false when present but not a string or too long. */
static bool get_str(json_t *o, const char *key, char *buf, size_t cap)
{
	json_t *v = json_object_get(o, key);
	buf[0] = '\0';
	if (!v)
		return true;
	if (!json_is_string(v) || json_string_length(v) >= cap)
		return false;
	memcpy(buf, json_string_value(v), json_string_length(v) + 1);
	return true;
}

/* Another node's command: applied here, then acknowledged with counts. */
static void apply_remote(struct pcluster *pc, json_t *o, const char *op, const char *from)
{
	char tenant[LH_TENANT_MAX + 1];
	struct command cmd;
	memset(&cmd, 0, sizeof cmd);
	json_t *req = json_object_get(o, "req");
	cmd.kind = strcmp(op, "disconnect") == 0    ? CMD_DISCONNECT
	           : strcmp(op, "subscribe") == 0   ? CMD_SUBSCRIBE
	           : strcmp(op, "unsubscribe") == 0 ? CMD_UNSUBSCRIBE
	                                            : 0;
	if (!cmd.kind || !json_is_integer(req) || !get_str(o, "tenant", tenant, sizeof tenant) ||
	    !get_str(o, "user", cmd.user, sizeof cmd.user) ||
	    !get_str(o, "channel", cmd.channel, sizeof cmd.channel) ||
	    !get_str(o, "client", cmd.client_id, sizeof cmd.client_id) ||
	    !get_str(o, "reason", cmd.reason, sizeof cmd.reason)) {
		log_warn("msg=\"cluster control: malformed command ignored\" from=%s", from);
		return;
	}
	json_t *code = json_object_get(o, "code");
	cmd.close_code = json_is_integer(code) && json_integer_value(code) == LH_CLOSE_RECONNECT
	                         ? LH_CLOSE_RECONNECT
	                         : LH_CLOSE_GOODBYE;
	int rc = presence_run(*pc->env.pres, pc->env.hub, tenant, &cmd);
	command_clear(&cmd);
	stat_add(&stats.ctl_applied, 1);
	if (rc)
		log_warn("msg=\"cluster control: command failed here\" op=%s error=%s", op,
		         lh_strerror(rc));
	json_t *ack = json_pack("{s:s,s:s,s:s,s:O,s:i,s:i,s:i}", "node", pc->node, "op", "ack",
	                        "to", from, "req", req, "n", (int)cmd.connections, "already",
	                        (int)cmd.already, "refused", (int)cmd.refused);
	char *s = ack ? json_dumps(ack, JSON_COMPACT) : NULL;
	json_decref(ack);
	if (!s || ctl_publish(pc, s, on_ignored, NULL))
		log_warn("msg=\"cluster control: cannot acknowledge\" op=%s", op);
	free(s);
}

/* An acknowledgement for one of our commands. */
static void apply_ack(struct pcluster *pc, json_t *o)
{
	json_t *req = json_object_get(o, "req");
	if (!json_is_integer(req))
		return;
	struct pending *pd = pending_find(pc, (uint64_t)json_integer_value(req));
	if (!pd)
		return; /* answered already (timed out) */
	struct command *cmd = pd->p->cmd;
	json_t *n = json_object_get(o, "n"), *already = json_object_get(o, "already"),
	       *refused = json_object_get(o, "refused");
	if (json_is_integer(n) && json_integer_value(n) > 0)
		cmd->connections += (uint32_t)json_integer_value(n);
	if (json_is_integer(already) && json_integer_value(already) > 0)
		cmd->already += (uint32_t)json_integer_value(already);
	if (json_is_integer(refused) && json_integer_value(refused) > 0)
		cmd->refused += (uint32_t)json_integer_value(refused);
	pd->got++;
	pending_check(pc, pd);
}

static void on_ctl(void *arg, const char *msg, size_t len)
{
	struct pcluster *pc = arg;
	json_error_t jerr;
	json_t *o = json_loadb(msg, len, JSON_REJECT_DUPLICATES, &jerr);
	json_t *node = o ? json_object_get(o, "node") : NULL,
	       *op = o ? json_object_get(o, "op") : NULL;
	if (!json_is_string(node) || !json_is_string(op))
		goto out;
	const char *from = json_string_value(node), *what = json_string_value(op);
	if (strcmp(from, pc->node) == 0)
		goto out; /* our own: applied before it was sent */
	if (strcmp(what, "ack") == 0) {
		json_t *to = json_object_get(o, "to");
		if (json_is_string(to) && strcmp(json_string_value(to), pc->node) == 0)
			apply_ack(pc, o);
	} else if (strlen(from) < BROKER_NODE_MAX) {
		apply_remote(pc, o, what, from);
	}
out:
	json_decref(o);
}

/* ------------------------------------------------------------------------
 * Life cycle and timers
 * ------------------------------------------------------------------------ */

static void on_state(void *arg, bool up)
{
	struct pcluster *pc = arg;
	if (up) /* rewrite every entry now: those written while down were dropped */
		pc->next_beat = 0;
}

void pcluster_tick(struct pcluster *pc, int64_t now_ms)
{
	pc->now_ms = now_ms;
	pcluster_flush(pc);
	for (struct pending *pd = pc->pending, *next; pd; pd = next) {
		next = pd->next;
		if (now_ms >= pd->deadline)
			pending_finish(pc, pd);
	}
	if (pc->leaving || now_ms < pc->next_beat || !broker_up(pc->b))
		return;
	pc->next_beat = now_ms + (pc->ttl_ms / 3 > 0 ? pc->ttl_ms / 3 : 1);
	every_entry(pc, 'J');
	pcluster_flush(pc);
	if (beat(pc, false))
		stat_add(&stats.errors, 1);
}

bool pcluster_busy(const struct pcluster *pc)
{
	return pc->leaving && pc->inflight > 0 && broker_up(pc->b);
}

void pcluster_leave_all(struct pcluster *pc)
{
	if (pc->leaving)
		return;
	pc->nops = 0;
	pc->leaving = true; /* before the flush: on_batch's fences */
	if (broker_up(pc->b)) {
		every_entry(pc, 'L');
		pcluster_flush(pc);
		beat(pc, true);
	}
}

struct pcluster *pcluster_new(struct broker *b, const char *prefix, int ttl_s,
                              const struct pcluster_env *env)
{
	struct pcluster *pc = calloc(1, sizeof *pc);
	if (!pc)
		return NULL;
	pc->b = b;
	pc->env = *env;
	pc->ttl_ms = (int64_t)(ttl_s > 0 ? ttl_s : 1) * 1000;
	snprintf(pc->prefix, sizeof pc->prefix, "%s", prefix);
	snprintf(pc->node, sizeof pc->node, "%s", broker_node_id(b));
	snprintf(pc->ctl, sizeof pc->ctl, "%s:ctl", pc->prefix);
	if (broker_listen(b, pc->ctl, on_ctl, pc) || broker_on_state(b, on_state, pc)) {
		free(pc);
		return NULL;
	}
	return pc;
}

void pcluster_free(struct pcluster *pc)
{
	if (!pc)
		return;
	while (pc->pending)
		pending_finish(pc, pc->pending);
	free(pc->ops);
	free(pc);
}
