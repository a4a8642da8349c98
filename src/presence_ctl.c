/* presence_ctl: Disconnect, Subscribe and Unsubscribe across nodes, over
 * P:ctl. See presence_cluster.h ("Control commands") and
 * docs/SCALING.md "Presence across nodes".
 *
 * The node that gets the call runs it on its own connections, then
 * PUBLISHes {"node","op","req","tenant",…} on P:ctl; every other node runs
 * it and PUBLISHes {"node","op":"ack","to","req","n","already","refused"}.
 * The call waits (struct pending) until as many acknowledgements came as
 * PUBLISH counted receivers other than this node, or PCL_CTL_WAIT_MS. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "livehub.h"
#include "log.h"
#include "presence.h"
#include "presence_cluster_int.h"

static const char *op_name(enum command_kind k)
{
	switch (k) {
	case CMD_DISCONNECT: return "disconnect";
	case CMD_SUBSCRIBE: return "subscribe";
	case CMD_UNSUBSCRIBE: return "unsubscribe";
	case CMD_LIST_CHANNELS: return "list";
	default: return NULL;
	}
}

/* The channel's position in Redis for a Subscribe call (this node's idea
 * of it may be behind: the channel may just have been followed). */
static void on_position(void *arg, redisReply *r)
{
	struct publication *p = arg;
	struct command *cmd = p->cmd;
	if (pcl_is_array(r, 2) && pcl_is_str(r->element[0]) && r->element[0]->len == 16) {
		memcpy(cmd->epoch, r->element[0]->str, 16);
		cmd->epoch[16] = '\0';
		cmd->offset =
		        pcl_is_str(r->element[1]) ? strtoull(r->element[1]->str, NULL, 10) : 0;
	} else if (!r || r->type == REDIS_REPLY_ERROR) {
		pcl_reply_failed("position", r);
	}
	if (p->on_done)
		p->on_done(p);
}

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const struct command_entry *)a)->name,
	              ((const struct command_entry *)b)->name);
}

/* ListChannels: every node's first `limit` channels by name, merged: the
 * cluster's first `limit` are all among them (a channel has no more
 * channels before it on one node than in the cluster), with every node's
 * subscribers summed. */
static void list_merge(struct command *cmd)
{
	if (cmd->nentries > 1)
		qsort(cmd->entries, cmd->nentries, sizeof(*cmd->entries), cmp_entry);
	size_t n = 0;
	for (size_t i = 0; i < cmd->nentries; i++) {
		if (n > 0 && strcmp(cmd->entries[n - 1].name, cmd->entries[i].name) == 0) {
			cmd->entries[n - 1].count += cmd->entries[i].count;
			free(cmd->entries[i].name);
			continue;
		}
		cmd->entries[n++] = cmd->entries[i];
	}
	cmd->nentries = n;
	uint32_t limit = cmd->limit ? cmd->limit : LH_LIST_LIMIT_DEF;
	while (cmd->nentries > limit) {
		free(cmd->entries[--cmd->nentries].name);
		cmd->truncated = true;
	}
}

/* Answers p; a Subscribe call once its channel's position is read. */
static void command_done(struct pcluster *pc, struct publication *p)
{
	if (p->status == 0 && p->cmd->kind == CMD_LIST_CHANNELS)
		list_merge(p->cmd);
	if (p->status == 0 && p->cmd->kind == CMD_SUBSCRIBE) {
		char key[PCL_KEY_MAX];
		int n = snprintf(key, sizeof key, "%s:{%s:%s}:meta", pc->prefix, p->tenant,
		                 p->cmd->channel);
		const char *argv[4] = {"HMGET", key, "epoch", "top"};
		size_t lens[4] = {5, (size_t)n, 5, 3};
		if (n > 0 && n < PCL_KEY_MAX &&
		    broker_cmd(pc->b, on_position, p, 4, argv, lens) == 0)
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
	if (!pcl_is_int(r)) {
		pcl_reply_failed("control", r);
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
	} else if (cmd->kind == CMD_LIST_CHANNELS) {
		bad |= json_object_set_new(o, "prefix", json_string(cmd->channel));
		bad |= json_object_set_new(o, "limit", json_integer(cmd->limit));
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
		pcl_reply_failed("control", r);
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
/* The channels of a ListChannels answer, [[name, subscribers], ...]. */
static json_t *list_json(const struct command *cmd)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < cmd->nentries; i++)
		if (json_array_append_new(a, json_pack("[s,i]", cmd->entries[i].name,
		                                       (int)cmd->entries[i].count))) {
			json_decref(a);
			return NULL;
		}
	return a;
}

/* Another node's command: applied here, then acknowledged with counts
 * (and, for ListChannels, this node's channels). */
static void apply_remote(struct pcluster *pc, json_t *o, const char *op, const char *from)
{
	char tenant[LH_TENANT_MAX + 1];
	struct command cmd;
	memset(&cmd, 0, sizeof cmd);
	json_t *req = json_object_get(o, "req"), *limit = json_object_get(o, "limit");
	cmd.kind = strcmp(op, "disconnect") == 0    ? CMD_DISCONNECT
	           : strcmp(op, "subscribe") == 0   ? CMD_SUBSCRIBE
	           : strcmp(op, "unsubscribe") == 0 ? CMD_UNSUBSCRIBE
	           : strcmp(op, "list") == 0        ? CMD_LIST_CHANNELS
	                                            : 0;
	if (!cmd.kind || !json_is_integer(req) || !get_str(o, "tenant", tenant, sizeof tenant) ||
	    !get_str(o, "user", cmd.user, sizeof cmd.user) ||
	    !get_str(o, cmd.kind == CMD_LIST_CHANNELS ? "prefix" : "channel", cmd.channel,
	             sizeof cmd.channel) ||
	    !get_str(o, "client", cmd.client_id, sizeof cmd.client_id) ||
	    !get_str(o, "reason", cmd.reason, sizeof cmd.reason)) {
		log_warn("msg=\"cluster control: malformed command ignored\" from=%s", from);
		return;
	}
	json_t *code = json_object_get(o, "code");
	cmd.close_code = json_is_integer(code) && json_integer_value(code) == LH_CLOSE_RECONNECT
	                         ? LH_CLOSE_RECONNECT
	                         : LH_CLOSE_GOODBYE;
	if (json_is_integer(limit) && json_integer_value(limit) > 0 &&
	    json_integer_value(limit) <= LH_LIST_LIMIT_MAX)
		cmd.limit = (uint32_t)json_integer_value(limit);
	int rc = presence_run(*pc->env.pres, pc->env.hub, tenant, &cmd);
	pcl_stat_add(&pcl_stats.ctl_applied, 1);
	if (rc)
		log_warn("msg=\"cluster control: command failed here\" op=%s error=%s", op,
		         lh_strerror(rc));
	json_t *ack =
	        json_pack("{s:s,s:s,s:s,s:O,s:i,s:i,s:i,s:b}", "node", pc->node, "op", "ack", "to",
	                  from, "req", req, "n", (int)cmd.connections, "already", (int)cmd.already,
	                  "refused", (int)cmd.refused, "truncated", cmd.truncated);
	if (ack && cmd.kind == CMD_LIST_CHANNELS &&
	    json_object_set_new(ack, "channels", list_json(&cmd))) {
		json_decref(ack);
		ack = NULL;
	}
	command_clear(&cmd);
	char *s = ack ? json_dumps(ack, JSON_COMPACT) : NULL;
	json_decref(ack);
	if (!s || ctl_publish(pc, s, on_ignored, NULL))
		log_warn("msg=\"cluster control: cannot acknowledge\" op=%s", op);
	free(s);
}

/* Appends another node's channels ([[name, subscribers], ...]) to cmd's
 * entries (merged when the call is answered). Returns 0 or LH_ENOMEM. */
static int ack_channels(struct command *cmd, json_t *a)
{
	size_t n = json_array_size(a);
	if (n == 0 || n > LH_LIST_LIMIT_MAX)
		return 0;
	struct command_entry *v = realloc(cmd->entries, (cmd->nentries + n) * sizeof(*v));
	if (!v)
		return LH_ENOMEM;
	cmd->entries = v;
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(a, i), *name = json_array_get(e, 0),
		       *count = json_array_get(e, 1);
		if (!json_is_string(name) || !json_is_integer(count) ||
		    json_string_length(name) > LH_CHANNEL_MAX || json_integer_value(count) < 0)
			continue;
		char *copy = strdup(json_string_value(name));
		if (!copy)
			return LH_ENOMEM;
		cmd->entries[cmd->nentries].name = copy;
		cmd->entries[cmd->nentries++].count = (uint32_t)json_integer_value(count);
	}
	return 0;
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
	if (json_is_true(json_object_get(o, "truncated")))
		cmd->truncated = true;
	if (cmd->kind == CMD_LIST_CHANNELS && ack_channels(cmd, json_object_get(o, "channels")))
		pd->p->status = LH_ENOMEM;
	pd->got++;
	pending_check(pc, pd);
}

void pcl_ctl_on_message(void *arg, const char *msg, size_t len)
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

bool pcl_ctl_command(struct pcluster *pc, struct publication *p)
{
	struct command *cmd = p->cmd;
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
	pcl_stat_add(&pcl_stats.ctl_sent, 1);
	return true;
}

void pcl_ctl_expire(struct pcluster *pc, int64_t now_ms)
{
	for (struct pending *pd = pc->pending, *next; pd; pd = next) {
		next = pd->next;
		if (now_ms >= pd->deadline)
			pending_finish(pc, pd);
	}
}

void pcl_ctl_free(struct pcluster *pc)
{
	while (pc->pending)
		pending_finish(pc, pc->pending);
}
