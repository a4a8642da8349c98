/* presence: presence, client events and control commands. See presence.h. */
#include "presence.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "livehub.h"
#include "names.h"
#include "presence_cluster.h"
#include "strbuf.h"

#define TENANT_CHANNEL      "$tenant"
#define USER_PREFIX         "$user:"
#define CLIENT_EVENT_PREFIX "client:"
#define MAX_PATTERNS        64

struct pattern {
	char *text; /* without the '*' */
	size_t len;
	bool prefix; /* ended in '*' */
};

struct patterns {
	struct pattern *v;
	size_t n;
};

struct presence {
	/* Redis mode: client events go to the other nodes too (borrowed). */
	void (*relay)(void *arg, const char *tenant, const char *name, const struct frame *f);
	void *relay_arg;
	struct patterns events;  /* join/leave */
	struct patterns publish; /* client events */
	int64_t rate, burst;
	bool tenant_presence;
	struct pcluster *cl; /* Redis mode: presence across nodes; borrowed */
	/* Redis mode: how a Subscribe call subscribes a connection (borrowed). */
	int (*subscriber)(void *arg, struct hub_conn *c, const char *channel);
	void *subscriber_arg;
};

/* One writer (the service thread); relaxed loads elsewhere. */
static struct {
	_Atomic uint64_t client_events, client_events_limited, presence_events, disconnects,
	        commands;
} stats;

static void stat_add(_Atomic uint64_t *v, uint64_t d)
{
	atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + d,
	                      memory_order_relaxed);
}

void presence_stats_read(struct presence_stats *out)
{
	out->client_events = atomic_load_explicit(&stats.client_events, memory_order_relaxed);
	out->client_events_limited =
	        atomic_load_explicit(&stats.client_events_limited, memory_order_relaxed);
	out->presence_events = atomic_load_explicit(&stats.presence_events, memory_order_relaxed);
	out->disconnects = atomic_load_explicit(&stats.disconnects, memory_order_relaxed);
	out->commands = atomic_load_explicit(&stats.commands, memory_order_relaxed);
}

void command_clear(struct command *cmd)
{
	for (size_t i = 0; i < cmd->nentries; i++)
		free(cmd->entries[i].name);
	free(cmd->entries);
	cmd->entries = NULL;
	cmd->nentries = 0;
}

/* ------------------------------------------------------------------------
 * Patterns
 * ------------------------------------------------------------------------ */

/* Walks the list s (patterns separated by commas and/or spaces), checking
 * each and, when out is not NULL, appending it to out (room for every
 * pattern allocated by the caller). Returns the number of patterns, or -1
 * with *why set. */
static int patterns_walk(const char *s, struct patterns *out, const char **why)
{
	int n = 0;
	while (s && *s) {
		while (*s == ' ' || *s == ',')
			s++;
		if (!*s)
			break;
		const char *start = s;
		while (*s && *s != ',' && *s != ' ')
			s++;
		size_t len = (size_t)(s - start);
		if (len == 0)
			continue;
		bool prefix = start[len - 1] == '*';
		size_t body = prefix ? len - 1 : len;
		if (memchr(start, '*', body)) {
			*why = "'*' may only end a pattern";
			return -1;
		}
		if (body > 0 && !name_channel_ok(start, body)) {
			*why = "a pattern must be a channel name, optionally ending in '*'";
			return -1;
		}
		if (++n > MAX_PATTERNS) {
			*why = "more than 64 patterns";
			return -1;
		}
		if (out) {
			struct pattern *p = &out->v[out->n];
			p->text = strndup(start, body);
			if (!p->text) {
				*why = "out of memory";
				return -1;
			}
			p->len = body;
			p->prefix = prefix;
			out->n++;
		}
	}
	return n;
}

int presence_config_check(const char *patterns, const char **why)
{
	return patterns_walk(patterns, NULL, why) < 0 ? -1 : 0;
}

static void patterns_free(struct patterns *ps)
{
	for (size_t i = 0; i < ps->n; i++)
		free(ps->v[i].text);
	free(ps->v);
	ps->v = NULL;
	ps->n = 0;
}

static int patterns_parse(const char *s, struct patterns *out)
{
	const char *why;
	int n = patterns_walk(s, NULL, &why);
	if (n <= 0)
		return n;
	out->v = calloc((size_t)n, sizeof(*out->v));
	if (!out->v || patterns_walk(s, out, &why) < 0) {
		patterns_free(out);
		return -1;
	}
	return 0;
}

static bool patterns_match(const struct patterns *ps, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < ps->n; i++) {
		const struct pattern *p = &ps->v[i];
		if (p->prefix ? n >= p->len && memcmp(name, p->text, p->len) == 0
		              : n == p->len && memcmp(name, p->text, n) == 0)
			return true;
	}
	return false;
}

struct presence *presence_new(const struct presence_config *cfg)
{
	struct presence *pr = calloc(1, sizeof(*pr));
	if (!pr)
		return NULL;
	if (patterns_parse(cfg->presence_channels, &pr->events) ||
	    patterns_parse(cfg->client_events, &pr->publish)) {
		presence_free(pr);
		return NULL;
	}
	pr->rate = cfg->event_rate > 0 ? cfg->event_rate : 1;
	pr->burst = cfg->event_burst > 0 ? cfg->event_burst : 1;
	pr->tenant_presence = cfg->tenant_presence;
	return pr;
}

void presence_free(struct presence *pr)
{
	if (!pr)
		return;
	patterns_free(&pr->events);
	patterns_free(&pr->publish);
	free(pr);
}

void presence_set_cluster(struct presence *pr, struct pcluster *cl)
{
	pr->cl = cl;
}

void presence_set_subscriber(struct presence *pr,
                             int (*fn)(void *arg, struct hub_conn *c, const char *channel),
                             void *arg)
{
	pr->subscriber = fn;
	pr->subscriber_arg = arg;
}

bool presence_tenant_on(const struct presence *pr)
{
	return pr->tenant_presence;
}

void presence_set_relay(struct presence *pr,
                        void (*fn)(void *arg, const char *tenant, const char *name,
                                   const struct frame *f),
                        void *arg)
{
	pr->relay = fn;
	pr->relay_arg = arg;
}

bool presence_events_on(const struct presence *pr, const char *name)
{
	/* Never on the implicit channels, whatever the patterns ("*"): who is
	 * in a tenant is LIVEHUB_TENANT_PRESENCE's business alone. */
	return name[0] != '$' && patterns_match(&pr->events, name);
}

/* ------------------------------------------------------------------------
 * Walking a channel
 * ------------------------------------------------------------------------ */

/* Counts connections of one user (by hub_conn_user pointer) other than
 * except. */
struct same_user {
	const char *user;
	const struct hub_conn *except;
	uint32_t n;
};

static void count_same_user(struct hub_conn *c, void *arg)
{
	struct same_user *su = arg;
	if (c != su->except && hub_conn_user(c) == su->user)
		su->n++;
}

/* Other connections of c's user on tenant's channel name. */
static uint32_t others_of_user(struct hub *h, struct hub_conn *c, const char *name)
{
	struct same_user su = {hub_conn_user(c), c, 0};
	hub_channel_each(h, hub_conn_tenant(c), name, count_same_user, &su);
	return su.n;
}

/* Queues one frame on every connection but except. */
struct fanout {
	struct hub *h;
	const struct hub_conn *except;
	struct frame *f;
	uint32_t n;
};

static void send_one(struct hub_conn *c, void *arg)
{
	struct fanout *fo = arg;
	if (c != fo->except && hub_conn_send(fo->h, c, fo->f) == 0)
		fo->n++;
}

/* Sends f to every connection on tenant's channel name but except; drops
 * the caller's reference. Returns how many got it. */
static uint32_t fan_out(struct hub *h, const char *tenant, const char *name,
                        const struct hub_conn *except, struct frame *f)
{
	if (!f)
		return 0;
	struct fanout fo = {h, except, f, 0};
	hub_channel_each(h, tenant, name, send_one, &fo);
	frame_unref(f);
	return fo.n;
}

/* {"type":TYPE,"channel":NAME,"user":…,"clientId":…} */
static struct frame *member_frame_of(const char *type, const char *name, const char *user,
                                     const char *client_id)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_key_str(&sb, "{\"type\":", type);
	sb_add_key_str(&sb, ",\"channel\":", name);
	sb_add_key_str(&sb, ",\"user\":", user);
	sb_add_key_str(&sb, ",\"clientId\":", client_id);
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

static struct frame *member_frame(const char *type, const char *name, const struct hub_conn *c)
{
	char cid[HUB_CONN_ID_MAX];
	return member_frame_of(type, name, hub_conn_user(c), hub_conn_id(c, cid));
}

/* Like fan_out, the connection left out named by its id. */
struct fanout_id {
	struct hub *h;
	const char *except;
	struct frame *f;
	uint32_t n;
};

static void send_one_id(struct hub_conn *c, void *arg)
{
	struct fanout_id *fo = arg;
	char cid[HUB_CONN_ID_MAX];
	if (strcmp(hub_conn_id(c, cid), fo->except) != 0 && hub_conn_send(fo->h, c, fo->f) == 0)
		fo->n++;
}

uint32_t presence_announce(struct hub *h, const char *tenant, const char *type, const char *name,
                           const char *user, const char *client_id, struct frame **out)
{
	*out = member_frame_of(type, name, user, client_id);
	if (!*out)
		return 0;
	struct fanout_id fo = {h, client_id, *out, 0};
	hub_channel_each(h, tenant, name, send_one_id, &fo);
	stat_add(&stats.presence_events, fo.n);
	return fo.n;
}

/* Tells tenant's channel name that c's user joined or left. */
static void announce(struct hub *h, const char *type, const char *name, const struct hub_conn *c)
{
	uint32_t n = fan_out(h, hub_conn_tenant(c), name, c, member_frame(type, name, c));
	stat_add(&stats.presence_events, n);
}

/* ------------------------------------------------------------------------
 * Connection hooks
 * ------------------------------------------------------------------------ */

/* Writes "$user:{user}" of c into buf (LH_CHANNEL_MAX + 1 bytes). */
static const char *user_channel(const struct hub_conn *c, char *buf)
{
	size_t n = strlen(hub_conn_user(c));
	memcpy(buf, USER_PREFIX, sizeof(USER_PREFIX) - 1);
	memcpy(buf + sizeof(USER_PREFIX) - 1, hub_conn_user(c), n + 1);
	return buf;
}

/* In Redis mode every membership (explicit channels and the tenant) is
 * written to Redis, and while Redis is up the announcements come from
 * there (whether the user is first or last in the whole cluster); while it
 * is down this node announces what it sees, as on one node. Returns true
 * when the cluster announces. */
static bool cluster_member(struct presence *pr, struct hub_conn *c, const char *name, bool join)
{
	if (!pr->cl)
		return false;
	pcluster_member(pr->cl, c, name, join);
	return pcluster_up(pr->cl);
}

void presence_on_open(struct presence *pr, struct hub *h, struct hub_conn *c)
{
	char uch[LH_CHANNEL_MAX + 1];
	if (cluster_member(pr, c, TENANT_CHANNEL, true))
		return;
	if (pr->tenant_presence && others_of_user(h, c, user_channel(c, uch)) == 0)
		announce(h, "user:online", TENANT_CHANNEL, c);
}

void presence_on_subscribed(struct presence *pr, struct hub *h, struct hub_conn *c,
                            const char *name)
{
	if (cluster_member(pr, c, name, true))
		return;
	if (presence_events_on(pr, name) && others_of_user(h, c, name) == 0)
		announce(h, "presence:join", name, c);
}

void presence_on_unsubscribed(struct presence *pr, struct hub *h, struct hub_conn *c,
                              const char *name)
{
	if (cluster_member(pr, c, name, false))
		return;
	if (presence_events_on(pr, name) && others_of_user(h, c, name) == 0)
		announce(h, "presence:leave", name, c);
}

struct closing {
	struct presence *pr;
	struct hub *h;
	struct hub_conn *c;
};

static void leave_one(const char *name, void *arg)
{
	struct closing *cl = arg;
	presence_on_unsubscribed(cl->pr, cl->h, cl->c, name);
}

void presence_on_close(struct presence *pr, struct hub *h, struct hub_conn *c)
{
	struct closing cl = {pr, h, c};
	if (pr->events.n > 0 || pr->cl)
		hub_conn_each_channel(c, leave_one, &cl);
	char uch[LH_CHANNEL_MAX + 1];
	if (cluster_member(pr, c, TENANT_CHANNEL, false))
		return;
	if (pr->tenant_presence && others_of_user(h, c, user_channel(c, uch)) == 0)
		announce(h, "user:offline", TENANT_CHANNEL, c);
}

/* ------------------------------------------------------------------------
 * Presence: users of a channel with their connection counts
 * ------------------------------------------------------------------------ */

struct users {
	const char **v; /* one entry per connection, user pointers */
	uint32_t n, cap;
	bool oom;
};

static void collect_user(struct hub_conn *c, void *arg)
{
	struct users *u = arg;
	if (u->n == u->cap) {
		uint32_t cap = u->cap ? u->cap * 2 : 16;
		const char **v = realloc(u->v, cap * sizeof(*v));
		if (!v) {
			u->oom = true;
			return;
		}
		u->v = v;
		u->cap = cap;
	}
	u->v[u->n++] = hub_conn_user(c);
}

static int cmp_ptr(const void *a, const void *b)
{
	const char *x = *(const char *const *)a, *y = *(const char *const *)b;
	return x < y ? -1 : x > y;
}

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const struct command_entry *)a)->name,
	              ((const struct command_entry *)b)->name);
}

/* Fills cmd->entries (users, sorted) and cmd->connections from tenant's
 * channel name. Returns 0 or LH_ENOMEM. */
static int count_users(struct hub *h, const char *tenant, const char *name, struct command *cmd)
{
	struct users u = {0};
	hub_channel_each(h, tenant, name, collect_user, &u);
	int rc = u.oom ? LH_ENOMEM : 0;
	cmd->connections = u.n;
	if (rc == 0 && u.n > 0) {
		qsort(u.v, u.n, sizeof(*u.v), cmp_ptr);
		cmd->entries = calloc(u.n, sizeof(*cmd->entries));
		if (!cmd->entries)
			rc = LH_ENOMEM;
	}
	for (uint32_t i = 0; rc == 0 && i < u.n; i++) {
		struct command_entry *e = &cmd->entries[cmd->nentries];
		if (cmd->nentries > 0 && u.v[i] == u.v[i - 1]) {
			e[-1].count++;
			continue;
		}
		if (!(e->name = strdup(u.v[i])))
			rc = LH_ENOMEM;
		e->count = 1;
		cmd->nentries++;
	}
	free(u.v);
	if (rc) {
		command_clear(cmd);
		return rc;
	}
	if (cmd->nentries > 1)
		qsort(cmd->entries, cmd->nentries, sizeof(*cmd->entries), cmp_entry);
	return 0;
}

struct frame *presence_frame_build(const char *channel, const char *id, size_t id_len,
                                   const struct command *cmd, bool partial)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_key_str(&sb, "{\"type\":\"presence\",\"channel\":", channel);
	sb_adds(&sb, ",\"connections\":");
	sb_add_u64(&sb, cmd->connections);
	sb_adds(&sb, ",\"users\":[");
	for (size_t i = 0; i < cmd->nentries; i++) {
		sb_add_key_str(&sb, i ? ",{\"user\":" : "{\"user\":", cmd->entries[i].name);
		sb_adds(&sb, ",\"connections\":");
		sb_add_u64(&sb, cmd->entries[i].count);
		sb_addc(&sb, '}');
	}
	sb_addc(&sb, ']');
	if (partial)
		sb_adds(&sb, ",\"partial\":true");
	if (id_len > 0) {
		sb_adds(&sb, ",\"id\":");
		sb_add(&sb, id, id_len);
	}
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

struct frame *presence_frame_error(const char *id, size_t id_len, const char *why)
{
	struct wsp_request *req = calloc(1, sizeof *req);
	if (!req)
		return NULL;
	memcpy(req->id, id, id_len);
	req->id_len = id_len;
	struct frame *f = wsp_error(WSP_SERVER_ERROR, why, true, req);
	free(req);
	return f;
}

struct frame *presence_local_frame(struct hub *h, const char *tenant, const char *channel,
                                   const char *id, size_t id_len, bool partial)
{
	struct command cmd;
	memset(&cmd, 0, sizeof(cmd));
	if (count_users(h, tenant, channel, &cmd))
		return presence_frame_error(id, id_len, "out of memory");
	struct frame *f = presence_frame_build(channel, id, id_len, &cmd, partial);
	command_clear(&cmd);
	return f;
}

/* Whether c may ask the presence of req->channel; else the error frame
 * in *err (NULL: out of memory). */
static bool may_ask(struct presence *pr, struct hub *h, struct hub_conn *c,
                    const struct wsp_request *req, struct frame **err)
{
	bool tenant = strcmp(req->channel, TENANT_CHANNEL) == 0;
	if (tenant ? pr->tenant_presence : hub_conn_subscribed(h, c, req->channel))
		return true;
	*err = wsp_error(WSP_CHANNEL_ACCESS_DENIED,
	                 tenant ? "tenant presence is not enabled"
	                        : "subscribe to the channel before asking its presence",
	                 true, req);
	return false;
}

bool presence_request_cluster(struct presence *pr, struct hub *h, struct hub_conn *c,
                              const struct wsp_request *req)
{
	struct frame *err = NULL;
	if (!pr->cl || !may_ask(pr, h, c, req, &err)) {
		if (err)
			frame_unref(err);
		return false;
	}
	return pcluster_request(pr->cl, c, req) == 0;
}

struct frame *presence_request(struct presence *pr, struct hub *h, struct hub_conn *c,
                               const struct wsp_request *req)
{
	struct frame *err = NULL;
	if (!may_ask(pr, h, c, req, &err))
		return err;
	/* In Redis mode this node alone answers only while Redis is down. */
	return presence_local_frame(h, hub_conn_tenant(c), req->channel, req->id, req->id_len,
	                            pr->cl != NULL);
}

/* ------------------------------------------------------------------------
 * Client events
 * ------------------------------------------------------------------------ */

int presence_may_publish(const struct presence *pr, struct hub *h, struct hub_conn *c,
                         const char *channel, enum wsp_code *code, const char **why)
{
	if (!patterns_match(&pr->publish, channel)) {
		*code = WSP_PERMISSION_DENIED;
		*why = "client events are not enabled on this channel";
		return -1;
	}
	if (!hub_conn_subscribed(h, c, channel)) {
		*code = WSP_CHANNEL_ACCESS_DENIED;
		*why = "subscribe to the channel before publishing on it";
		return -1;
	}
	return 0;
}

/* Takes one token from b. Returns false when it is empty. */
static bool bucket_take(const struct presence *pr, struct presence_bucket *b, int64_t now_ms)
{
	int64_t cap = pr->burst * 1000;
	if (b->last_ms == 0) {
		b->milli_tokens = cap;
	} else if (now_ms > b->last_ms) {
		int64_t add = (now_ms - b->last_ms) * pr->rate;
		b->milli_tokens = add > cap - b->milli_tokens ? cap : b->milli_tokens + add;
	}
	b->last_ms = now_ms > 0 ? now_ms : 1;
	if (b->milli_tokens < 1000)
		return false;
	b->milli_tokens -= 1000;
	return true;
}

/* {"type":"client:EVENT","channel":…,"user":…,"clientId":…,"data":…} */
static struct frame *client_event_frame(const struct hub_conn *c, const struct wsp_request *req)
{
	struct strbuf sb = STRBUF_INIT;
	char cid[HUB_CONN_ID_MAX];
	sb_adds(&sb, "{\"type\":\"" CLIENT_EVENT_PREFIX);
	sb_adds(&sb, req->event); /* name_type_ok: nothing to escape */
	sb_add_key_str(&sb, "\",\"channel\":", req->channel);
	sb_add_key_str(&sb, ",\"user\":", hub_conn_user(c));
	sb_add_key_str(&sb, ",\"clientId\":", hub_conn_id(c, cid));
	sb_adds(&sb, ",\"data\":");
	if (req->data)
		sb_add(&sb, req->data, req->data_len);
	else
		sb_adds(&sb, "{}");
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

/* {"type":"published","channel":…[,"id":…]} */
static struct frame *published_frame(const struct wsp_request *req)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_key_str(&sb, "{\"type\":\"published\",\"channel\":", req->channel);
	if (req->id_len > 0) {
		sb_adds(&sb, ",\"id\":");
		sb_add(&sb, req->id, req->id_len);
	}
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

struct frame *presence_publish(struct presence *pr, struct hub *h, struct hub_conn *c,
                               struct presence_bucket *b, int64_t now_ms,
                               const struct wsp_request *req)
{
	enum wsp_code code;
	const char *why;
	if (presence_may_publish(pr, h, c, req->channel, &code, &why))
		return wsp_error(code, why, true, req);
	if (!bucket_take(pr, b, now_ms)) {
		stat_add(&stats.client_events_limited, 1);
		return wsp_error(WSP_RATE_LIMITED, "too many client events; slow down", true, req);
	}
	struct frame *ev = client_event_frame(c, req);
	if (!ev)
		return NULL;
	if (pr->relay)
		pr->relay(pr->relay_arg, hub_conn_tenant(c), req->channel, ev);
	fan_out(h, hub_conn_tenant(c), req->channel, c, ev);
	stat_add(&stats.client_events, 1);
	return published_frame(req);
}

/* ------------------------------------------------------------------------
 * Control commands
 * ------------------------------------------------------------------------ */

struct target {
	struct hub *h;
	struct command *cmd;
	const char *user; /* NULL: any; else compared by content */
};

static void disconnect_one(struct hub_conn *c, void *arg)
{
	struct target *t = arg;
	struct command *cmd = t->cmd;
	char cid[HUB_CONN_ID_MAX];
	if (cmd->client_id[0] && strcmp(hub_conn_id(c, cid), cmd->client_id) != 0)
		return;
	const char *reason = cmd->reason[0] ? cmd->reason : "DISCONNECTED";
	if (hub_conn_kill(t->h, c, cmd->close_code, reason))
		cmd->connections++;
}

/* Disconnect: by client id (searched among the tenant's connections), by
 * user, or the whole tenant. */
static int run_disconnect(struct hub *h, const char *tenant, struct command *cmd)
{
	struct target t = {h, cmd, NULL};
	char uch[LH_CHANNEL_MAX + 1];
	const char *name = TENANT_CHANNEL;
	if (cmd->user[0]) {
		snprintf(uch, sizeof(uch), USER_PREFIX "%s", cmd->user);
		name = uch;
	}
	hub_channel_each(h, tenant, name, disconnect_one, &t);
	stat_add(&stats.disconnects, cmd->connections);
	return 0;
}

/* The subscription changes are collected first and made after the walk:
 * subscribing changes no array of the user channel being walked, but the
 * hooks that announce joins walk other channels, so keeping them apart is
 * simpler to reason about. */
struct conns {
	struct hub_conn **v;
	uint32_t n, cap;
	bool oom;
};

static void collect_conn(struct hub_conn *c, void *arg)
{
	struct conns *cs = arg;
	if (cs->n == cs->cap) {
		uint32_t cap = cs->cap ? cs->cap * 2 : 8;
		struct hub_conn **v = realloc(cs->v, cap * sizeof(*v));
		if (!v) {
			cs->oom = true;
			return;
		}
		cs->v = v;
		cs->cap = cap;
	}
	cs->v[cs->n++] = c;
}

/* {"type":"subscribed"|"unsubscribed","channel":…[,"offset":…,"epoch":…]},
 * server-initiated: no id. */
static struct frame *server_frame(const char *type, const struct command *cmd, bool position)
{
	struct strbuf sb = STRBUF_INIT;
	sb_adds(&sb, "{\"type\":\"");
	sb_adds(&sb, type);
	sb_add_key_str(&sb, "\",\"channel\":", cmd->channel);
	if (position) {
		sb_adds(&sb, ",\"offset\":");
		sb_add_u64(&sb, cmd->offset);
		sb_add_key_str(&sb, ",\"epoch\":", cmd->epoch);
	}
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

static void send_to(struct hub *h, struct hub_conn *c, struct frame *f)
{
	if (f)
		hub_conn_send(h, c, f);
}

static int run_subscription(struct presence *pr, struct hub *h, const char *tenant,
                            struct command *cmd)
{
	struct conns cs = {0};
	char uch[LH_CHANNEL_MAX + 1];
	snprintf(uch, sizeof(uch), USER_PREFIX "%s", cmd->user);
	hub_channel_each(h, tenant, uch, collect_conn, &cs);
	int rc = cs.oom ? LH_ENOMEM : 0;
	bool sub = cmd->kind == CMD_SUBSCRIBE;
	struct frame *f = NULL;
	/* Redis mode: the cluster subscribes, replies with Redis's position
	 * and announces the join itself; the call's position is read from
	 * Redis afterwards (presence_cluster.c). */
	bool served = sub && pr->subscriber;
	for (uint32_t i = 0; rc == 0 && i < cs.n; i++) {
		struct hub_conn *c = cs.v[i];
		int r = served ? pr->subscriber(pr->subscriber_arg, c, cmd->channel)
		        : sub  ? hub_subscribe(h, c, cmd->channel)
		               : hub_unsubscribe(h, c, cmd->channel);
		if (r == LH_EEXIST) {
			cmd->already++;
			continue;
		}
		if (r == LH_ENOENT)
			continue;
		if (r == LH_ELIMIT) {
			cmd->refused++;
			continue;
		}
		if (r) {
			rc = r;
			break;
		}
		cmd->connections++;
		if (served)
			continue;
		if (sub && !f) {
			hub_channel_top(h, tenant, cmd->channel, &cmd->offset, cmd->epoch);
			f = server_frame("subscribed", cmd, true);
		} else if (!sub && !f) {
			f = server_frame("unsubscribed", cmd, false);
		}
		send_to(h, c, f);
		if (sub)
			presence_on_subscribed(pr, h, c, cmd->channel);
		else
			presence_on_unsubscribed(pr, h, c, cmd->channel);
	}
	if (f)
		frame_unref(f);
	if (sub && (served || cmd->connections == 0))
		hub_channel_top(h, tenant, cmd->channel, &cmd->offset, cmd->epoch);
	free(cs.v);
	return rc;
}

struct listing {
	struct command *cmd;
	size_t cap;
	bool oom;
};

static void collect_channel(const char *name, uint32_t subscribers, void *arg)
{
	struct listing *l = arg;
	struct command *cmd = l->cmd;
	if (l->oom)
		return;
	if (cmd->nentries == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct command_entry *v = realloc(cmd->entries, cap * sizeof(*v));
		if (!v) {
			l->oom = true;
			return;
		}
		cmd->entries = v;
		l->cap = cap;
	}
	struct command_entry *e = &cmd->entries[cmd->nentries];
	if (!(e->name = strdup(name))) {
		l->oom = true;
		return;
	}
	e->count = subscribers;
	cmd->nentries++;
}

/* Every matching channel is collected and sorted, then cut at the limit,
 * so that the answer does not depend on the dict's order. */
static int run_list(struct hub *h, const char *tenant, struct command *cmd)
{
	struct listing l = {cmd, 0, false};
	hub_channels_each(h, tenant, cmd->channel, collect_channel, &l);
	if (l.oom) {
		command_clear(cmd);
		return LH_ENOMEM;
	}
	if (cmd->nentries > 1)
		qsort(cmd->entries, cmd->nentries, sizeof(*cmd->entries), cmp_entry);
	uint32_t limit = cmd->limit ? cmd->limit : LH_LIST_LIMIT_DEF;
	while (cmd->nentries > limit) {
		free(cmd->entries[--cmd->nentries].name);
		cmd->truncated = true;
	}
	return 0;
}

int presence_run(struct presence *pr, struct hub *h, const char *tenant, struct command *cmd)
{
	if (!name_tenant_ok(tenant, strnlen(tenant, LH_TENANT_MAX + 1)))
		return LH_EINVAL;
	switch (cmd->kind) {
	case CMD_PRESENCE:
		return count_users(h, tenant, cmd->channel[0] ? cmd->channel : TENANT_CHANNEL, cmd);
	case CMD_DISCONNECT: return run_disconnect(h, tenant, cmd);
	case CMD_SUBSCRIBE:
	case CMD_UNSUBSCRIBE: return run_subscription(pr, h, tenant, cmd);
	case CMD_LIST_CHANNELS: return run_list(h, tenant, cmd);
	}
	return LH_EINVAL;
}

void presence_command(struct presence *pr, struct hub *h, struct publication *p)
{
	stat_add(&stats.commands, 1);
	if (pr->cl && name_tenant_ok(p->tenant, strnlen(p->tenant, sizeof(p->tenant))) &&
	    pcluster_command(pr->cl, p))
		return;
	p->status = presence_run(pr, h, p->tenant, p->cmd);
	if (p->on_done)
		p->on_done(p);
}
