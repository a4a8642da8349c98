/*
 * rpc_methods: validation of HubService requests, request -> publication,
 * finished publication -> response. See rpc_methods.h.
 */
#include "rpc_methods.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "livehub.h"
#include "livehub/v1/events.pb-c.h"
#include "log.h"
#include "names.h"
#include "pbjson.h"
#include "strbuf.h"
#include "utf8.h"

/* The charsets of names.h, as error messages spell them. */
#define CHANNEL_CHARS "[A-Za-z0-9_.:@+=/-]"
#define TYPE_CHARS    "[A-Za-z0-9_.:-]"

/* Event types the client protocol uses for its own messages: an event of
 * one of these types would be indistinguishable from a protocol reply. */
static const char *const reserved_types[] = {
        "connected", "subscribed",    "unsubscribed",   "pong",        "error",        "presence",
        "published", "presence:join", "presence:leave", "user:online", "user:offline",
};
/* Client events are typed "client:{event}"; a service cannot pass for a client. */
#define CLIENT_EVENT_PREFIX "client:"

/* Fills err and returns -1, so a check can `return fail(...)`. */
__attribute__((format(printf, 3, 4))) static int fail(struct rpc_error *err, enum rpc_code code,
                                                      const char *fmt, ...)
{
	va_list ap;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	return -1;
}

/* Frees p's data buffer. */
static void drop_data(struct publication *p)
{
	free(p->data);
	p->data = NULL;
	p->data_len = 0;
	p->data_cap = 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------
 * Field checks. Each fills err and returns -1 when the field is bad.
 * ---------------------------------------------------------------------- */

static int set_tenant(struct publication *p, const char *tenant, struct rpc_error *err)
{
	size_t n = strlen(tenant);
	if (n == 0)
		return fail(err, RPC_INVALID_ARGUMENT, "tenant_id: required");
	if (!name_tenant_ok(tenant, n))
		return fail(err, RPC_INVALID_ARGUMENT,
		            "tenant_id: must be 1-%d characters of [A-Za-z0-9_.-]", LH_TENANT_MAX);
	memcpy(p->tenant, tenant, n + 1);
	return 0;
}

/* Sets a type given by the caller (BroadcastTenant, SendToUser, Publish). */
static int set_custom_type(struct publication *p, const char *type, struct rpc_error *err)
{
	size_t n = strlen(type);
	if (n == 0)
		return fail(err, RPC_INVALID_ARGUMENT, "type: required");
	if (!name_type_ok(type, n))
		return fail(err, RPC_INVALID_ARGUMENT,
		            "type: must be 1-%d characters of " TYPE_CHARS, LH_TYPE_MAX);
	for (size_t i = 0; i < sizeof reserved_types / sizeof reserved_types[0]; i++)
		if (strcmp(type, reserved_types[i]) == 0)
			return fail(err, RPC_INVALID_ARGUMENT,
			            "type: \"%s\" is reserved for the client protocol", type);
	if (strncmp(type, CLIENT_EVENT_PREFIX, sizeof(CLIENT_EVENT_PREFIX) - 1) == 0)
		return fail(err, RPC_INVALID_ARGUMENT,
		            "type: \"client:\" types are reserved for client events");
	memcpy(p->type, type, n + 1);
	return 0;
}

/* Appends the channel prefix+id, where id comes from the request field
 * `field`. An empty id is an error when required, else nothing is added. */
static int add_channel(struct publication *p, const char *prefix, const char *id, const char *field,
                       bool required, struct rpc_error *err)
{
	size_t plen = strlen(prefix), n = strlen(id);
	if (n == 0)
		return required ? fail(err, RPC_INVALID_ARGUMENT, "%s: required", field) : 0;
	char *dst = p->channels[p->nchannels];
	bool ok = plen + n <= LH_CHANNEL_MAX;
	if (ok) {
		memcpy(dst, prefix, plen);
		memcpy(dst + plen, id, n + 1);
		ok = name_channel_any_ok(dst, plen + n);
	}
	if (!ok)
		return fail(err, RPC_INVALID_ARGUMENT,
		            "%s: must be 1-%zu characters of " CHANNEL_CHARS, field,
		            (size_t)LH_CHANNEL_MAX - plen);
	p->nchannels++;
	return 0;
}

/* Copies pbjson's error path (lowerCamelCase, "resultUrl") to out with its
 * first segment spelled as in the .proto ("result_url"), so that error
 * messages name fields one way. Later segments are Struct keys or fields
 * whose two spellings agree. */
static void proto_path(const ProtobufCMessageDescriptor *d, const char *path, char *out, size_t n)
{
	size_t seg = strcspn(path, ".");
	char camel[128];
	for (unsigned i = 0; i < d->n_fields; i++) {
		const char *name = d->fields[i].name;
		if (strlen(name) >= sizeof camel || pbjson_camel(name, camel) != seg ||
		    memcmp(camel, path, seg) != 0)
			continue;
		snprintf(out, n, "%s%s", name, path + seg);
		return;
	}
	snprintf(out, n, "%s", path);
}

/* Sets p->data to the JSON of msg (an unset message, e.g. an unset Struct,
 * becomes {}), written into the buffer p->data already has, if any. field
 * names msg in error messages ("event", "data"). On failure p->data is
 * freed. */
static int set_data(struct publication *p, const ProtobufCMessage *msg, const char *field,
                    struct rpc_error *err)
{
	struct strbuf sb = {p->data, 0, p->data_cap, 0};
	char path[128] = "";
	int rc = 0;

	/* One allocation for a typical event instead of growing from 64 bytes
	 * by doubling (realloc showed in the profile of a publish). */
	sb_reserve(&sb, 480);
	if (msg)
		rc = pbjson_write(&sb, msg, path, sizeof path);
	else
		sb_adds(&sb, "{}");
	if (rc == 0 && sb.oom)
		rc = LH_ENOMEM;
	p->data = sb.buf;
	p->data_cap = sb.cap;
	if (rc == 0) {
		p->data_len = sb.len;
		return 0;
	}
	drop_data(p);
	if (rc == LH_ENOMEM || !msg)
		return fail(err, RPC_INTERNAL, "out of memory");
	char where[160];
	proto_path(msg->descriptor, path, where, sizeof where);
	const char *dot = where[0] ? "." : "";
	if (rc == LH_EUTF8)
		return fail(err, RPC_INVALID_ARGUMENT, "%s%s%s: invalid UTF-8", field, dot, where);
	if (rc == LH_EINVAL)
		return fail(
		        err, RPC_INVALID_ARGUMENT,
		        "%s%s%s: value cannot be represented in JSON (NaN, Infinity or a Timestamp out of range)",
		        field, dot, where);
	return fail(err, RPC_INTERNAL, "publish failed: %s", lh_strerror(rc));
}

/* A key under which queued progress frames of one job (and sub-item)
 * conflate: FNV-1a over tenant, job id and item id, never 0. */
static uint64_t progress_key(const char *tenant, const char *job_id, const char *item_id)
{
	uint64_t h = 14695981039346656037ULL;
	const char *parts[3] = {tenant, job_id, item_id};
	for (int i = 0; i < 3; i++) {
		for (const unsigned char *s = (const unsigned char *)parts[i]; *s; s++)
			h = (h ^ *s) * 1099511628211ULL;
		h = (h ^ LH_KEY_SEP) * 1099511628211ULL;
	}
	return h ? h : 1;
}

/* ------------------------------------------------------------------------
 * The publishing methods.
 * ---------------------------------------------------------------------- */

/* The part the three job events share: tenant, event present, job and
 * project channels, type. */
static int job_common(struct publication *p, const char *tenant, const void *event,
                      const char *job_id, const char *project_id, const char *type,
                      struct rpc_error *err)
{
	if (set_tenant(p, tenant, err))
		return -1;
	if (!event)
		return fail(err, RPC_INVALID_ARGUMENT, "event: required");
	if (add_channel(p, "job:", job_id, "event.job_id", true, err) ||
	    add_channel(p, "project:", project_id, "event.project_id", false, err))
		return -1;
	strcpy(p->type, type);
	return 0;
}

static int prepare_job_progress(const ProtobufCMessage *req, struct publication *p,
                                struct rpc_error *err)
{
	const Livehub__V1__PublishJobProgressRequest *r = (const void *)req;
	const Livehub__V1__JobProgress *e = r->event;
	if (job_common(p, r->tenant_id, e, e ? e->job_id : "", e ? e->project_id : "",
	               "job:progress", err))
		return -1;
	if (!isfinite(e->progress) || e->progress < 0 || e->progress > 100)
		return fail(err, RPC_INVALID_ARGUMENT, "event.progress: must be between 0 and 100");
	p->conflate_key = progress_key(p->tenant, e->job_id, e->item_id);
	return set_data(p, &e->base, "event", err);
}

static int prepare_job_completed(const ProtobufCMessage *req, struct publication *p,
                                 struct rpc_error *err)
{
	const Livehub__V1__PublishJobCompletedRequest *r = (const void *)req;
	const Livehub__V1__JobCompleted *e = r->event;
	if (job_common(p, r->tenant_id, e, e ? e->job_id : "", e ? e->project_id : "",
	               "job:completed", err))
		return -1;
	return set_data(p, &e->base, "event", err);
}

static int prepare_job_failed(const ProtobufCMessage *req, struct publication *p,
                              struct rpc_error *err)
{
	const Livehub__V1__PublishJobFailedRequest *r = (const void *)req;
	const Livehub__V1__JobFailed *e = r->event;
	if (job_common(p, r->tenant_id, e, e ? e->job_id : "", e ? e->project_id : "", "job:failed",
	               err))
		return -1;
	return set_data(p, &e->base, "event", err);
}

static int prepare_price_updated(const ProtobufCMessage *req, struct publication *p,
                                 struct rpc_error *err)
{
	const Livehub__V1__PublishPriceUpdatedRequest *r = (const void *)req;
	const Livehub__V1__PriceUpdated *e = r->event;
	if (set_tenant(p, r->tenant_id, err))
		return -1;
	if (!e)
		return fail(err, RPC_INVALID_ARGUMENT, "event: required");
	if (e->item_id[0] == '\0')
		return fail(err, RPC_INVALID_ARGUMENT, "event.item_id: required");
	strcpy(p->type, "price:updated");
	strcpy(p->channels[0], "$tenant");
	p->nchannels = 1;
	return set_data(p, &e->base, "event", err);
}

static int prepare_order_status(const ProtobufCMessage *req, struct publication *p,
                                struct rpc_error *err)
{
	const Livehub__V1__PublishOrderStatusRequest *r = (const void *)req;
	const Livehub__V1__OrderStatus *e = r->event;
	if (set_tenant(p, r->tenant_id, err))
		return -1;
	if (!e)
		return fail(err, RPC_INVALID_ARGUMENT, "event: required");
	if (add_channel(p, "order:", e->order_id, "event.order_id", true, err))
		return -1;
	strcpy(p->type, "order:status");
	return set_data(p, &e->base, "event", err);
}

static int prepare_broadcast_tenant(const ProtobufCMessage *req, struct publication *p,
                                    struct rpc_error *err)
{
	const Livehub__V1__BroadcastTenantRequest *r = (const void *)req;
	if (set_tenant(p, r->tenant_id, err) || set_custom_type(p, r->type, err))
		return -1;
	strcpy(p->channels[0], "$tenant");
	p->nchannels = 1;
	return set_data(p, r->data ? &r->data->base : NULL, "data", err);
}

static int prepare_send_to_user(const ProtobufCMessage *req, struct publication *p,
                                struct rpc_error *err)
{
	const Livehub__V1__SendToUserRequest *r = (const void *)req;
	if (set_tenant(p, r->tenant_id, err))
		return -1;
	size_t n = strlen(r->user_id);
	if (n == 0)
		return fail(err, RPC_INVALID_ARGUMENT, "user_id: required");
	if (!name_user_ok(r->user_id, n))
		return fail(err, RPC_INVALID_ARGUMENT,
		            "user_id: must be 1-%d characters of [A-Za-z0-9_.:@+-]", LH_USER_MAX);
	if (set_custom_type(p, r->type, err))
		return -1;
	/* "$user:" plus at most LH_USER_MAX bytes always fits a channel. */
	snprintf(p->channels[0], sizeof p->channels[0], "$user:%s", r->user_id);
	p->nchannels = 1;
	return set_data(p, r->data ? &r->data->base : NULL, "data", err);
}

static int prepare_publish(const ProtobufCMessage *req, struct publication *p,
                           struct rpc_error *err)
{
	const Livehub__V1__PublishRequest *r = (const void *)req;
	if (set_tenant(p, r->tenant_id, err))
		return -1;
	if (r->channel[0] == '$')
		return fail(
		        err, RPC_INVALID_ARGUMENT,
		        "channel: names starting with $ are reserved; use BroadcastTenant or SendToUser");
	if (add_channel(p, "", r->channel, "channel", true, err) ||
	    set_custom_type(p, r->type, err))
		return -1;
	return set_data(p, r->data ? &r->data->base : NULL, "data", err);
}

/* ------------------------------------------------------------------------
 * Control commands.
 * ---------------------------------------------------------------------- */

/* A required user id. */
static int set_user(struct command *cmd, const char *user, struct rpc_error *err)
{
	size_t n = strlen(user);
	if (n == 0)
		return fail(err, RPC_INVALID_ARGUMENT, "user_id: required");
	if (!name_user_ok(user, n))
		return fail(err, RPC_INVALID_ARGUMENT,
		            "user_id: must be 1-%d characters of [A-Za-z0-9_.:@+-]", LH_USER_MAX);
	memcpy(cmd->user, user, n + 1);
	return 0;
}

/* A required explicit channel (not a $ name). */
static int set_channel(struct command *cmd, const char *channel, struct rpc_error *err)
{
	size_t n = strlen(channel);
	if (n == 0)
		return fail(err, RPC_INVALID_ARGUMENT, "channel: required");
	if (channel[0] == '$')
		return fail(err, RPC_INVALID_ARGUMENT,
		            "channel: names starting with $ are reserved");
	if (!name_channel_ok(channel, n))
		return fail(err, RPC_INVALID_ARGUMENT,
		            "channel: must be 1-%d characters of " CHANNEL_CHARS, LH_CHANNEL_MAX);
	memcpy(cmd->channel, channel, n + 1);
	return 0;
}

static int command_presence(const ProtobufCMessage *req, struct publication *p, struct command *cmd,
                            struct rpc_error *err)
{
	const Livehub__V1__PresenceRequest *r = (const void *)req;
	cmd->kind = CMD_PRESENCE;
	if (set_tenant(p, r->tenant_id, err))
		return -1;
	if (r->channel[0] == '\0' || strcmp(r->channel, "$tenant") == 0)
		return 0; /* the whole tenant */
	return set_channel(cmd, r->channel, err);
}

static int command_disconnect(const ProtobufCMessage *req, struct publication *p,
                              struct command *cmd, struct rpc_error *err)
{
	const Livehub__V1__DisconnectRequest *r = (const void *)req;
	cmd->kind = CMD_DISCONNECT;
	if (set_tenant(p, r->tenant_id, err))
		return -1;
	if (r->client_id[0] && r->user_id[0])
		return fail(err, RPC_INVALID_ARGUMENT, "client_id, user_id: give at most one");
	if (r->client_id[0]) {
		size_t n = strlen(r->client_id);
		if (n > LH_CLIENT_ID_MAX)
			return fail(err, RPC_INVALID_ARGUMENT,
			            "client_id: longer than %d characters", LH_CLIENT_ID_MAX);
		memcpy(cmd->client_id, r->client_id, n + 1);
	}
	if (r->user_id[0] && set_user(cmd, r->user_id, err))
		return -1;
	size_t n = strlen(r->reason);
	if (n > LH_REASON_MAX)
		return fail(err, RPC_INVALID_ARGUMENT, "reason: longer than %d bytes",
		            LH_REASON_MAX);
	if (!utf8_valid(r->reason, n))
		return fail(err, RPC_INVALID_ARGUMENT, "reason: invalid UTF-8");
	memcpy(cmd->reason, r->reason, n + 1);
	cmd->close_code = r->reconnect ? LH_CLOSE_RECONNECT : LH_CLOSE_GOODBYE;
	return 0;
}

static int command_subscribe(const ProtobufCMessage *req, struct publication *p,
                             struct command *cmd, struct rpc_error *err)
{
	const Livehub__V1__SubscribeRequest *r = (const void *)req;
	cmd->kind = CMD_SUBSCRIBE;
	if (set_tenant(p, r->tenant_id, err) || set_user(cmd, r->user_id, err))
		return -1;
	return set_channel(cmd, r->channel, err);
}

static int command_unsubscribe(const ProtobufCMessage *req, struct publication *p,
                               struct command *cmd, struct rpc_error *err)
{
	const Livehub__V1__UnsubscribeRequest *r = (const void *)req;
	cmd->kind = CMD_UNSUBSCRIBE;
	if (set_tenant(p, r->tenant_id, err) || set_user(cmd, r->user_id, err))
		return -1;
	return set_channel(cmd, r->channel, err);
}

static int command_list_channels(const ProtobufCMessage *req, struct publication *p,
                                 struct command *cmd, struct rpc_error *err)
{
	const Livehub__V1__ListChannelsRequest *r = (const void *)req;
	cmd->kind = CMD_LIST_CHANNELS;
	if (set_tenant(p, r->tenant_id, err))
		return -1;
	size_t n = strlen(r->prefix);
	if (n > 0 && (r->prefix[0] == '$' || !name_channel_ok(r->prefix, n)))
		return fail(err, RPC_INVALID_ARGUMENT,
		            "prefix: must be empty or up to %d characters of " CHANNEL_CHARS,
		            LH_CHANNEL_MAX);
	memcpy(cmd->channel, r->prefix, n + 1);
	if (r->limit > LH_LIST_LIMIT_MAX)
		return fail(err, RPC_INVALID_ARGUMENT, "limit: at most %d", LH_LIST_LIMIT_MAX);
	cmd->limit = r->limit;
	return 0;
}

int rpc_command_prepare(const struct rpc_method *m, const ProtobufCMessage *req,
                        struct publication *p, struct command *cmd, struct rpc_error *err)
{
	memset(p, 0, sizeof *p);
	memset(cmd, 0, sizeof *cmd);
	err->code = RPC_OK;
	err->msg[0] = '\0';
	if (m->kind != RPC_KIND_COMMAND || req->descriptor != m->input)
		return fail(err, RPC_INTERNAL, "method is not a control method");
	if (m->command(req, p, cmd, err))
		return -1;
	p->cmd = cmd;
	p->ts_ms = now_ms();
	return 0;
}

/* The repeated field of a Presence or ListChannels response. */
static int reply_entries(struct rpc_command_reply *out, const struct command *cmd, bool users)
{
	size_t n = cmd->nentries,
	       size = users ? sizeof(Livehub__V1__UserPresence) : sizeof(Livehub__V1__ChannelInfo);
	if (n == 0)
		return 0;
	out->items = calloc(n, size);
	out->ptrs = calloc(n, sizeof(void *));
	if (!out->items || !out->ptrs)
		return LH_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (users) {
			Livehub__V1__UserPresence *u = (Livehub__V1__UserPresence *)out->items + i;
			livehub__v1__user_presence__init(u);
			u->user_id = cmd->entries[i].name;
			u->connections = cmd->entries[i].count;
			out->ptrs[i] = u;
		} else {
			Livehub__V1__ChannelInfo *c = (Livehub__V1__ChannelInfo *)out->items + i;
			livehub__v1__channel_info__init(c);
			c->channel = cmd->entries[i].name;
			c->subscribers = cmd->entries[i].count;
			out->ptrs[i] = c;
		}
	}
	return 0;
}

const ProtobufCMessage *rpc_command_reply_init(struct rpc_command_reply *out,
                                               const struct rpc_method *m,
                                               const struct command *cmd)
{
	memset(out, 0, sizeof *out);
	switch (cmd->kind) {
	case CMD_PRESENCE:
		livehub__v1__presence_response__init(&out->u.presence);
		out->u.presence.connections = cmd->connections;
		if (reply_entries(out, cmd, true))
			return NULL;
		out->u.presence.n_users = out->ptrs ? cmd->nentries : 0;
		out->u.presence.users = (Livehub__V1__UserPresence **)out->ptrs;
		break;
	case CMD_DISCONNECT:
		livehub__v1__disconnect_response__init(&out->u.disconnect);
		out->u.disconnect.disconnected = cmd->connections;
		break;
	case CMD_SUBSCRIBE:
		livehub__v1__subscribe_response__init(&out->u.subscribe);
		out->u.subscribe.subscribed = cmd->connections;
		out->u.subscribe.already_subscribed = cmd->already;
		out->u.subscribe.refused = cmd->refused;
		out->u.subscribe.offset = cmd->offset;
		out->u.subscribe.epoch = (char *)cmd->epoch;
		break;
	case CMD_UNSUBSCRIBE:
		livehub__v1__unsubscribe_response__init(&out->u.unsubscribe);
		out->u.unsubscribe.unsubscribed = cmd->connections;
		break;
	case CMD_LIST_CHANNELS:
		livehub__v1__list_channels_response__init(&out->u.list);
		if (reply_entries(out, cmd, false))
			return NULL;
		out->u.list.n_channels = out->ptrs ? cmd->nentries : 0;
		out->u.list.channels = (Livehub__V1__ChannelInfo **)out->ptrs;
		out->u.list.truncated = cmd->truncated;
		break;
	}
	return out->u.base.descriptor == m->output ? &out->u.base : NULL;
}

void rpc_command_reply_free(struct rpc_command_reply *out)
{
	free(out->items);
	free(out->ptrs);
	out->items = out->ptrs = NULL;
}

/* ------------------------------------------------------------------------
 * The method table.
 * ---------------------------------------------------------------------- */

#define PUBLISH(name, lower, fn)                                                     \
	{                                                                            \
		name, RPC_KIND_PUBLISH, &livehub__v1__##lower##_request__descriptor, \
		        &livehub__v1__##lower##_response__descriptor, fn, NULL       \
	}

#define COMMAND(name, lower, fn)                                                     \
	{                                                                            \
		name, RPC_KIND_COMMAND, &livehub__v1__##lower##_request__descriptor, \
		        &livehub__v1__##lower##_response__descriptor, NULL, fn       \
	}

static const struct rpc_method methods[] = {
        PUBLISH("PublishJobProgress", publish_job_progress, prepare_job_progress),
        PUBLISH("PublishJobCompleted", publish_job_completed, prepare_job_completed),
        PUBLISH("PublishJobFailed", publish_job_failed, prepare_job_failed),
        PUBLISH("PublishPriceUpdated", publish_price_updated, prepare_price_updated),
        PUBLISH("PublishOrderStatus", publish_order_status, prepare_order_status),
        PUBLISH("BroadcastTenant", broadcast_tenant, prepare_broadcast_tenant),
        PUBLISH("SendToUser", send_to_user, prepare_send_to_user),
        PUBLISH("Publish", publish, prepare_publish),
        {"GetStats", RPC_KIND_STATS, &livehub__v1__get_stats_request__descriptor,
         &livehub__v1__get_stats_response__descriptor, NULL, NULL},
        {"PublishStream", RPC_KIND_STREAM, &livehub__v1__publish_stream_request__descriptor,
         &livehub__v1__publish_stream_response__descriptor, NULL, NULL},
        {"History", RPC_KIND_HISTORY, &livehub__v1__history_request__descriptor,
         &livehub__v1__history_response__descriptor, NULL, NULL},
        COMMAND("Presence", presence, command_presence),
        COMMAND("Disconnect", disconnect, command_disconnect),
        COMMAND("Subscribe", subscribe, command_subscribe),
        COMMAND("Unsubscribe", unsubscribe, command_unsubscribe),
        COMMAND("ListChannels", list_channels, command_list_channels),
};

#define NMETHODS (sizeof methods / sizeof methods[0])

const struct rpc_method *rpc_method_find(const char *name)
{
	for (size_t i = 0; i < NMETHODS; i++)
		if (strcmp(methods[i].name, name) == 0)
			return &methods[i];
	return NULL;
}

/* True when d is shaped like PublishResponse: { PublishResult result = 1; }. */
static bool publish_response_shaped(const ProtobufCMessageDescriptor *d)
{
	const ProtobufCFieldDescriptor *f = d->fields;
	return d->sizeof_message == sizeof(Livehub__V1__PublishResponse) && d->n_fields == 1 &&
	       f->id == 1 && f->type == PROTOBUF_C_TYPE_MESSAGE &&
	       f->label == PROTOBUF_C_LABEL_NONE &&
	       f->descriptor == &livehub__v1__publish_result__descriptor &&
	       f->offset == offsetof(Livehub__V1__PublishResponse, result);
}

int rpc_methods_check(const ProtobufCServiceDescriptor *svc)
{
	for (unsigned i = 0; i < svc->n_methods; i++) {
		const ProtobufCMethodDescriptor *md = &svc->methods[i];
		const struct rpc_method *m = rpc_method_find(md->name);
		if (!m)
			continue; /* answered UNIMPLEMENTED */
		if (m->input != md->input || m->output != md->output ||
		    (m->kind == RPC_KIND_PUBLISH && !publish_response_shaped(m->output))) {
			log_error("msg=\"rpc method table does not match the service\" method=%s",
			          md->name);
			return LH_EINVAL;
		}
	}
	return 0;
}

/* Copies the request's idempotency_key (every publish request has one,
 * found through the descriptor) into p. */
static int set_idem_key(const ProtobufCMessage *req, struct publication *p, struct rpc_error *err)
{
	const ProtobufCFieldDescriptor *f =
	        protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "idempotency_key");
	if (!f || f->type != PROTOBUF_C_TYPE_STRING)
		return 0;
	const char *key = *(char *const *)((const char *)req + f->offset);
	size_t n = key ? strlen(key) : 0;
	bool ok = n <= LH_IDEM_KEY_MAX;
	for (size_t i = 0; ok && i < n; i++)
		ok = key[i] > 0x20 && key[i] < 0x7f;
	if (!ok)
		return fail(err, RPC_INVALID_ARGUMENT,
		            "idempotency_key: must be at most %d printable ASCII characters "
		            "(no spaces)",
		            LH_IDEM_KEY_MAX);
	memcpy(p->idem_key, key ? key : "", n + 1);
	return 0;
}

/* Clears p for a new publication, keeping its data buffer. */
static void clear_keeping_data(struct publication *p)
{
	char *data = p->data;
	size_t cap = p->data_cap;
	memset(p, 0, sizeof *p);
	p->data = data;
	p->data_cap = cap;
}

int rpc_method_prepare(const struct rpc_method *m, const ProtobufCMessage *req,
                       struct publication *p, struct rpc_error *err)
{
	clear_keeping_data(p);
	err->code = RPC_OK;
	err->msg[0] = '\0';
	if (m->kind != RPC_KIND_PUBLISH || req->descriptor != m->input)
		return fail(err, RPC_INTERNAL, "method is not a publish method");
	if (m->prepare(req, p, err) || set_idem_key(req, p, err)) {
		drop_data(p);
		return -1;
	}
	p->ts_ms = now_ms();
	return 0;
}

/* The unary publish method whose request type is d, or NULL. */
static const struct rpc_method *method_by_input(const ProtobufCMessageDescriptor *d)
{
	for (size_t i = 0; i < NMETHODS; i++)
		if (methods[i].kind == RPC_KIND_PUBLISH && methods[i].input == d)
			return &methods[i];
	return NULL;
}

/* The oneof member of a PublishStreamRequest is found through the
 * descriptor, so a publish method added to the oneof needs no code here. */
int rpc_stream_prepare(const ProtobufCMessage *req, struct publication *p, uint64_t *sequence,
                       struct rpc_error *err)
{
	const Livehub__V1__PublishStreamRequest *r = (const void *)req;
	const ProtobufCMessageDescriptor *d = &livehub__v1__publish_stream_request__descriptor;
	clear_keeping_data(p);
	*sequence = req->descriptor == d ? r->sequence : 0;
	if (req->descriptor != d)
		return fail(err, RPC_INTERNAL, "message is not a PublishStreamRequest");
	const ProtobufCFieldDescriptor *f = NULL;
	for (unsigned i = 0; i < d->n_fields; i++)
		if (d->fields[i].id == (uint32_t)r->request_case)
			f = &d->fields[i];
	const ProtobufCMessage *inner =
	        f && f->type == PROTOBUF_C_TYPE_MESSAGE
	                ? *(ProtobufCMessage *const *)((const char *)req + f->offset)
	                : NULL;
	const struct rpc_method *m = inner ? method_by_input(inner->descriptor) : NULL;
	if (!m)
		return fail(
		        err, RPC_INVALID_ARGUMENT,
		        "request: one of job_progress, job_completed, job_failed, price_updated, "
		        "order_status, broadcast_tenant, send_to_user, publish is required");
	if (rpc_method_prepare(m, inner, p, err) == 0)
		return 0;
	char msg[RPC_ERRMSG_MAX];
	memcpy(msg, err->msg, sizeof msg);
	return fail(err, err->code, "%s.%s", f->name, msg);
}

void rpc_stream_reject(struct rpc_stream_result *res, uint64_t sequence, uint64_t index,
                       const struct rpc_error *err)
{
	if (res->rejected++ > 0)
		return;
	res->has_error = true;
	res->err_sequence = sequence;
	res->err_index = index;
	res->error = *err;
}

const ProtobufCMessage *rpc_stream_reply_init(struct rpc_stream_reply *out,
                                              const struct rpc_stream_result *res)
{
	livehub__v1__publish_stream_response__init(&out->msg);
	out->msg.accepted = res->accepted;
	out->msg.rejected = res->rejected;
	if (res->has_error) {
		livehub__v1__publish_stream_error__init(&out->error);
		out->error.sequence = res->err_sequence;
		out->error.index = res->err_index;
		out->error.code = (int32_t)res->error.code;
		out->error.message = (char *)res->error.msg;
		out->msg.first_error = &out->error;
	}
	return &out->msg.base;
}

/* ------------------------------------------------------------------------
 * Responses.
 * ---------------------------------------------------------------------- */

enum rpc_code rpc_publication_status(const struct publication *p, struct rpc_error *err)
{
	err->code = RPC_OK;
	err->msg[0] = '\0';
	if (p->cmd && p->status == LH_EUNAVAILABLE) {
		/* Redis mode, Redis down (docs/API.md "Several nodes"). */
		if (p->cmd->kind == CMD_PRESENCE)
			fail(err, RPC_UNAVAILABLE,
			     "redis unavailable: cluster presence cannot be read; retry");
		else if (p->cmd->kind == CMD_LIST_CHANNELS)
			fail(err, RPC_UNAVAILABLE,
			     "redis unavailable: the other nodes cannot be asked; retry");
		else
			fail(err, RPC_UNAVAILABLE,
			     "redis unavailable: applied on this node only (%u connections); the "
			     "other nodes were not reached",
			     (unsigned)p->cmd->connections);
		return err->code;
	}
	switch (p->status) {
	case 0: return RPC_OK;
	case LH_ENOMEM: fail(err, RPC_INTERNAL, "out of memory"); break;
	case LH_ECLOSED: fail(err, RPC_UNAVAILABLE, "livehub is shutting down"); break;
	case LH_EUNAVAILABLE:
		fail(err, RPC_UNAVAILABLE,
		     "redis unavailable: the call was not confirmed by Redis; retry with backoff "
		     "(with the same idempotency_key, a publish that did go through is not "
		     "repeated)");
		break;
	case LH_EFULL:
		fail(err, RPC_RESOURCE_EXHAUSTED,
		     "too many publications waiting for Redis; retry with backoff");
		break;
	case LH_EEXIST:
		fail(err, RPC_INVALID_ARGUMENT,
		     "idempotency_key: already used within the window for a different publication "
		     "(another type, channel or data)");
		break;
	case LH_EINVAL:
		fail(err, RPC_INVALID_ARGUMENT, "publication refused: %s", lh_strerror(p->status));
		break;
	default: fail(err, RPC_INTERNAL, "publish failed: %s", lh_strerror(p->status)); break;
	}
	return err->code;
}

const ProtobufCMessage *rpc_publish_reply_init(struct rpc_publish_reply *out,
                                               const struct rpc_method *m, struct publication *p)
{
	livehub__v1__publish_response__init(&out->msg);
	out->msg.base.descriptor = m->output;
	out->msg.result = &out->result;

	livehub__v1__publish_result__init(&out->result);
	out->result.offset = p->pos[0].offset;
	out->result.epoch = p->pos[0].epoch;
	out->result.subscribers = p->subscribers;
	out->result.duplicate = p->duplicate;
	out->result.n_channels = (size_t)p->nchannels;
	out->result.channels = out->pos_ptr;
	for (int i = 0; i < p->nchannels && i < LH_PUB_MAX_CHANNELS; i++) {
		Livehub__V1__ChannelPosition *cp = &out->pos[i];
		livehub__v1__channel_position__init(cp);
		cp->channel = p->channels[i];
		cp->offset = p->pos[i].offset;
		cp->epoch = p->pos[i].epoch;
		cp->subscribers = p->pos[i].subscribers;
		out->pos_ptr[i] = cp;
	}
	return &out->msg.base;
}

void rpc_stats_reply_init(Livehub__V1__GetStatsResponse *out, const struct hub_stats_snapshot *s,
                          uint64_t uptime_s)
{
	livehub__v1__get_stats_response__init(out);
	out->connections = s->connections;
	out->users = s->users;
	out->tenants = s->tenants;
	out->channels = s->channels;
	out->subscriptions = s->subscriptions;
	out->connections_total = s->connections_total;
	out->messages_published = s->messages_published;
	out->messages_delivered = s->messages_delivered;
	out->messages_received = s->messages_received;
	out->uptime_seconds = uptime_s;
	out->history_bytes = s->history_bytes;
	out->history_publications = s->history_entries;
	out->recoveries = s->recoveries;
	out->recovery_misses = s->recovery_misses;
	out->publishes_deduplicated = s->deduplicated;
	out->version = (char *)LH_VERSION;
}

/* ------------------------------------------------------------------------
 * History.
 * ---------------------------------------------------------------------- */

int rpc_history_prepare(const ProtobufCMessage *req, struct publication *p, struct rpc_error *err)
{
	const Livehub__V1__HistoryRequest *r = (const void *)req;
	memset(p, 0, sizeof *p);
	if (req->descriptor != &livehub__v1__history_request__descriptor)
		return fail(err, RPC_INTERNAL, "message is not a HistoryRequest");
	if (set_tenant(p, r->tenant_id, err))
		return -1;
	size_t n = strlen(r->channel);
	if (n == 0)
		return fail(err, RPC_INVALID_ARGUMENT, "channel: required");
	if (n > LH_CHANNEL_MAX || !name_channel_any_ok(r->channel, n))
		return fail(err, RPC_INVALID_ARGUMENT,
		            "channel: must be 1-%d characters of " CHANNEL_CHARS
		            " (or $tenant, $user:{user})",
		            LH_CHANNEL_MAX);
	memcpy(p->channels[0], r->channel, n + 1);
	p->nchannels = 1;
	if (r->limit > RPC_HISTORY_LIMIT_MAX)
		return fail(err, RPC_INVALID_ARGUMENT, "limit: must be at most %d",
		            RPC_HISTORY_LIMIT_MAX);
	p->hist_limit = r->limit ? r->limit : RPC_HISTORY_LIMIT_DEFAULT;
	if (r->since) {
		size_t el = strlen(r->since->epoch);
		if (el >= sizeof p->hist_since_epoch)
			return fail(err, RPC_INVALID_ARGUMENT,
			            "since.epoch: must be at most %zu characters",
			            sizeof p->hist_since_epoch - 1);
		p->hist_has_since = true;
		p->hist_since_offset = r->since->offset;
		memcpy(p->hist_since_epoch, r->since->epoch, el + 1);
	}
	p->kind = PUB_HISTORY;
	p->ts_ms = now_ms();
	return 0;
}

const ProtobufCMessage *rpc_history_reply_init(Livehub__V1__HistoryResponse *out,
                                               const struct hub_history_result *r, void **mem)
{
	livehub__v1__history_response__init(out);
	size_t n = r->n;
	Livehub__V1__HistoryPublication *items = malloc(n * (sizeof *items + sizeof(void *)) + 1);
	*mem = items;
	if (!items)
		return NULL;
	Livehub__V1__HistoryPublication **ptrs = (void *)(items + n);
	for (size_t i = 0; i < n; i++) {
		const struct hub_history_item *it = &r->items[i];
		livehub__v1__history_publication__init(&items[i]);
		items[i].offset = it->offset;
		items[i].epoch = (char *)r->epoch;
		items[i].ts_ms = it->ts_ms;
		items[i].type = (char *)it->type;
		items[i].data_json = (char *)it->data;
		ptrs[i] = &items[i];
	}
	out->channel = (char *)r->channel;
	out->offset = r->offset;
	out->epoch = (char *)r->epoch;
	out->recovered = r->recovered;
	out->n_publications = n;
	out->publications = n ? ptrs : NULL;
	return &out->base;
}
