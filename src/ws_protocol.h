/*
 * ws_protocol: the client side of docs/PROTOCOL.md without any I/O.
 *
 * Parses one client text message into a request, and builds the frames the
 * hub sends back (connected, subscribed, unsubscribed, pong, error). Uses
 * jansson for parsing; replies are built with strbuf so their bytes are
 * exactly those the protocol document shows.
 *
 * Ownership: every builder returns a frame holding one reference that the
 * caller owns (frame_unref), or NULL when out of memory.
 */
#ifndef LH_WS_PROTOCOL_H
#define LH_WS_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "names.h"

/* A string id is at most this many bytes (of UTF-8). */
#define WSP_ID_STR_MAX 128
/* Room for an id's JSON text: a string id escaped as \u00XX at worst. */
#define WSP_ID_JSON_MAX (WSP_ID_STR_MAX * 6 + 2)
/* A client event name: "client:" + name must be an event type. */
#define WSP_EVENT_PREFIX "client:"
#define WSP_EVENT_MAX    (LH_TYPE_MAX - 7)
/* "project:" in front of a seed-004 projectId. */
#define WSP_PROJECT_PREFIX     "project:"
#define WSP_PROJECT_PREFIX_LEN 8
/* Longest token in an auth or refresh message (auth.h AUTH_TOKEN_MAX). */
#define WSP_TOKEN_MAX 8192

enum wsp_type {
	WSP_SUBSCRIBE,
	WSP_UNSUBSCRIBE,
	WSP_PING,
	WSP_AUTH,     /* first-message authentication: token */
	WSP_REFRESH,  /* a new token for an open connection: token */
	WSP_PRESENCE, /* who is on a channel (presence.c answers) */
	WSP_PUBLISH,  /* a client event (presence.c answers) */
};

/* The error codes of docs/PROTOCOL.md. */
enum wsp_code {
	WSP_AUTH_FAILED,
	WSP_TOKEN_EXPIRED,
	WSP_PERMISSION_DENIED,
	WSP_CHANNEL_ACCESS_DENIED,
	WSP_RATE_LIMITED,
	WSP_PROTOCOL_ERROR,
	WSP_BAD_REQUEST,
	WSP_LIMIT_EXCEEDED,
	WSP_TOO_MANY_CONNECTIONS,
	WSP_SLOW_CONSUMER,
	WSP_SERVER_ERROR,
};

/* One parsed client message. id is filled whenever the message carried a
 * valid id, also when parsing failed later, so the error can echo it. */
struct wsp_request {
	enum wsp_type type;
	char channel[LH_CHANNEL_MAX + 1]; /* validated, NUL-terminated; subscribe/unsubscribe */
	size_t channel_len;
	bool project_alias; /* channel came from projectId ("project:" + projectId) */
	/* subscribe: "since": {"offset": N, "epoch": "..."}; the channel may
	 * then also be an implicit one ("$tenant", "$user"), for recovery. */
	bool has_since;
	uint64_t since_offset;
	char since_epoch[33];
	char id[WSP_ID_JSON_MAX + 1]; /* the id as JSON text, "" when absent */
	size_t id_len;
	char token[WSP_TOKEN_MAX + 1]; /* auth/refresh: the token, NUL-terminated */
	/* publish only: the event name (the frame's type is "client:" + event)
	 * and its data as compact JSON object text (NUL-terminated), NULL when
	 * absent. data
	 * points into a buffer of the parser (one per thread): valid until the
	 * thread's next wsp_parse, never freed by the caller. */
	char event[WSP_EVENT_MAX + 1];
	const char *data;
	size_t data_len;
};

/* Why a message was refused: a code and a static, client-safe message. */
struct wsp_error {
	enum wsp_code code;
	const char *message;
};

/* Parses the len bytes at buf (one client message, already valid UTF-8 or
 * not: jansson checks). Returns 0 with *req filled, or -1 with *err filled
 * (and req->id set when the message had a valid id). */
int wsp_parse(const void *buf, size_t len, struct wsp_request *req, struct wsp_error *err);

/* The code's name as the protocol spells it, e.g. "BAD_REQUEST". */
const char *wsp_code_name(enum wsp_code code);

/* {"type":"connected","clientId":…,"version":1,"server":"livehub/…",
 * "tenant":…,"user":…,"heartbeat":{"pingInterval":…,"pingTimeout":…}} */
struct frame *wsp_connected(const char *client_id, const char *tenant, const char *user,
                            int ping_interval_s, int ping_timeout_s);
/* The same with the id of the auth message it answers ({…,"id":…}). */
struct frame *wsp_connected_req(const char *client_id, const char *tenant, const char *user,
                                int ping_interval_s, int ping_timeout_s,
                                const struct wsp_request *req);
/* {"type":"refreshed","exp":…[,"id":…]} (exp: unix seconds, 0 = none) */
struct frame *wsp_refreshed(const struct wsp_request *req, long long exp);
/* {"type":"subscribed","channel":…[,"projectId":…][,"id":…]} */
struct frame *wsp_subscribed(const struct wsp_request *req);
/* {"type":"subscribed","channel":…[,"projectId":…],"offset":…,"epoch":…
 * [,"recovered":…][,"id":…]}; recovered only when req->has_since. */
struct frame *wsp_subscribed_at(const struct wsp_request *req, uint64_t offset, const char *epoch,
                                bool recovered);
/* {"type":"unsubscribed","channel":…[,"projectId":…][,"id":…]} */
struct frame *wsp_unsubscribed(const struct wsp_request *req);
/* {"type":"pong"[,"id":…]} */
struct frame *wsp_pong(const struct wsp_request *req);
/* {"type":"error","code":…,"message":…,"recoverable":…[,"id":…]}; req may
 * be NULL (no id to echo). message must be valid UTF-8; it is escaped. */
struct frame *wsp_error(enum wsp_code code, const char *message, bool recoverable,
                        const struct wsp_request *req);
/* {"type":"error","code":…,"message":…,"retryAfter":<ms>,"recoverable":true
 * [,"id":…]}: a refusal the client may retry after retry_ms (RATE_LIMITED). */
struct frame *wsp_error_retry(enum wsp_code code, const char *message, uint32_t retry_ms,
                              const struct wsp_request *req);
/* The success reply for a parsed request (subscribed, unsubscribed or
 * pong), or NULL for a type that has none here (auth, refresh; presence
 * and publish are answered by presence.c). */
struct frame *wsp_reply(const struct wsp_request *req);

#endif
