/* presence_cluster: presence entries, reads and the heartbeat across nodes
 * (the control commands are presence_ctl.c). See
 * presence_cluster.h. */
#include "presence_cluster.h"
#include "presence_cluster_int.h"

#include <hiredis/hiredis.h>
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
#define KEY_MAX        PCL_KEY_MAX
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

struct pcl_counters pcl_stats;

/* Logs a reply that is not what a script returns (an error, NULL). */
void pcl_reply_failed(const char *what, const redisReply *r)
{
	pcl_stat_add(&pcl_stats.errors, 1);
	if (!r)
		log_warn("msg=\"cluster presence: redis unavailable\" op=%s", what);
	else if (r->type == REDIS_REPLY_ERROR)
		log_warn("msg=\"cluster presence: redis error\" op=%s error=\"%.*s\"", what,
		         (int)r->len, r->str);
	else
		log_warn("msg=\"cluster presence: unexpected redis reply\" op=%s type=%d", what,
		         r->type);
}

void pcluster_stats_read(struct pcluster_stats *out)
{
	out->nodes = atomic_load_explicit(&pcl_stats.nodes, memory_order_relaxed);
	out->connections = atomic_load_explicit(&pcl_stats.connections, memory_order_relaxed);
	out->ops = atomic_load_explicit(&pcl_stats.ops, memory_order_relaxed);
	out->batches = atomic_load_explicit(&pcl_stats.batches, memory_order_relaxed);
	out->expired = atomic_load_explicit(&pcl_stats.expired, memory_order_relaxed);
	out->ctl_sent = atomic_load_explicit(&pcl_stats.ctl_sent, memory_order_relaxed);
	out->ctl_applied = atomic_load_explicit(&pcl_stats.ctl_applied, memory_order_relaxed);
	out->errors = atomic_load_explicit(&pcl_stats.errors, memory_order_relaxed);
}

bool pcluster_up(const struct pcluster *pc)
{
	return broker_up(pc->b);
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
		if (!pcl_is_str(kind) || !pcl_is_int(i) || !pcl_is_str(user) || !pcl_is_str(cid) ||
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

/* Copies a (validated, bounded) name; cut at cap - 1 bytes. A refresh
 * copies four per entry: no printf here. */
static void copy_name(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

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
	copy_name(o->tenant, sizeof o->tenant, tenant);
	copy_name(o->channel, sizeof o->channel, channel);
	copy_name(o->cid, sizeof o->cid, cid);
	copy_name(o->user, sizeof o->user, user);
	return 0;
}

void pcluster_member(struct pcluster *pc, struct hub_conn *c, const char *name, bool join)
{
	if (pc->leaving)
		return;
	char cid[HUB_CONN_ID_MAX];
	if (push_op(pc, join ? 'J' : 'L', hub_conn_tenant(c), name, hub_conn_id(c, cid),
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
	if (!pcl_is_array(r, 2) || !pcl_is_int(r->element[0])) {
		pcl_reply_failed("write", r);
	} else {
		pcl_stat_add(&pcl_stats.expired, (uint64_t)r->element[0]->integer);
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
		pcl_stat_add(&pcl_stats.ops, n);
		pcl_stat_add(&pcl_stats.batches, 1);
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
	return pc->nops - pc->head;
}

void pcluster_flush(struct pcluster *pc)
{
	/* Down: the changes are dropped; the refresh after the reconnect
	 * writes every entry this node has, and entries of connections gone
	 * meanwhile expire. */
	if (!broker_up(pc->b))
		pc->head = pc->nops;
	/* At most PCL_FLUSH_BATCHES per call, so that a big node's refresh
	 * (tens of thousands of entries) is spread over several loop turns
	 * instead of stalling one; changes keep their order. */
	for (int k = 0; k < PCL_FLUSH_BATCHES && pc->head < pc->nops; k++) {
		size_t left = pc->nops - pc->head;
		size_t n = left < PCL_BATCH_OPS ? left : PCL_BATCH_OPS;
		int rc = send_batch(pc, pc->ops + pc->head, n);
		if (rc) {
			pcl_stat_add(&pcl_stats.errors, 1);
			if (rc != LH_EUNAVAILABLE)
				log_warn("msg=\"cluster presence: cannot write changes\" error=%s",
				         lh_strerror(rc));
			pc->head = pc->nops;
			break;
		}
		pc->head += n;
	}
	if (pc->head < pc->nops)
		return;
	pc->head = pc->nops = 0;
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
	char cid[HUB_CONN_ID_MAX]; /* c's id, formatted once */
};

static void channel_op(const char *name, void *arg)
{
	struct conn_walk *cw = arg;
	push_op(cw->pc, cw->kind, hub_conn_tenant(cw->c), name, cw->cid, hub_conn_user(cw->c));
}

static void conn_ops(struct hub_conn *c, void *arg)
{
	struct walk *w = arg;
	struct conn_walk cw = {w->pc, c, w->kind, {0}};
	hub_conn_id(c, cw.cid);
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
	if (!pcl_is_array(r, 2) || !pcl_is_int(r->element[0]) || !pcl_is_int(r->element[1])) {
		pcl_reply_failed("heartbeat", r);
		return;
	}
	atomic_store_explicit(&pcl_stats.nodes, (uint64_t)r->element[0]->integer,
	                      memory_order_relaxed);
	atomic_store_explicit(&pcl_stats.connections, (uint64_t)r->element[1]->integer,
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
	if (!pcl_is_array(r, 4) || !pcl_is_int(r->element[0]) || !pcl_is_int(r->element[1]) ||
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
		if (!pcl_is_str(u) || !pcl_is_str(c))
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
	char cid[HUB_CONN_ID_MAX];
	if (!f->c && strcmp(hub_conn_id(c, cid), f->cid) == 0)
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
		pcl_reply_failed("read", r);
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
	if (pcl_is_array(r, 4) && pcl_is_int(r->element[0])) {
		pcl_stat_add(&pcl_stats.expired, (uint64_t)r->element[0]->integer);
		transitions(pc, r->element[3], NULL, 0, rd->tenant, rd->channel);
	}
	if (rd->p) {
		struct command *cmd = rd->p->cmd;
		int rc = read_result(r, cmd);
		if (rc == LH_EIO)
			pcl_reply_failed("read", r);
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
	char cid[HUB_CONN_ID_MAX];
	snprintf(rd->cid, sizeof rd->cid, "%s", hub_conn_id(c, cid));
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
 * Control commands
 * ------------------------------------------------------------------------ */

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
	if (p->cmd->kind == CMD_PRESENCE)
		return command_presence(pc, p);
	return pcl_ctl_command(pc, p);
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
	pcl_ctl_expire(pc, now_ms);
	/* A refresh waits for the last one's backlog to be sent. */
	if (pc->leaving || now_ms < pc->next_beat || !broker_up(pc->b) || pcluster_queued(pc) > 0)
		return;
	pc->next_beat = now_ms + (pc->ttl_ms / 3 > 0 ? pc->ttl_ms / 3 : 1);
	every_entry(pc, 'J');
	pcluster_flush(pc);
	if (beat(pc, false))
		pcl_stat_add(&pcl_stats.errors, 1);
}

bool pcluster_busy(const struct pcluster *pc)
{
	return pc->leaving && (pc->inflight > 0 || pcluster_queued(pc) > 0) && broker_up(pc->b);
}

void pcluster_leave_all(struct pcluster *pc)
{
	if (pc->leaving)
		return;
	pc->head = pc->nops = 0; /* a refresh still queued is moot */
	pc->leaving = true;      /* before the flush: on_batch's fences */
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
	if (broker_listen(b, pc->ctl, pcl_ctl_on_message, pc) || broker_on_state(b, on_state, pc)) {
		free(pc);
		return NULL;
	}
	return pc;
}

void pcluster_free(struct pcluster *pc)
{
	if (!pc)
		return;
	pcl_ctl_free(pc);
	free(pc->ops);
	free(pc);
}
