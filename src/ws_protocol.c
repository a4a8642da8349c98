/* ws_protocol: client messages in, reply frames out. See ws_protocol.h. */
#include "ws_protocol.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "livehub.h"
#include "strbuf.h"

/* ------------------------------------------------------------------------
 * Parsing
 * ------------------------------------------------------------------------ */

static int fail(struct wsp_error *err, enum wsp_code code, const char *message)
{
	err->code = code;
	err->message = message;
	return -1;
}

/* Parses the message. An integer beyond 64 bits makes jansson refuse the
 * whole document; it is valid JSON though, so it is parsed again with
 * integers as reals, which lets the field checks name the bad field. */
static json_t *load(const void *buf, size_t len)
{
	json_error_t e;
	json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &e);
	if (!root && json_error_code(&e) == json_error_numeric_overflow)
		root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &e);
	return root;
}

static bool type_from_name(const char *s, size_t n, enum wsp_type *type)
{
	static const struct {
		const char *name;
		enum wsp_type type;
	} types[] = {
	        {"subscribe", WSP_SUBSCRIBE}, {"unsubscribe", WSP_UNSUBSCRIBE},
	        {"ping", WSP_PING},           {"auth", WSP_AUTH},
	        {"refresh", WSP_REFRESH},     {"presence", WSP_PRESENCE},
	        {"publish", WSP_PUBLISH},
	};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (strlen(types[i].name) == n && memcmp(types[i].name, s, n) == 0) {
			*type = types[i].type;
			return true;
		}
	}
	return false;
}

/* Stores the JSON text of a valid id in req. Returns false when the id is
 * there but is neither a short string nor an integer; true otherwise. */
static bool take_id(const json_t *id, struct wsp_request *req)
{
	if (!id)
		return true;
	if (json_is_integer(id)) {
		int n = snprintf(req->id, sizeof(req->id), "%" JSON_INTEGER_FORMAT,
		                 json_integer_value(id));
		req->id_len = (size_t)n;
		return true;
	}
	if (!json_is_string(id) || json_string_length(id) > WSP_ID_STR_MAX)
		return false;
	struct strbuf sb = STRBUF_INIT;
	sb_add_json_str(&sb, json_string_value(id), json_string_length(id));
	bool ok = !sb.oom && sb.len <= WSP_ID_JSON_MAX;
	if (ok) {
		memcpy(req->id, sb.buf, sb.len);
		req->id[sb.len] = '\0';
		req->id_len = sb.len;
	}
	sb_free(&sb);
	return ok;
}

/* Fills req->channel from projectId (seed 004: "project:" + projectId). */
static int take_project(const json_t *pid, struct wsp_request *req, struct wsp_error *err)
{
	if (!json_is_string(pid))
		return fail(err, WSP_BAD_REQUEST, "\"projectId\" must be a string");
	const char *s = json_string_value(pid);
	size_t n = json_string_length(pid);
	if (n == 0 || n > LH_CHANNEL_MAX - WSP_PROJECT_PREFIX_LEN)
		goto bad;
	memcpy(req->channel, WSP_PROJECT_PREFIX, WSP_PROJECT_PREFIX_LEN);
	memcpy(req->channel + WSP_PROJECT_PREFIX_LEN, s, n);
	req->channel_len = WSP_PROJECT_PREFIX_LEN + n;
	req->channel[req->channel_len] = '\0';
	if (!name_channel_ok(req->channel, req->channel_len))
		goto bad;
	req->project_alias = true;
	return 0;
bad:
	req->channel[0] = '\0';
	req->channel_len = 0;
	return fail(err, WSP_BAD_REQUEST,
	            "\"projectId\" must be 1-152 characters of A-Z a-z 0-9 _ . : @ + = / -");
}

/* Fills req->token from "token" (auth, refresh). */
static int take_token(const json_t *root, struct wsp_request *req, struct wsp_error *err)
{
	const json_t *t = json_object_get(root, "token");
	bool auth = req->type == WSP_AUTH;
	if (!json_is_string(t) || json_string_length(t) == 0)
		return fail(err, WSP_BAD_REQUEST,
		            auth ? "auth needs a string \"token\""
		                 : "refresh needs a string \"token\"");
	size_t n = json_string_length(t);
	if (n > WSP_TOKEN_MAX || memchr(json_string_value(t), '\0', n))
		return fail(err, WSP_BAD_REQUEST,
		            "\"token\" is longer than 8192 bytes or malformed");
	memcpy(req->token, json_string_value(t), n + 1);
	return 0;
}

static const char *needs_channel(enum wsp_type type)
{
	switch (type) {
	case WSP_SUBSCRIBE: return "subscribe needs a string \"channel\"";
	case WSP_UNSUBSCRIBE: return "unsubscribe needs a string \"channel\"";
	case WSP_PRESENCE: return "presence needs a string \"channel\"";
	default: return "publish needs a string \"channel\"";
	}
}

/* Fills req's since from "since": {"offset": N, "epoch": "..."}. */
static int take_since(const json_t *since, struct wsp_request *req, struct wsp_error *err)
{
	if (!since)
		return 0;
	const json_t *off = json_object_get(since, "offset");
	const json_t *ep = json_object_get(since, "epoch");
	if (!json_is_object(since) || !json_is_integer(off) || json_integer_value(off) < 0 ||
	    !json_is_string(ep) || json_string_length(ep) >= sizeof(req->since_epoch))
		return fail(
		        err, WSP_BAD_REQUEST,
		        "\"since\" must be {\"offset\": a whole number >= 0, \"epoch\": a string "
		        "of at most 32 characters}");
	req->has_since = true;
	req->since_offset = (uint64_t)json_integer_value(off);
	memcpy(req->since_epoch, json_string_value(ep), json_string_length(ep) + 1);
	return 0;
}

/* Fills req->channel from "channel" or "projectId" (exactly one of them). */
static int take_channel(const json_t *root, struct wsp_request *req, struct wsp_error *err)
{
	const json_t *ch = json_object_get(root, "channel");
	const json_t *pid = json_object_get(root, "projectId");
	bool sub = req->type == WSP_SUBSCRIBE;
	if (ch && pid)
		return fail(err, WSP_BAD_REQUEST, "give \"channel\" or \"projectId\", not both");
	if (pid)
		return take_project(pid, req, err);
	if (!json_is_string(ch))
		return fail(err, WSP_BAD_REQUEST, needs_channel(req->type));
	const char *s = json_string_value(ch);
	size_t n = json_string_length(ch);
	/* An implicit channel is named only to recover it (subscribe with
	 * since), or to ask for tenant presence ("$tenant"; presence.c
	 * decides); the hub checks that a "$user:" channel is the caller's. */
	bool implicit =
	        (sub && req->has_since && n > 0 && s[0] == '$' && name_channel_any_ok(s, n) &&
	         (strcmp(s, "$tenant") == 0 || strcmp(s, "$user") == 0 ||
	          strncmp(s, "$user:", 6) == 0)) ||
	        (req->type == WSP_PRESENCE && n == 7 && memcmp(s, "$tenant", 7) == 0);
	if (implicit) {
		memcpy(req->channel, s, n + 1);
		req->channel_len = n;
		return 0;
	}
	if (n > 0 && s[0] == '$')
		return fail(
		        err, WSP_CHANNEL_ACCESS_DENIED,
		        sub ? "\"channel\": names starting with \"$\" are reserved (\"$tenant\" "
		              "and \"$user\" may be named with \"since\", to recover them)"
		            : "\"channel\": names starting with \"$\" are reserved");
	if (!name_channel_ok(s, n))
		return fail(err, WSP_BAD_REQUEST,
		            "\"channel\" must be 1-160 characters of A-Z a-z 0-9 _ . : @ + = / -");
	memcpy(req->channel, s, n);
	req->channel[n] = '\0';
	req->channel_len = n;
	return 0;
}

/* Where a publish's data goes as compact JSON: one buffer per thread,
 * reused by every parse, so a request owns no memory and no caller has
 * anything to free (the buffer stays reachable, so leak checkers are
 * quiet). */
static _Thread_local char *data_buf;
static _Thread_local size_t data_cap;

static int dump_data(const json_t *data, struct wsp_request *req, struct wsp_error *err)
{
	size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER;
	size_t n = json_dumpb(data, NULL, 0, flags);
	if (n == 0)
		return fail(err, WSP_SERVER_ERROR, "out of memory");
	if (n + 1 > data_cap) {
		char *b = realloc(data_buf, n + 1);
		if (!b)
			return fail(err, WSP_SERVER_ERROR, "out of memory");
		data_buf = b;
		data_cap = n + 1;
	}
	if (json_dumpb(data, data_buf, data_cap, flags) != n)
		return fail(err, WSP_SERVER_ERROR, "out of memory");
	data_buf[n] = '\0';
	req->data = data_buf;
	req->data_len = n;
	return 0;
}

/* publish: "event" (a name that makes "client:" + name an event type) and
 * "data" (an object, optional), kept as compact JSON: one line, so it can
 * go out in a multi-message frame as it is. */
static int take_event(const json_t *root, struct wsp_request *req, struct wsp_error *err)
{
	const json_t *ev = json_object_get(root, "event");
	const json_t *data = json_object_get(root, "data");
	if (!json_is_string(ev))
		return fail(err, WSP_BAD_REQUEST, "publish needs a string \"event\"");
	size_t n = json_string_length(ev);
	if (n > WSP_EVENT_MAX || !name_type_ok(json_string_value(ev), n))
		return fail(err, WSP_BAD_REQUEST,
		            "\"event\" must be 1-57 characters of A-Z a-z 0-9 _ . : -");
	memcpy(req->event, json_string_value(ev), n);
	req->event[n] = '\0';
	if (!data)
		return 0;
	if (!json_is_object(data))
		return fail(err, WSP_BAD_REQUEST, "\"data\" must be a JSON object");
	return dump_data(data, req, err);
}

int wsp_parse(const void *buf, size_t len, struct wsp_request *req, struct wsp_error *err)
{
	req->event[0] = '\0';
	req->data = NULL;
	req->data_len = 0;
	req->type = WSP_PING;
	req->channel[0] = '\0';
	req->channel_len = 0;
	req->project_alias = false;
	req->has_since = false;
	req->since_offset = 0;
	req->since_epoch[0] = '\0';
	req->id[0] = '\0';
	req->id_len = 0;
	req->token[0] = '\0';
	json_t *root = load(buf, len);
	if (!root)
		return fail(err, WSP_PROTOCOL_ERROR, "the message is not valid JSON");
	int rc = -1;
	if (!json_is_object(root)) {
		fail(err, WSP_PROTOCOL_ERROR, "the message must be a JSON object");
		goto out;
	}
	/* The id is taken first so that every later error can echo it. */
	bool id_ok = take_id(json_object_get(root, "id"), req);
	const json_t *type = json_object_get(root, "type");
	if (!json_is_string(type)) {
		fail(err, WSP_PROTOCOL_ERROR, "the message needs a string \"type\"");
		goto out;
	}
	if (!type_from_name(json_string_value(type), json_string_length(type), &req->type)) {
		fail(err, WSP_PROTOCOL_ERROR, "unknown \"type\"");
		goto out;
	}
	if (!id_ok) {
		fail(err, WSP_BAD_REQUEST,
		     "\"id\" must be a string of at most 128 bytes or an integer");
		goto out;
	}
	switch (req->type) {
	case WSP_SUBSCRIBE:
		rc = take_since(json_object_get(root, "since"), req, err);
		if (rc == 0)
			rc = take_channel(root, req, err);
		break;
	case WSP_UNSUBSCRIBE:
	case WSP_PRESENCE: rc = take_channel(root, req, err); break;
	case WSP_PUBLISH:
		rc = take_channel(root, req, err);
		if (rc == 0)
			rc = take_event(root, req, err);
		if (rc) {
			req->data = NULL;
			req->data_len = 0;
		}
		break;
	case WSP_PING: rc = 0; break;
	case WSP_AUTH:
	case WSP_REFRESH: rc = take_token(root, req, err); break;
	}
out:
	json_decref(root);
	return rc;
}

/* ------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------ */

const char *wsp_code_name(enum wsp_code code)
{
	switch (code) {
	case WSP_AUTH_FAILED: return "AUTH_FAILED";
	case WSP_TOKEN_EXPIRED: return "TOKEN_EXPIRED";
	case WSP_PERMISSION_DENIED: return "PERMISSION_DENIED";
	case WSP_CHANNEL_ACCESS_DENIED: return "CHANNEL_ACCESS_DENIED";
	case WSP_RATE_LIMITED: return "RATE_LIMITED";
	case WSP_PROTOCOL_ERROR: return "PROTOCOL_ERROR";
	case WSP_BAD_REQUEST: return "BAD_REQUEST";
	case WSP_LIMIT_EXCEEDED: return "LIMIT_EXCEEDED";
	case WSP_TOO_MANY_CONNECTIONS: return "TOO_MANY_CONNECTIONS";
	case WSP_SLOW_CONSUMER: return "SLOW_CONSUMER";
	case WSP_SERVER_ERROR: return "SERVER_ERROR";
	}
	return "SERVER_ERROR";
}

static void add_id(struct strbuf *sb, const struct wsp_request *req)
{
	if (req && req->id_len > 0) {
		sb_adds(sb, ",\"id\":");
		sb_add(sb, req->id, req->id_len);
	}
}

struct frame *wsp_connected(const char *client_id, const char *tenant, const char *user,
                            int ping_interval_s, int ping_timeout_s)
{
	return wsp_connected_req(client_id, tenant, user, ping_interval_s, ping_timeout_s, NULL);
}

struct frame *wsp_connected_req(const char *client_id, const char *tenant, const char *user,
                                int ping_interval_s, int ping_timeout_s,
                                const struct wsp_request *req)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_key_str(&sb, "{\"type\":\"connected\",\"clientId\":", client_id);
	sb_addf(&sb, ",\"version\":%d,\"server\":\"livehub/" LH_VERSION "\"", LH_PROTOCOL_VERSION);
	sb_add_key_str(&sb, ",\"tenant\":", tenant);
	sb_add_key_str(&sb, ",\"user\":", user);
	sb_addf(&sb, ",\"heartbeat\":{\"pingInterval\":%d,\"pingTimeout\":%d}", ping_interval_s,
	        ping_timeout_s);
	add_id(&sb, req);
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

struct frame *wsp_refreshed(const struct wsp_request *req, long long exp)
{
	struct strbuf sb = STRBUF_INIT;
	sb_addf(&sb, "{\"type\":\"refreshed\",\"exp\":%lld", exp);
	add_id(&sb, req);
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

/* subscribed/unsubscribed: the channel, the projectId when the client used
 * that form, and the id. */
static struct frame *channel_reply(const char *type, const struct wsp_request *req)
{
	struct strbuf sb = STRBUF_INIT;
	sb_adds(&sb, "{\"type\":\"");
	sb_adds(&sb, type);
	sb_adds(&sb, "\",\"channel\":");
	sb_add_json_str(&sb, req->channel, req->channel_len);
	if (req->project_alias) {
		sb_adds(&sb, ",\"projectId\":");
		sb_add_json_str(&sb, req->channel + WSP_PROJECT_PREFIX_LEN,
		                req->channel_len - WSP_PROJECT_PREFIX_LEN);
	}
	add_id(&sb, req);
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

struct frame *wsp_subscribed(const struct wsp_request *req)
{
	return channel_reply("subscribed", req);
}

struct frame *wsp_subscribed_at(const struct wsp_request *req, uint64_t offset, const char *epoch,
                                bool recovered)
{
	struct strbuf sb = STRBUF_INIT;
	sb_adds(&sb, "{\"type\":\"subscribed\",\"channel\":");
	sb_add_json_str(&sb, req->channel, req->channel_len);
	if (req->project_alias) {
		sb_adds(&sb, ",\"projectId\":");
		sb_add_json_str(&sb, req->channel + WSP_PROJECT_PREFIX_LEN,
		                req->channel_len - WSP_PROJECT_PREFIX_LEN);
	}
	sb_addf(&sb, ",\"offset\":%" PRIu64, offset);
	sb_add_key_str(&sb, ",\"epoch\":", epoch);
	if (req->has_since)
		sb_adds(&sb, recovered ? ",\"recovered\":true" : ",\"recovered\":false");
	add_id(&sb, req);
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

struct frame *wsp_unsubscribed(const struct wsp_request *req)
{
	return channel_reply("unsubscribed", req);
}

struct frame *wsp_pong(const struct wsp_request *req)
{
	struct strbuf sb = STRBUF_INIT;
	sb_adds(&sb, "{\"type\":\"pong\"");
	add_id(&sb, req);
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

struct frame *wsp_error(enum wsp_code code, const char *message, bool recoverable,
                        const struct wsp_request *req)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_key_str(&sb, "{\"type\":\"error\",\"code\":", wsp_code_name(code));
	sb_add_key_str(&sb, ",\"message\":", message);
	sb_adds(&sb, recoverable ? ",\"recoverable\":true" : ",\"recoverable\":false");
	add_id(&sb, req);
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

struct frame *wsp_error_retry(enum wsp_code code, const char *message, uint32_t retry_ms,
                              const struct wsp_request *req)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_key_str(&sb, "{\"type\":\"error\",\"code\":", wsp_code_name(code));
	sb_add_key_str(&sb, ",\"message\":", message);
	sb_addf(&sb, ",\"retryAfter\":%" PRIu32 ",\"recoverable\":true", retry_ms);
	add_id(&sb, req);
	sb_addc(&sb, '}');
	return frame_from_sb(&sb);
}

struct frame *wsp_reply(const struct wsp_request *req)
{
	switch (req->type) {
	case WSP_SUBSCRIBE: return wsp_subscribed(req);
	case WSP_UNSUBSCRIBE: return wsp_unsubscribed(req);
	case WSP_PING: return wsp_pong(req);
	case WSP_AUTH:
	case WSP_REFRESH:
	case WSP_PRESENCE:
	case WSP_PUBLISH: return NULL;
	}
	return NULL;
}
