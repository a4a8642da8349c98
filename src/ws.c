/*
 * ws: the WebSocket and HTTP front on libwebsockets. See ws.h.
 *
 * One lws context, one vhost, one protocol that serves both the plain HTTP
 * requests (/healthz, 404s) and the /ws WebSocket connections. Everything
 * here runs on the service thread except ws_stop() and ws_wake(), which only
 * touch an atomic flag and call lws_cancel_service().
 *
 * A connection's life: CONFIRM_UPGRADE checks the path, the subprotocol
 * and the token (HTTP 400/401/404 before the upgrade); ESTABLISHED takes the
 * identity CONFIRM_UPGRADE verified (lws drops the per-session struct when
 * it re-binds the connection to the ws protocol, so it is kept in w->last,
 * matched by wsi and token), opens the hub connection, arms the token's
 * expiry timer and queues `connected`. A connection without any token
 * instead waits for an `auth` message (on_first_message) on w->unauthed,
 * with no hub connection, until the auth timer. RECEIVE parses client
 * messages and queues replies through the hub so they stay in order with
 * events; TIMER closes on an expired token (4001) or a missing `auth`
 * (4002); SERVER_WRITEABLE writes one WebSocket frame per callback, several
 * queued messages joined by '\n' when a backlog has formed (see
 * write_batch()); CLOSED closes the hub connection.
 */
#include "ws.h"

#include <arpa/inet.h>
#include <libwebsockets.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <uv.h>

#include "broker.h"
#include "cluster.h"
#include "command.h"
#include "edge.h"
#include "livehub.h"
#include "log.h"
#include "metrics.h"
#include "presence.h"
#include "presence_cluster.h"
#include "strbuf.h"
#include "publication.h"
#include "static_files.h"
#include "ws_protocol.h"

_Static_assert(LWS_PRE <= LH_FRAME_HEADROOM, "frames must have room for the lws frame header");

/* Also the subprotocol a client offers ("livehub.v1, bearer.JWT"): lws
 * selects, and echoes, the offered name that equals a protocol's name. */
#define WS_PROTOCOL_NAME       "livehub.v1"
#define WS_BEARER_PREFIX       "bearer."
#define WS_HEADER_MAX          8192                 /* request headers, so a long JWT fits */
#define WS_HEADER_POOL         64                   /* handshakes parsed at the same time */
#define WS_FD_MAX              65536                /* cap on lws' fd table */
#define WS_SWEEP_US            (5 * LWS_US_PER_SEC) /* how often idle channels are swept */
#define WS_SWEEP_IDLE_MS       60000                /* how long an unused channel lives on */
#define WS_CLOSE_SHUTDOWN      1001
#define WS_CLOSE_SLOW_CONSUMER 4000
#define WS_KILL_GRACE_S        5             /* a killed connection that never becomes writable */
#define WS_BATCH_FRAMES        4096          /* messages in one batched frame, at most */
#define WS_BROKER_EVENTS       1024          /* Redis messages and replies run per loop turn */
#define WS_TX_PACKET           (1024 * 1024) /* largest single send() lws may make */
#define WS_FD_RESERVE          100           /* fds kept for gRPC, listeners, files */
#define WS_RETRY_GLOBAL_S      5             /* Retry-After of a 503 (global limit) */
#define WS_RETRY_LIMIT_S       10            /* Retry-After of a 429 (other limits) */
#define WS_ORIGIN_MAX          512           /* longest Origin header looked at */
/* Work drain() does per loop turn: after this many publications, or frames
 * queued on subscribers, it lets the loop write before it goes on. */
#define WS_DRAIN_PUBS   1024
#define WS_DRAIN_FRAMES 65536
#define WS_DRAIN_STEP   64
/* Connections written directly at the end of a loop turn, at most; the
 * rest at the next turn, after lws has served what else is ready. */
#define WS_FLUSH_MAX           2048
#define WS_CLOSE_TOKEN_EXPIRED 4001
#define WS_CLOSE_AUTH_TIMEOUT  4002
#define WS_CLOSE_AUTH_FAILED   4500
#define WS_TIMER_MAX_S         ((int64_t)1 << 31) /* later expiries never fire */

/* lws' own opcode for a close frame: 4, the value lws-write.h leaves out
 * ("LWS_WRITE_CLOSE is handled by lws_close_reason()"); send_close() needs
 * it where lws_close_reason() cannot be used. */
#define WS_WRITE_CLOSE ((enum lws_write_protocol)4)

/* A client message that spans several RECEIVE callbacks. */
struct rxbuf {
	size_t len;
	size_t cap;
	char data[];
};

/* Per WebSocket connection, allocated by lws (per_session_data_size) and
 * zeroed; valid from ESTABLISHED to CLOSED. Kept small: idle connections
 * are the bulk of the memory. At most 104 bytes, so that glibc gives it a
 * 112-byte chunk (docs/PERFORMANCE.md, "Memory per connection"). */
struct session {
	struct lws *wsi;
	struct hub_conn *conn;       /* NULL until ESTABLISHED succeeded */
	struct rxbuf *rx;            /* only while a message spans fragments */
	struct session *prev, *next; /* ws->sessions */
	struct auth_rights *rights;  /* owned; NULL: the token restricts nothing */
	/* With close_code: static text, or a copy this session owns when
	 * reason_owned (a reason the hub gave, tr_kill); see set_close(). */
	const char *close_reason;
	struct ip_slot *ip;            /* its client address's count in ws->ips */
	struct presence_bucket events; /* the client-event rate limit (presence.h) */
	struct rate rate;              /* the message rate limit's bucket */
	int close_code;                /* nonzero: close at the next write */
	unsigned char why;             /* enum metrics_close, when close_code does not tell */
	bool killing : 1;              /* libuv: closing; the close frame goes at the next write */
	bool told_slow : 1;            /* the SLOW_CONSUMER error frame has been written */
	bool awaiting_auth : 1;        /* connected without a token: only `auth` may come */
	bool reason_owned : 1;         /* close_reason is a copy to free */
	bool flushing : 1;             /* in ws->flush: written at the end of the loop turn */
	bool closing : 1;              /* a close frame went out or came in: no more data */
};
_Static_assert(sizeof(struct session) <= 104, "struct session outgrew its 112-byte chunk");

/* What CONFIRM_UPGRADE verified, for ESTABLISHED of the same wsi with the
 * same token: lws calls the two back to back, and verifying a token twice
 * costs twice (~30 µs for RS256, ~90 µs for ES256 here). Service thread. */
struct verified {
	struct lws *wsi; /* NULL: empty */
	size_t len;
	char token[WS_HEADER_MAX];
	struct auth_identity id; /* owns id.rights */
};

/* The edge limits of docs/SECURITY.md, resolved from the configuration;
 * replaced whole on SIGHUP (ws_reload_edge). */
struct edge_cfg {
	struct origins *origins;               /* owned; NULL: any origin */
	uint32_t max_conns;                    /* resolved: never 0 */
	uint32_t per_ip, per_user, per_tenant; /* 0: no limit */
	struct rate_cfg rate;
	uint32_t max_message;
	uint32_t json_depth, json_elems;
};

/* Settings a SIGHUP reload hands to the service thread (ws_reload). */
struct reload {
	struct auth *auth; /* owned until applied */
	struct hub_limits lim;
};

struct ws {
	struct lws_context *ctx;
	struct lws_vhost *vh;
	struct hub *hub;                 /* owned */
	struct auth *auth;               /* borrowed, or owned_auth after a reload */
	struct auth *owned_auth;         /* the auth of the last reload; freed with w */
	_Atomic(struct reload *) reload; /* any thread: pending reload */
	struct handoff *q;               /* borrowed */
	/* Owned: presence, client events and control commands. */
	struct presence *pres;
	/* Any thread: presence settings waiting for the service thread. */
	_Atomic(struct presence *) pres_reload;
	/* Owned, Redis mode: presence and control commands across nodes. */
	struct pcluster *pcl;
	lws_sorted_usec_list_t sul_cluster;
	int port;
	int ping_interval_s, ping_timeout_s;
	int auth_timeout_s;                /* 0: a handshake without a token is refused */
	bool demo;                         /* serve the demo page and /livehub.js */
	lws_retry_bo_t retry;              /* lws keeps a pointer */
	struct lws_protocols protocols[2]; /* lws keeps a pointer */
	lws_sorted_usec_list_t sul_sweep;
	lws_sorted_usec_list_t sul_deadline;
	struct session *sessions;    /* live WebSocket connections */
	struct session *unauthed;    /* connected without a token, waiting for auth */
	bool closing;                /* shutdown has begun: no new clients */
	bool deadline_passed;        /* the shutdown grace (grace_ms) is over */
	_Atomic bool stop;           /* any thread: ws_stop() was called */
	_Atomic int grace_ms;        /* any thread: how long closing clients may take */
	char tokbuf[WS_HEADER_MAX];  /* scratch for the token, service thread */
	struct verified last;        /* the handshake verified last, service thread */
	uv_loop_t *uv;               /* owned; NULL: lws' own poll() loop */
	void *foreign_loops[1];      /* lws keeps a pointer */
	struct publication *backlog; /* taken from the hand-off, not published yet (FIFO) */
	size_t batch_cap;            /* write_batch: payload bytes of batch, 0 = no batching */
	unsigned char *batch;        /* owned; LWS_PRE + batch_cap bytes, service thread */
	/* Direct writes (flush_writes()): sessions given frames while
	 * deferring, written from flush[flush_head] on; NULL slots are
	 * sessions that closed meanwhile. */
	bool direct_writes; /* configured */
	bool deferring;     /* in the hand-off's callback: want_write defers */
	struct session **flush;
	size_t flush_head, nflush, flush_cap;

	/* Edge limits (docs/SECURITY.md), service thread unless noted. */
	size_t nconns;                          /* connections counted in ips */
	struct edge_cfg *edge;                  /* owned */
	_Atomic(struct edge_cfg *) edge_reload; /* any thread: pending edge limits */
	struct ipcount *ips;                    /* open connections per client address */
	unsigned int fd_cap;                    /* the fd limit, for the derived global limit */

	/* Redis mode (LIVEHUB_REDIS_URL); both NULL in memory mode. */
	struct broker *broker;   /* owned */
	struct cluster *cluster; /* owned */
};

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct ws *ws_of(struct lws *wsi)
{
	return lws_context_user(lws_get_context(wsi));
}

/* Sets the code and reason of s's close frame. An owned reason (malloc'd)
 * becomes s's, freed when replaced or at CLOSED. */
static void set_close(struct session *s, int code, const char *reason, bool owned)
{
	if (reason != s->close_reason) {
		if (s->reason_owned)
			free((char *)s->close_reason);
		s->close_reason = reason;
		s->reason_owned = owned;
	}
	s->close_code = code;
}

/* A connection asked to close that never becomes writable (a peer that
 * stopped reading) is dropped after WS_KILL_GRACE_S rather than at the ping
 * timeout; one already closing keeps the close lws has scheduled. */
static void kill_after_grace(struct session *s)
{
	if (!s->closing)
		lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, WS_KILL_GRACE_S);
}

/* Sets the close frame's code and reason and has lws send it and close the
 * connection. With lws' poll loop, returning -1 from the callback does
 * that. Under libuv it does not: Debian's lws 4.1.6 is built with _DEBUG,
 * and lws_service_fd_tsi() then closes a wsi a second time right after a
 * callback returned -1 ("uv repeat test"); that second close finds the
 * close frame still waiting to be sent and drops the socket without it
 * (lws' timeouts kill without a close frame too). So with libuv s is
 * marked, the callback returns 0, and on_writeable() writes the close
 * frame itself (send_close()) before returning -1. */
static int close_now(struct ws *w, struct session *s, int code, const char *reason)
{
	if (!w->uv) {
		lws_close_reason(s->wsi, (enum lws_close_status)code, (unsigned char *)reason,
		                 strlen(reason));
		/* lws keeps the connection until the client answers (up to
		 * 5 s) and still calls SERVER_WRITEABLE meanwhile: no data may
		 * follow the close frame (RFC 6455 5.5.1). */
		s->closing = true;
		return -1;
	}
	set_close(s, code, reason, false);
	s->killing = true;
	lws_callback_on_writable(s->wsi);
	/* A peer that stopped reading may never make it writable again. */
	kill_after_grace(s);
	return 0;
}

/* libuv only (see close_now()): writes the close frame for s->close_code
 * and s->close_reason, then returns -1 so that lws shuts the connection
 * down, as its own close does (it does not wait for the client's answer
 * either); what the socket did not take at once lws still flushes
 * before it closes. */
static int send_close(struct session *s)
{
	unsigned char buf[LWS_PRE + 125];
	size_t n = strlen(s->close_reason);
	if (n > 123)
		n = 123;
	buf[LWS_PRE] = (unsigned char)(s->close_code >> 8);
	buf[LWS_PRE + 1] = (unsigned char)(s->close_code & 0xff);
	memcpy(buf + LWS_PRE + 2, s->close_reason, n);
	(void)lws_write(s->wsi, buf + LWS_PRE, n + 2, WS_WRITE_CLOSE);
	return -1;
}

/* Marks s to be closed with code/reason (a static string) at its next
 * write, and asks for that write. */
static void close_later(struct session *s, int code, const char *reason)
{
	if (!s->close_code)
		set_close(s, code, reason, false);
	lws_callback_on_writable(s->wsi);
}

static const char *status_text(unsigned int status)
{
	switch (status) {
	case 200: return "OK";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 429: return "Too Many Requests";
	case 503: return "Service Unavailable";
	default: return "Error";
	}
}

/* Writes a complete plain-text response, status line, headers and body in
 * one write, as lws does for its own status pages. The status line is
 * written here rather than by lws_add_http_header_status(), which answers
 * a refused upgrade as HTTP/1.0 (some clients reject that). retry_after_s
 * > 0 adds a Retry-After header. Returns 0 or -1. */
static int http_reply_retry(struct lws *wsi, unsigned int status, int retry_after_s,
                            const char *body)
{
	char buf[LWS_PRE + 512];
	char retry[40] = "";
	char *start = buf + LWS_PRE;
	size_t room = sizeof(buf) - LWS_PRE;
	if (retry_after_s > 0)
		snprintf(retry, sizeof retry, "retry-after: %d\r\n", retry_after_s);
	int n = snprintf(start, room,
	                 "HTTP/1.1 %u %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
	                 "content-length: %zu\r\ncache-control: no-store\r\n%s\r\n%s",
	                 status, status_text(status), strlen(body), retry, body);
	if (n < 0 || (size_t)n >= room)
		return -1;
	return lws_write(wsi, (unsigned char *)start, (size_t)n, LWS_WRITE_HTTP) == n ? 0 : -1;
}

static int http_reply(struct lws *wsi, unsigned int status, const char *body)
{
	return http_reply_retry(wsi, status, 0, body);
}

/* ------------------------------------------------------------------------
 * Hub transport: called by the hub on the service thread.
 * ------------------------------------------------------------------------ */

/* Queues s for flush_writes(); false when out of memory. */
static bool flush_push(struct ws *w, struct session *s)
{
	if (w->nflush == w->flush_cap) {
		size_t cap = w->flush_cap ? w->flush_cap * 2 : 1024;
		struct session **p = realloc(w->flush, cap * sizeof(*p));
		if (!p)
			return false;
		w->flush = p;
		w->flush_cap = cap;
	}
	w->flush[w->nflush++] = s;
	s->flushing = true;
	return true;
}

/* A session that closes while queued for flush_writes() leaves its slot. */
static void flush_forget(struct ws *w, struct session *s)
{
	for (size_t i = w->flush_head; i < w->nflush; i++)
		if (w->flush[i] == s) {
			w->flush[i] = NULL;
			break;
		}
	s->flushing = false;
}

/* Frames were queued on an idle connection. Inside the hand-off's
 * callback (publications) the write waits for the end of it
 * (flush_writes()); elsewhere lws is asked for a writable event. */
static void tr_want_write(void *tctx)
{
	struct session *s = tctx;
	if (s->flushing)
		return;
	struct ws *w = ws_of(s->wsi);
	if (w->deferring && flush_push(w, s))
		return;
	lws_callback_on_writable(s->wsi);
}

/* The hub gave up on the connection (send queue overflow): it is closed
 * from SERVER_WRITEABLE, the only place lws lets us close a ws connection
 * that is not in a callback of its own. */
static void tr_kill(void *tctx, int close_code, const char *reason)
{
	struct session *s = tctx;
	if (s->killing)
		return; /* close_now() asked for the write that closes it */
	/* The reason may be a Disconnect call's, gone when this returns; a
	 * close already pending keeps its own reason. */
	if (!s->close_code) {
		char *copy = strndup(reason, 123);
		set_close(s, close_code, copy ? copy : "DISCONNECTED", copy != NULL);
	}
	close_later(s, close_code, reason);
	/* A peer that stopped reading may never make the socket writable again:
	 * drop it after a few seconds rather than at the ping timeout. */
	kill_after_grace(s);
}

/* ------------------------------------------------------------------------
 * HTTP and the handshake
 * ------------------------------------------------------------------------ */

/* Renders /metrics: the counters plus gauges only the service thread can
 * read (send queue lengths, walked here once per scrape). */
static int metrics_reply(struct ws *w, struct lws *wsi)
{
	struct metrics_gauges g = {0};
	hub_stats_read(w->hub, &g.hub);
	g.handoff_depth = handoff_depth(w->q);
	g.handoff_bytes = handoff_bytes(w->q);
	struct presence_stats ps;
	presence_stats_read(&ps);
	g.client_events = ps.client_events;
	g.client_events_limited = ps.client_events_limited;
	g.presence_events = ps.presence_events;
	g.disconnects = ps.disconnects;
	if (w->broker) {
		g.redis = true;
		broker_stats_read(w->broker, &g.broker);
		g.node = broker_node_id(w->broker);
	}
	pcluster_stats_read(&g.cluster);
	for (struct session *s = w->sessions; s; s = s->next) {
		size_t n = hub_conn_queued(s->conn);
		g.sendq_frames += n;
		g.sendq_bytes += hub_conn_queued_bytes(s->conn);
		if (n > g.sendq_max)
			g.sendq_max = n;
	}
	struct strbuf sb = STRBUF_INIT;
	char head[200] = {0};
	metrics_render(&sb, &g);
	if (sb.oom) {
		sb_free(&sb);
		return http_reply(wsi, 503, "out of memory\n");
	}
	size_t body = sb.len;
	int n = snprintf(head, sizeof head,
	                 "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; "
	                 "charset=utf-8\r\ncontent-length: %zu\r\ncache-control: no-store\r\n\r\n",
	                 body);
	/* LWS_PRE bytes of headroom, then the headers, then the body. */
	struct strbuf out = STRBUF_INIT;
	static const char pre[LWS_PRE];
	sb_add(&out, pre, LWS_PRE);
	sb_add(&out, head, (size_t)n);
	sb_add(&out, sb.buf, body);
	sb_free(&sb);
	int rc = -1;
	if (!out.oom) {
		size_t len = out.len - LWS_PRE;
		rc = lws_write(wsi, (unsigned char *)out.buf + LWS_PRE, len, LWS_WRITE_HTTP) ==
		                     (int)len
		             ? 0
		             : -1;
	}
	sb_free(&out);
	return rc;
}

/* Serves an embedded file (the demo page, the browser client): 304 when
 * the client's If-None-Match holds its ETag, else 200 with the bytes (none
 * for HEAD). Headers and body go out in one write, which lws finishes in
 * the background when the socket takes less. Returns 0 or -1. */
static int static_reply(struct lws *wsi, const struct static_file *f)
{
	char inm[128] = {0};
	if (lws_hdr_copy(wsi, inm, (int)sizeof inm, WSI_TOKEN_HTTP_IF_NONE_MATCH) < 0)
		inm[0] = '\0';
	bool fresh = static_file_not_modified(f, inm);
	bool head = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;
	bool html = strncmp(f->content_type, "text/html", 9) == 0;
	char hdr[768];
	/* The page carries a token in its URL: no Referer may leak it, and
	 * scripts come only from here (the WebSocket is on this origin too). */
	int n = snprintf(hdr, sizeof hdr,
	                 "HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
	                 "cache-control: %s\r\netag: %s\r\nx-content-type-options: nosniff\r\n"
	                 "referrer-policy: no-referrer\r\n%s\r\n",
	                 fresh ? "304 Not Modified" : "200 OK", f->content_type,
	                 fresh ? (size_t)0 : f->len, f->cache_control, f->etag,
	                 html ? "content-security-policy: default-src 'self'; connect-src 'self' "
	                        "ws: wss:; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
	                        "frame-ancestors 'none'\r\n"
	                      : "");
	if (n < 0 || (size_t)n >= sizeof hdr)
		return -1;
	size_t body = fresh || head ? 0 : f->len;
	unsigned char *buf = malloc(LWS_PRE + (size_t)n + body);
	if (!buf)
		return http_reply(wsi, 503, "out of memory\n");
	memcpy(buf + LWS_PRE, hdr, (size_t)n);
	if (body)
		memcpy(buf + LWS_PRE + n, f->data, body);
	size_t len = (size_t)n + body;
	int rc = lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_HTTP) == (int)len ? 0 : -1;
	free(buf);
	return rc;
}

/* /healthz: the process is alive (also while it shuts down). /readyz:
 * it takes clients and calls (503 while starting or shutting down).
 * /metrics: Prometheus text format. "/", "/demo.js", "/livehub.js": the
 * demo page and the browser client, unless the demo setting is off. */
static int on_http(struct ws *w, struct lws *wsi, const char *uri)
{
	int rc;
	bool ready = atomic_load(&lh_metrics.ready) && !w->closing &&
	             !atomic_load(&lh_metrics.redis_down);
	const struct static_file *f = w->demo ? static_file_find(uri) : NULL;
	if (strcmp(uri, "/healthz") == 0)
		rc = http_reply(wsi, 200, "ok\n");
	else if (strcmp(uri, "/readyz") == 0)
		rc = ready ? http_reply(wsi, 200, "ready\n") : http_reply(wsi, 503, "not ready\n");
	else if (strcmp(uri, "/metrics") == 0)
		rc = metrics_reply(w, wsi);
	else if (f)
		rc = static_reply(wsi, f);
	else
		rc = http_reply(wsi, 404, "not found\n");
	if (rc || lws_http_transaction_completed(wsi))
		return -1;
	return 0;
}

/* Finds "bearer.JWT" among the comma-separated subprotocols the client
 * offered (browsers cannot set headers; they can offer subprotocols).
 * Returns a pointer into w->tokbuf, or NULL. */
static const char *protocol_token(struct ws *w, struct lws *wsi)
{
	int n = lws_hdr_copy(wsi, w->tokbuf, (int)sizeof(w->tokbuf), WSI_TOKEN_PROTOCOL);
	size_t plen = strlen(WS_BEARER_PREFIX);
	for (char *p = w->tokbuf; n > 0 && *p;) {
		while (*p == ' ' || *p == ',')
			p++;
		char *end = p + strcspn(p, ", ");
		if ((size_t)(end - p) > plen && strncmp(p, WS_BEARER_PREFIX, plen) == 0) {
			*end = '\0';
			return p + plen;
		}
		p = end;
	}
	return NULL;
}

/* True when the client offered no subprotocol or offered ours among
 * others: a client that offers only others cannot be answered (the 101
 * must name one it offered). */
static bool protocol_offered(struct ws *w, struct lws *wsi)
{
	if (lws_hdr_total_length(wsi, WSI_TOKEN_PROTOCOL) <= 0)
		return true;
	bool hit = false;
	int n = lws_hdr_copy(wsi, w->tokbuf, (int)sizeof(w->tokbuf), WSI_TOKEN_PROTOCOL);
	for (char *p = w->tokbuf; n > 0 && *p && !hit;) {
		while (*p == ' ' || *p == ',')
			p++;
		size_t len = strcspn(p, ", ");
		hit = len == strlen(WS_PROTOCOL_NAME) && strncmp(p, WS_PROTOCOL_NAME, len) == 0;
		p += len;
	}
	explicit_bzero(w->tokbuf, sizeof(w->tokbuf));
	return hit;
}

/* Finds the client's token: ?token= on the URL, else "Authorization:
 * Bearer", else a "bearer.JWT" subprotocol. Returns a pointer into
 * w->tokbuf (or "" for a malformed Authorization header), or NULL when the
 * request carries no credential at all. */
static const char *find_token(struct ws *w, struct lws *wsi)
{
	const char *t = lws_get_urlarg_by_name(wsi, "token=", w->tokbuf, (int)sizeof(w->tokbuf));
	if (t && *t)
		return t;
	int n = lws_hdr_copy(wsi, w->tokbuf, (int)sizeof(w->tokbuf), WSI_TOKEN_HTTP_AUTHORIZATION);
	if (n > 0) {
		/* A header that is not "Bearer TOKEN" is a bad credential (401),
		 * not a missing one: "" never verifies. */
		t = n > 7 && strncasecmp(w->tokbuf, "Bearer ", 7) == 0 ? w->tokbuf + 7 : "";
		while (*t == ' ')
			t++;
		return t;
	}
	return protocol_token(w, wsi);
}

static void forget_verified(struct ws *w)
{
	if (!w->last.wsi)
		return;
	auth_rights_free(w->last.id.rights);
	explicit_bzero(w->last.token, w->last.len);
	memset(&w->last.id, 0, sizeof w->last.id);
	w->last.len = 0;
	w->last.wsi = NULL;
}

/* Verifies the request's token. Returns 0 with *id filled, or LH_EAUTH /
 * LH_EEXPIRED with *why set to a client-safe reason. With keep (the
 * handshake) the identity is kept in w->last instead (id->rights NULL);
 * without (ESTABLISHED) a kept identity of the same wsi and token is used
 * instead of verifying again. */
static int verify(struct ws *w, struct lws *wsi, struct auth_identity *id, const char **why,
                  bool keep)
{
	const char *token = find_token(w, wsi);
	id->rights = NULL;
	if (!token) {
		*why = "no token";
		return LH_EAUTH;
	}
	size_t len = strlen(token);
	int rc = 0;
	if (!keep && w->last.wsi == wsi && w->last.len == len &&
	    memcmp(w->last.token, token, len) == 0) {
		*id = w->last.id;
		w->last.id.rights = NULL;
	} else {
		rc = auth_verify(w->auth, token, id, why);
	}
	forget_verified(w);
	if (keep && rc == 0) {
		w->last.wsi = wsi;
		w->last.len = len;
		memcpy(w->last.token, token, len);
		w->last.id = *id;
		id->rights = NULL;
	}
	memset(w->tokbuf, 0, sizeof(w->tokbuf));
	return rc;
}

/* ------------------------------------------------------------------------
 * Edge checks at the handshake (docs/SECURITY.md)
 * ------------------------------------------------------------------------ */

/* Refuses the upgrade with status (403, 429 or 503), counting reason. */
static int refuse(struct lws *wsi, enum metrics_refusal reason, unsigned int status,
                  const char *body)
{
	metrics_inc(&lh_metrics.refused[reason], 1);
	http_reply_retry(wsi, status,
	                 status == 503   ? WS_RETRY_GLOBAL_S
	                 : status == 429 ? WS_RETRY_LIMIT_S
	                                 : 0,
	                 body);
	/* Limit refusals come in floods: debug only (the counters have them). */
	if (reason == MR_ORIGIN)
		log_info("event=handshake_refused status=%u reason=origin", status);
	else
		log_debug("event=handshake_refused status=%u reason=connection_limit", status);
	return 1;
}

/* The key the client's address is counted under (edge_ip_key: the IPv4
 * address, or the IPv6 /64); "" when unknown. buf has EDGE_IP_KEY_MAX
 * bytes. */
static const char *peer_ip(struct lws *wsi, char *buf)
{
	char text[EDGE_IP_KEY_MAX];
	text[0] = '\0';
	const char *ip = lws_get_peer_simple(wsi, text, sizeof text);
	edge_ip_key(ip ? ip : "", buf);
	return buf;
}

/* The Origin header against the allow-list. A request without Origin is
 * not from a browser (browsers always send it on a WebSocket upgrade) and
 * is let through: the allow-list stops other sites' pages from using a
 * visitor's browser, while a non-browser client can send any Origin it
 * likes anyway, so refusing it would protect nothing. Returns 0 or 1
 * (refused, response written). */
static int check_origin(struct ws *w, struct lws *wsi)
{
	char origin[WS_ORIGIN_MAX];
	int total = lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN);
	if (total <= 0 || !w->edge->origins)
		return 0;
	int n = lws_hdr_copy(wsi, origin, (int)sizeof origin, WSI_TOKEN_ORIGIN);
	if (n > 0 && origins_allowed(w->edge->origins, origin, (size_t)n))
		return 0;
	return refuse(wsi, MR_ORIGIN, 403, "ORIGIN_NOT_ALLOWED: this Origin may not connect\n");
}

/* The limits that need no identity: global and per address. */
static int check_conn_limits(struct ws *w, struct lws *wsi)
{
	char ip[EDGE_IP_KEY_MAX];
	const struct edge_cfg *e = w->edge;
	if (w->nconns >= e->max_conns)
		return refuse(wsi, MR_LIMIT_GLOBAL, 503,
		              "TOO_MANY_CONNECTIONS: the server is full, retry later\n");
	if (e->per_ip && ipcount_get(w->ips, peer_ip(wsi, ip)) >= e->per_ip)
		return refuse(wsi, MR_LIMIT_IP, 429,
		              "TOO_MANY_CONNECTIONS: too many connections from this address\n");
	return 0;
}

/* The limits that need the identity: per user and per tenant. Returns
 * MR_LIMIT_USER or MR_LIMIT_TENANT when one is reached, -1 when the
 * connection is admitted. Hook for first-message auth: a connection whose
 * identity is known only when its `auth` message is accepted must be
 * checked here at that point (the count then includes itself once it is
 * open in the hub, so compare with > instead of >=). */
static int identity_over_limit(struct ws *w, const char *tenant, const char *user)
{
	const struct edge_cfg *e = w->edge;
	if (e->per_user && hub_user_conns(w->hub, tenant, user) >= e->per_user)
		return MR_LIMIT_USER;
	if (e->per_tenant && hub_tenant_conns(w->hub, tenant) >= e->per_tenant)
		return MR_LIMIT_TENANT;
	return -1;
}

/* Before the upgrade: only /ws, from an allowed origin, within the
 * connection limits, only with a valid token. The cheap checks go before
 * the signature check, so a flood costs no crypto. A non-zero return
 * after writing a response refuses the upgrade with that response. */
static int on_confirm_upgrade(struct ws *w, struct lws *wsi, const char *proto)
{
	char path[256];
	if (!proto || strcmp(proto, "websocket") != 0) {
		metrics_inc(&lh_metrics.refused[MR_NOT_WEBSOCKET], 1);
		http_reply(wsi, 400, "only WebSocket upgrades are supported\n");
		return 1;
	}
	int n = lws_hdr_copy(wsi, path, (int)sizeof(path), WSI_TOKEN_GET_URI);
	if (n <= 0 || strcmp(path, "/ws") != 0) {
		metrics_inc(&lh_metrics.refused[MR_NOT_FOUND], 1);
		http_reply(wsi, 404, "not found\n");
		return 1;
	}
	if (w->closing) {
		metrics_inc(&lh_metrics.refused[MR_SHUTTING_DOWN], 1);
		http_reply(wsi, 503, "shutting down\n");
		return 1;
	}
	if (check_origin(w, wsi) || check_conn_limits(w, wsi))
		return 1;
	if (!protocol_offered(w, wsi)) {
		metrics_inc(&lh_metrics.refused[MR_NOT_WEBSOCKET], 1);
		http_reply(wsi, 400,
		           "offer the " WS_PROTOCOL_NAME " subprotocol (with bearer.TOKEN if you "
		           "like), or none\n");
		return 1;
	}
	if (w->auth_timeout_s > 0 && !find_token(w, wsi)) {
		/* No token: the first message must bring one (on_first_message). */
		memset(w->tokbuf, 0, sizeof(w->tokbuf));
		return 0;
	}
	struct auth_identity id;
	const char *why = "invalid token";
	int rc = verify(w, wsi, &id, &why, true);
	if (rc) {
		char body[160];
		snprintf(body, sizeof(body), "%s: %s\n",
		         rc == LH_EEXPIRED ? "TOKEN_EXPIRED" : "AUTH_FAILED", why);
		http_reply(wsi, 401, body);
		metrics_inc(&lh_metrics.refused[MR_AUTH], 1);
		metrics_inc(&lh_metrics.auth_failed[metrics_auth_reason(why)], 1);
		log_info("event=handshake_refused code=%s reason=\"%s\"",
		         rc == LH_EEXPIRED ? "TOKEN_EXPIRED" : "AUTH_FAILED", why);
		return 1;
	}
	int over = identity_over_limit(w, id.tenant, id.user);
	if (over == MR_LIMIT_USER)
		return refuse(wsi, MR_LIMIT_USER, 429,
		              "TOO_MANY_CONNECTIONS: too many connections for this user\n");
	if (over == MR_LIMIT_TENANT)
		return refuse(wsi, MR_LIMIT_TENANT, 429,
		              "TOO_MANY_CONNECTIONS: too many connections for this tenant\n");
	return 0;
}

/* Puts s at the head of *list (w->sessions, or w->unauthed for sessions
 * waiting for `auth`: a session is on one of them at a time). */
static void session_link(struct session **list, struct session *s)
{
	s->prev = NULL;
	s->next = *list;
	if (*list)
		(*list)->prev = s;
	*list = s;
}

static void session_unlink(struct session **list, struct session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else if (*list == s)
		*list = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
}

/* Counts s against the global and per-address limits, from ESTABLISHED
 * to CLOSED, whether or not it has an identity yet (a connection waiting
 * for a first-message `auth` counts too). Returns 0 or LH_ENOMEM. */
static int conn_count(struct ws *w, struct session *s)
{
	char ip[EDGE_IP_KEY_MAX];
	s->ip = ipcount_acquire(w->ips, peer_ip(s->wsi, ip));
	if (!s->ip)
		return LH_ENOMEM;
	w->nconns++;
	return 0;
}

/* Undoes conn_count(); a no-op the second time. ESTABLISHED calls it
 * before it refuses a connection (lws may not raise CLOSED then), CLOSED
 * always. */
static void conn_uncount(struct ws *w, struct session *s)
{
	if (!s->ip)
		return;
	ipcount_release(w->ips, s->ip);
	s->ip = NULL;
	w->nconns--;
}

/* Refuses the connection from ESTABLISHED, uncounting it first. */
static int refuse_established(struct ws *w, struct session *s, int code, const char *reason)
{
	conn_uncount(w, s);
	return close_now(w, s, code, reason);
}

/* Arms the wsi's timer for when the token of s stops being valid (exp
 * plus leeway, as auth_verify judges it), or cancels it (exp 0). */
static void schedule_expiry(struct ws *w, struct session *s, int64_t exp)
{
	if (!exp) {
		lws_set_timer_usecs(s->wsi, LWS_SET_TIMER_USEC_CANCEL);
		return;
	}
	int64_t left_ms = (exp + auth_leeway(w->auth) + 1) * 1000 - wall_ms();
	if (left_ms < 0)
		left_ms = 0;
	if (left_ms > WS_TIMER_MAX_S * 1000)
		left_ms = WS_TIMER_MAX_S * 1000;
	lws_set_timer_usecs(s->wsi, (lws_usec_t)left_ms * 1000);
}

/* Opens the hub connection of a verified identity, takes id->rights, and
 * queues `connected` (echoing the id of the auth message req, if any).
 * Returns 0, or the result of closing s. */
static int open_session(struct ws *w, struct session *s, struct auth_identity *id,
                        const struct wsp_request *req)
{
	s->conn = hub_conn_open(w->hub, id->tenant, id->user, s);
	if (!s->conn) {
		auth_rights_free(id->rights);
		return refuse_established(w, s, 1011, "SERVER_ERROR");
	}
	s->rights = id->rights;
	id->rights = NULL;
	if (w->cluster)
		cluster_conn_open(w->cluster, s->conn);
	session_link(&w->sessions, s);
	schedule_expiry(w, s, id->exp);
	presence_on_open(w->pres, w->hub, s->conn);
	metrics_inc(&lh_metrics.conn_opened, 1);
	char cid[HUB_CONN_ID_MAX];
	hub_conn_id(s->conn, cid);
	log_info("event=connect client=%s tenant=%s user=%s", cid, id->tenant, id->user);
	/* From here on CLOSED must follow, so failures close from the writer. */
	struct frame *f = wsp_connected_req(cid, id->tenant, id->user, w->ping_interval_s,
	                                    w->ping_timeout_s, req);
	if (!f) {
		close_later(s, 1011, "SERVER_ERROR");
		return 0;
	}
	metrics_inc(&lh_metrics.msg_out[MO_CONNECTED], 1);
	hub_conn_send(w->hub, s->conn, f);
	frame_unref(f);
	return 0;
}

/* The connection is a WebSocket now. Its identity is the one
 * CONFIRM_UPGRADE verified (w->last, matched by wsi and token: lws dropped
 * the session struct since), else the token, still readable in the
 * headers, is verified again. Without a token (first-message auth allowed) the
 * session waits for `auth`, holding no hub connection, until the timer. */
static int on_established(struct ws *w, struct lws *wsi, struct session *s)
{
	struct auth_identity id;
	const char *why = "invalid token";
	s->wsi = wsi;
	if (w->closing)
		return close_now(w, s, WS_CLOSE_SHUTDOWN, "server shutting down");
	/* Counted against the limits from here, with or without an identity. */
	if (conn_count(w, s))
		return close_now(w, s, 1011, "SERVER_ERROR");
	if (w->auth_timeout_s > 0 && !find_token(w, wsi)) {
		memset(w->tokbuf, 0, sizeof(w->tokbuf));
		s->awaiting_auth = true;
		session_link(&w->unauthed, s);
		metrics_inc(&lh_metrics.awaiting_auth, 1);
		lws_set_timer_usecs(wsi, (lws_usec_t)w->auth_timeout_s * LWS_US_PER_SEC);
		return 0;
	}
	int rc = verify(w, wsi, &id, &why, false);
	if (rc) {
		metrics_inc(&lh_metrics.auth_failed[metrics_auth_reason(why)], 1);
		return refuse_established(w, s, 1008,
		                          rc == LH_EEXPIRED ? "TOKEN_EXPIRED" : "AUTH_FAILED");
	}
	return open_session(w, s, &id, NULL);
}

/* The wsi's timer: the auth timeout of a session without a token, or the
 * expiry of the token of an open one. Closes from the writer, after the
 * queued frames (TOKEN_EXPIRED error included). */
static int on_timer(struct ws *w, struct session *s)
{
	if (s->close_code || s->killing)
		return 0;
	if (s->awaiting_auth) {
		metrics_inc(&lh_metrics.auth_failed[MA_AUTH_TIMEOUT], 1);
		close_later(s, WS_CLOSE_AUTH_TIMEOUT, "AUTH_TIMEOUT");
	} else if (s->conn) {
		struct frame *f = wsp_error(
		        WSP_TOKEN_EXPIRED,
		        "the token expired: refresh it, or reconnect with a new one", false, NULL);
		if (f) {
			metrics_inc(&lh_metrics.msg_out[MO_ERROR], 1);
			hub_conn_send(w->hub, s->conn, f);
			frame_unref(f);
		}
		metrics_inc(&lh_metrics.auth_failed[MA_EXPIRED], 1);
		metrics_inc(&lh_metrics.token_expirations, 1);
		s->why = MC_AUTH;
		close_later(s, WS_CLOSE_TOKEN_EXPIRED, "TOKEN_EXPIRED");
	}
	kill_after_grace(s);
	return 0;
}

/* ------------------------------------------------------------------------
 * Client messages
 * ------------------------------------------------------------------------ */

/* Counts a client message by type and its reply (error or not). */
static void count_message(const struct wsp_request *req, struct frame *f)
{
	static const char err_prefix[] = "{\"type\":\"error\"";
	bool error = f->len >= sizeof err_prefix - 1 &&
	             memcmp(frame_payload(f), err_prefix, sizeof err_prefix - 1) == 0;
	enum metrics_in in = MI_OTHER;
	if (req->type == WSP_SUBSCRIBE)
		in = MI_SUBSCRIBE;
	else if (req->type == WSP_UNSUBSCRIBE)
		in = MI_UNSUBSCRIBE;
	else if (req->type == WSP_PING)
		in = MI_PING;
	/* A message that did not parse was counted as invalid already. */
	if (!error || in != MI_OTHER)
		metrics_inc(&lh_metrics.msg_in[in], 1);
	metrics_inc(&lh_metrics.msg_out[error ? MO_ERROR : MO_REPLY], 1);
}

/* Subscribes (or, for an implicit channel, only recovers) and queues the
 * reply; when the client gave "since" and the history covers the gap, the
 * missed events are queued right behind the reply, before any live one
 * (the hub is not touched by anything else in between). Returns NULL with
 * *replied set when it queued the reply itself; NULL without it when out
 * of memory; else the error frame to queue. */
static struct frame *do_subscribe(struct ws *w, struct session *s, const struct wsp_request *req,
                                  bool *replied)
{
	*replied = false;
	/* The implicit channels ($...) are the connection's own: only named
	 * channels are subject to the token's rights. */
	if (req->channel[0] != '$' && !auth_rights_allow(s->rights, AUTH_SUBSCRIBE, req->channel)) {
		metrics_inc(&lh_metrics.channel_denied, 1);
		return wsp_error(WSP_CHANNEL_ACCESS_DENIED, "the token does not allow this channel",
		                 true, req);
	}
	if (w->cluster)
		return cluster_subscribe(w->cluster, s->conn, req, replied);
	struct hub_since since = {.given = req->has_since, .offset = req->since_offset};
	memcpy(since.epoch, req->since_epoch, sizeof(since.epoch));
	struct hub_position pos;
	int rc = hub_subscribe_since(w->hub, s->conn, req->channel, &since, &pos);
	switch (rc) {
	case 0:
	case LH_EEXIST: break;
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
	struct frame *f = wsp_subscribed_at(req, pos.offset, pos.epoch, pos.recovered);
	if (!f)
		return NULL; /* the caller closes with SERVER_ERROR */
	count_message(req, f);
	hub_conn_send(w->hub, s->conn, f);
	frame_unref(f);
	hub_replay(w->hub, s->conn, &pos);
	/* Implicit channels ($tenant, $user:) are only named here to recover
	 * them: nothing was joined, so nothing is announced. */
	if (rc == 0 && req->channel[0] != '$')
		presence_on_subscribed(w->pres, w->hub, s->conn, req->channel);
	*replied = true;
	return NULL;
}

/* Milliseconds on a coarse monotonic clock, for the rate limit (wraps
 * after 49 days; rate_take works modulo 2^32). */
static uint32_t mono_ms32(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint32_t)((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
}

/* The rate limit, before a message is acted on. Returns NULL when the
 * message may go on; else the RATE_LIMITED error to send (the message is
 * parsed only to echo its id), or sets *close for sustained abuse. */
static struct frame *rate_check(struct ws *w, struct session *s, const char *buf, size_t len,
                                bool *close)
{
	uint32_t retry_ms = 0;
	enum rate_verdict v = rate_take(&s->rate, &w->edge->rate, mono_ms32(), &retry_ms);
	if (v == RATE_OK)
		return NULL;
	metrics_inc(&lh_metrics.rate_limited, 1);
	if (v == RATE_ABUSIVE) {
		*close = true;
		return NULL;
	}
	struct wsp_request req;
	struct wsp_error err;
	const char *why;
	const struct wsp_request *echo = NULL;
	if (edge_json_shape(buf, len, w->edge->json_depth, w->edge->json_elems, &why) == 0) {
		(void)wsp_parse(buf, len, &req, &err);       /* fills the id whenever it is valid */
		explicit_bzero(req.token, sizeof req.token); /* an auth/refresh refused unread */
		if (req.id_len > 0)
			echo = &req;
	}
	return wsp_error_retry(WSP_RATE_LIMITED, "too many messages: wait retryAfter ms", retry_ms,
	                       echo);
}

/* Clears the token a message carried from the stack. */
static void forget_token(struct wsp_request *req)
{
	explicit_bzero(req->token, strnlen(req->token, sizeof req->token));
}

/* refresh: a valid token for the same tenant and user moves the expiry
 * and replaces the rights; anything else ends the connection (4001 for an
 * expired token, 4500 otherwise) after the error frame. */
static struct frame *do_refresh(struct ws *w, struct session *s, const struct wsp_request *req)
{
	struct auth_identity id;
	const char *why = "invalid token";
	int rc = auth_verify(w->auth, req->token, &id, &why);
	if (rc == 0 && (strcmp(id.tenant, hub_conn_tenant(s->conn)) != 0 ||
	                strcmp(id.user, hub_conn_user(s->conn)) != 0)) {
		auth_rights_free(id.rights);
		rc = LH_EAUTH;
		why = "the token is for another tenant or user";
	}
	if (rc) {
		bool expired = rc == LH_EEXPIRED;
		metrics_inc(&lh_metrics.auth_failed[metrics_auth_reason(why)], 1);
		char cid[HUB_CONN_ID_MAX];
		log_info("event=refresh_refused client=%s reason=\"%s\"", hub_conn_id(s->conn, cid),
		         why);
		s->why = MC_AUTH;
		close_later(s, expired ? WS_CLOSE_TOKEN_EXPIRED : WS_CLOSE_AUTH_FAILED,
		            expired ? "TOKEN_EXPIRED" : "AUTH_FAILED");
		kill_after_grace(s);
		return wsp_error(expired ? WSP_TOKEN_EXPIRED : WSP_AUTH_FAILED, why, false, req);
	}
	auth_rights_free(s->rights);
	s->rights = id.rights;
	schedule_expiry(w, s, id.exp);
	metrics_inc(&lh_metrics.token_refreshes, 1);
	return wsp_refreshed(req, (long long)id.exp);
}

/* The first message of a session that connected without a token: it must
 * be `auth` with a valid token, else the connection closes (4002 for any
 * other message, 4001 for an expired token, 4500 for a refused one). */
static int on_first_message(struct ws *w, struct session *s, const char *buf, size_t len)
{
	struct wsp_request req;
	struct wsp_error err;
	struct auth_identity id;
	const char *why = "invalid token";
	if (w->closing)
		return close_now(w, s, WS_CLOSE_SHUTDOWN, "server shutting down");
	const char *shape;
	req.token[0] = '\0';
	/* The same JSON shape limits as every other message, before parsing. */
	if (edge_json_shape(buf, len, w->edge->json_depth, w->edge->json_elems, &shape) ||
	    wsp_parse(buf, len, &req, &err) || req.type != WSP_AUTH) {
		forget_token(&req);
		metrics_inc(&lh_metrics.auth_failed[MA_AUTH_TIMEOUT], 1);
		return close_now(w, s, WS_CLOSE_AUTH_TIMEOUT, "AUTH_TIMEOUT: send auth first");
	}
	int rc = auth_verify(w->auth, req.token, &id, &why);
	forget_token(&req);
	if (rc) {
		metrics_inc(&lh_metrics.auth_failed[metrics_auth_reason(why)], 1);
		log_info("event=auth_refused code=%s reason=\"%s\"",
		         rc == LH_EEXPIRED ? "TOKEN_EXPIRED" : "AUTH_FAILED", why);
		return close_now(w, s,
		                 rc == LH_EEXPIRED ? WS_CLOSE_TOKEN_EXPIRED : WS_CLOSE_AUTH_FAILED,
		                 why);
	}
	int over = identity_over_limit(w, id.tenant, id.user);
	if (over >= 0) {
		/* The per-user and per-tenant limits, now that the identity is known. */
		auth_rights_free(id.rights);
		metrics_inc(&lh_metrics.refused[over], 1);
		return close_now(w, s, 1013, "TOO_MANY_CONNECTIONS");
	}
	s->awaiting_auth = false;
	session_unlink(&w->unauthed, s);
	atomic_fetch_sub_explicit(&lh_metrics.awaiting_auth, 1, memory_order_relaxed);
	lws_set_timer_usecs(s->wsi, LWS_SET_TIMER_USEC_CANCEL);
	return open_session(w, s, &id, &req);
}

/* Handles one complete client message: rate limit, shape, parse, act,
 * queue the reply.
 * Returns 0, or the result of closing s. */
static int on_message(struct ws *w, struct session *s, const char *buf, size_t len)
{
	struct wsp_request req;
	struct wsp_error err;
	struct frame *f;
	if (s->awaiting_auth)
		return on_first_message(w, s, buf, len);
	bool abusive = false;
	const char *why;
	hub_count_received(w->hub);
	if ((f = rate_check(w, s, buf, len, &abusive)) != NULL) {
		metrics_inc(&lh_metrics.msg_out[MO_ERROR], 1);
		hub_conn_send(w->hub, s->conn, f);
		frame_unref(f);
		return 0;
	}
	if (abusive) {
		s->why = MC_RATE_LIMITED;
		close_later(s, 1008, "RATE_LIMITED: too many messages");
		return 0;
	}
	if (edge_json_shape(buf, len, w->edge->json_depth, w->edge->json_elems, &why)) {
		metrics_inc(&lh_metrics.msg_in[MI_INVALID], 1);
		metrics_inc(&lh_metrics.shape_refused, 1);
		/* Not parsed: no id to echo; a type that counts as "other". */
		req.id_len = 0;
		req.type = WSP_AUTH;
		req.token[0] = '\0';
		f = wsp_error(WSP_BAD_REQUEST, why, true, NULL);
	} else if (wsp_parse(buf, len, &req, &err)) {
		metrics_inc(&lh_metrics.msg_in[MI_INVALID], 1);
		f = wsp_error(err.code, err.message, true, &req);
	} else if (req.type == WSP_SUBSCRIBE) {
		bool replied;
		f = do_subscribe(w, s, &req, &replied);
		if (replied)
			return 0;
	} else if (req.type == WSP_UNSUBSCRIBE) {
		/* LH_ENOENT is fine: unsubscribing is idempotent. */
		if (hub_unsubscribe(w->hub, s->conn, req.channel) == 0)
			presence_on_unsubscribed(w->pres, w->hub, s->conn, req.channel);
		f = wsp_unsubscribed(&req);
	} else if (req.type == WSP_REFRESH) {
		f = do_refresh(w, s, &req);
	} else if (req.type == WSP_AUTH) {
		f = wsp_error(WSP_BAD_REQUEST, "already authenticated: use refresh for a new token",
		              true, &req);
	} else if (req.type == WSP_PRESENCE) {
		/* Redis mode: the reply is queued when Redis answers. */
		if (presence_request_cluster(w->pres, w->hub, s->conn, &req)) {
			metrics_inc(&lh_metrics.msg_in[MI_OTHER], 1);
			metrics_inc(&lh_metrics.msg_out[MO_REPLY], 1);
			return 0;
		}
		f = presence_request(w->pres, w->hub, s->conn, &req);
	} else if (req.type == WSP_PUBLISH) {
		/* The token's rights decide where it may publish client events. */
		if (!auth_rights_allow(s->rights, AUTH_PUBLISH, req.channel))
			f = wsp_error(WSP_PERMISSION_DENIED,
			              "the token does not allow client events on this channel",
			              true, &req);
		else
			f = presence_publish(w->pres, w->hub, s->conn, &s->events, mono_ms(), &req);
	} else {
		f = wsp_reply(&req);
	}
	forget_token(&req);
	if (!f) {
		close_later(s, 1011, "SERVER_ERROR");
		return 0;
	}
	count_message(&req, f);
	hub_conn_send(w->hub, s->conn, f);
	frame_unref(f);
	return 0;
}

/* Appends a fragment to s->rx. Returns 0, LH_ELIMIT past max bytes or
 * LH_ENOMEM. */
static int rx_append(struct session *s, const void *in, size_t len, size_t max)
{
	struct rxbuf *rx = s->rx;
	size_t have = rx ? rx->len : 0;
	/* have > max: the limit was lowered (SIGHUP) while the message came. */
	if (have > max || len > max - have)
		return LH_ELIMIT;
	if (!rx || rx->cap - rx->len < len) {
		size_t cap = rx ? rx->cap * 2 : 1024;
		while (cap < have + len)
			cap *= 2;
		if (cap > max)
			cap = max;
		rx = realloc(rx, sizeof(*rx) + cap);
		if (!rx)
			return LH_ENOMEM;
		rx->len = have;
		rx->cap = cap;
		s->rx = rx;
	}
	memcpy(rx->data + rx->len, in, len);
	rx->len += len;
	return 0;
}

/* A piece of a client message. Messages that arrive whole (the common case)
 * are parsed in place; others are put together in s->rx first. */
static int on_receive(struct ws *w, struct session *s, const void *in, size_t len)
{
	struct lws *wsi = s->wsi;
	if (s->killing)
		return 0; /* closing (libuv): the rest of the read is dropped */
	if (!s->conn && !s->awaiting_auth)
		return -1;
	if (lws_frame_is_binary(wsi)) {
		s->why = MC_PROTOCOL_ERROR;
		return close_now(w, s, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
		                 "binary frames are not accepted");
	}
	if (s->close_code)
		return 0; /* closing: nothing more is answered */
	bool final = lws_is_final_fragment(wsi);
	size_t max = w->edge->max_message;
	if (final && !s->rx && len <= max)
		return on_message(w, s, in, len);
	int rc = rx_append(s, in, len, max);
	if (rc == LH_ELIMIT) {
		s->why = MC_PROTOCOL_ERROR;
		return close_now(w, s, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
		                 "message over the size limit");
	}
	if (rc)
		return close_now(w, s, 1011, "SERVER_ERROR");
	if (final) {
		rc = on_message(w, s, s->rx->data, s->rx->len);
		free(s->rx);
		s->rx = NULL;
	}
	return rc;
}

/* ------------------------------------------------------------------------
 * Writing and closing
 * ------------------------------------------------------------------------ */

/* Writes the oldest queued frames joined by '\n' as one WebSocket frame,
 * from w->batch (lws copies what the socket does not take at once, so the
 * buffer is free again on return). Returns 0 when it wrote, -1 on a write
 * error, 1 when fewer than two frames fit and nothing was taken. */
/* Records how long the oldest event of a write waited since its publish
 * call arrived: once per send, not per event, to stay off the per-delivery
 * cost. */
static void observe_write(int64_t t0_us)
{
	if (t0_us)
		metrics_observe(&lh_metrics.write_latency, metrics_now_us() - t0_us);
}

static int write_batch(struct ws *w, struct session *s, bool direct)
{
	size_t n;
	unsigned char *buf = w->batch + LWS_PRE;
	const struct frame *oldest = hub_conn_peek(s->conn);
	int64_t t0_us = oldest ? oldest->t0_us : 0;
	size_t len = hub_conn_take_batch(s->conn, buf, w->batch_cap, WS_BATCH_FRAMES, &n);
	if (len == 0)
		return 1;
	if (lws_write(s->wsi, buf, len, LWS_WRITE_TEXT) < 0)
		return -1;
	observe_write(t0_us);
	metrics_inc(&lh_metrics.bytes_out, len);
	metrics_inc(&lh_metrics.writes[direct], 1);
	if (hub_conn_queued(s->conn) > 0 || s->close_code)
		lws_callback_on_writable(s->wsi);
	return 0;
}

/* Closes that let the queued frames go first: shutdown, and the auth
 * closes whose error frame says why. */
static bool flushes_first(int code)
{
	return code == WS_CLOSE_SHUTDOWN || code == WS_CLOSE_TOKEN_EXPIRED ||
	       code == WS_CLOSE_AUTH_FAILED;
}

/* A slow consumer's queue was dropped; before its close (4000) it gets one
 * `error` frame saying why, for a client that reads again later. lws sends
 * the rest of a partly written frame first and the close only after this
 * one (the next writable callback comes once lws' buffer is flushed). */
static int tell_slow(struct session *s)
{
	static const char msg[] = "{\"type\":\"error\",\"code\":\"SLOW_CONSUMER\",\"message\":"
	                          "\"the connection did not read fast enough; its queued messages "
	                          "were dropped\",\"recoverable\":false}";
	unsigned char buf[LWS_PRE + sizeof(msg)];
	memcpy(buf + LWS_PRE, msg, sizeof(msg) - 1);
	s->told_slow = true;
	metrics_inc(&lh_metrics.msg_out[MO_ERROR], 1);
	if (lws_write(s->wsi, buf + LWS_PRE, sizeof(msg) - 1, LWS_WRITE_TEXT) < 0)
		return -1;
	lws_callback_on_writable(s->wsi);
	return 0;
}

/* Writes the oldest queued frames of s with one lws_write: several joined
 * into one WebSocket frame when more than one is queued and they fit in
 * write_batch bytes, else the oldest alone, from the shared frame without a
 * copy. Asks for a writable event when frames or a close remain. */
static int write_queued(struct ws *w, struct session *s, bool direct)
{
	size_t queued = hub_conn_queued(s->conn);
	if (queued > 1 && w->batch_cap) {
		int rc = write_batch(w, s, direct);
		if (rc <= 0)
			return rc;
	}
	struct frame *f = hub_conn_peek(s->conn);
	if (!f)
		return 0;
	/* lws writes the frame header into the headroom before the payload;
	 * server frames are unmasked, so the shared payload is not changed. */
	if (lws_write(s->wsi, frame_payload(f), f->len, LWS_WRITE_TEXT) < 0)
		return -1;
	observe_write(f->t0_us);
	metrics_inc(&lh_metrics.bytes_out, f->len);
	metrics_inc(&lh_metrics.writes[direct], 1);
	hub_conn_pop(s->conn);
	if (queued > 1 || s->close_code)
		lws_callback_on_writable(s->wsi);
	return 0;
}

/* The writable event: a pending close goes first, except at shutdown,
 * when queued frames are sent before the 1001; then the queue. */
static int on_writeable(struct ws *w, struct session *s)
{
	if (s->killing)
		return send_close(s);
	if (s->closing)
		return 0;
	size_t queued = s->conn ? hub_conn_queued(s->conn) : 0;
	if (s->close_code == WS_CLOSE_SLOW_CONSUMER && !s->told_slow && s->conn)
		return tell_slow(s);
	if (s->close_code && !(flushes_first(s->close_code) && queued > 0))
		return w->uv ? send_close(s) : close_now(w, s, s->close_code, s->close_reason);
	if (!s->conn)
		return 0;
	return write_queued(w, s, false);
}

/* Writes s's queue now, outside a writable event, as on_writeable() would,
 * when s is a plain HTTP/1.1 WebSocket with nothing pending but frames and
 * nothing of an earlier write is left in lws' buffer. Anything else waits
 * for the writable event. What the socket does not take lws keeps and
 * sends at the next writable event, before any writable callback; until
 * then s gets no direct write, so order holds and at most one write sits
 * outside the hub's bounded queue. (lws_send_pipe_choked() would add a
 * poll() per write: 8 % of the hub's time in a 4/s broadcast.) */
static void flush_one(struct ws *w, struct session *s)
{
	s->flushing = false;
	if (s->closing)
		return;
	if (s->killing || s->close_code || !s->conn || !hub_conn_queued(s->conn) ||
	    lws_get_network_wsi(s->wsi) != s->wsi || lws_partial_buffered(s->wsi)) {
		lws_callback_on_writable(s->wsi);
		return;
	}
	if (write_queued(w, s, true) < 0) {
		/* Outside a callback: lws closes it at its next turn. Nothing
		 * more is written, and no later lws_set_timeout() may push
		 * the close back (they all skip a closing session). */
		s->closing = true;
		lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
	}
}

/* Writes the connections the hand-off's callback gave frames, at most
 * WS_FLUSH_MAX per turn, in the order they got them (docs/PERFORMANCE.md,
 * "Direct writes"). It saves what a writable event costs per write: with
 * libuv two epoll_ctl() calls and a scan of libuv's event array, with
 * poll() a turn over every descriptor. */
static void flush_writes(struct ws *w)
{
	size_t end =
	        w->nflush - w->flush_head > WS_FLUSH_MAX ? w->flush_head + WS_FLUSH_MAX : w->nflush;
	while (w->flush_head < end) {
		struct session *s = w->flush[w->flush_head++];
		if (s)
			flush_one(w, s);
	}
	size_t left = w->nflush - w->flush_head;
	if (left)
		memmove(w->flush, w->flush + w->flush_head, left * sizeof(*w->flush));
	w->flush_head = 0;
	w->nflush = left;
	if (left)
		lws_cancel_service(w->ctx); /* the rest at the next turn */
}

/* Why s ended, from what the server decided; otherwise the client did. */
static enum metrics_close close_reason_of(const struct session *s)
{
	if (s->why)
		return (enum metrics_close)s->why;
	switch (s->close_code) {
	case 0: return MC_CLIENT;
	case WS_CLOSE_SHUTDOWN: return MC_SHUTDOWN;
	case 4000: return MC_SLOW_CONSUMER;
	case LH_CLOSE_RECONNECT:
	case LH_CLOSE_GOODBYE: return MC_DISCONNECTED;
	case 1011: return MC_SERVER_ERROR;
	default: return MC_PROTOCOL_ERROR;
	}
}

static void on_closed(struct ws *w, struct session *s)
{
	if (s->flushing)
		flush_forget(w, s);
	free(s->rx);
	s->rx = NULL;
	auth_rights_free(s->rights);
	s->rights = NULL;
	if (s->awaiting_auth) {
		s->awaiting_auth = false;
		session_unlink(&w->unauthed, s);
		atomic_fetch_sub_explicit(&lh_metrics.awaiting_auth, 1, memory_order_relaxed);
	}
	conn_uncount(w, s);
	if (!s->conn)
		return;
	/* At shutdown every connection goes: nobody is left to tell. */
	if (!w->closing)
		presence_on_close(w->pres, w->hub, s->conn);
	enum metrics_close why = close_reason_of(s);
	metrics_inc(&lh_metrics.conn_closed[why], 1);
	char cid[HUB_CONN_ID_MAX];
	log_info("event=disconnect client=%s reason=%s close_code=%d", hub_conn_id(s->conn, cid),
	         metrics_close_name(why), s->close_code);
	session_unlink(&w->sessions, s);
	if (w->cluster)
		cluster_conn_close(w->cluster, s->conn);
	hub_conn_close(w->hub, s->conn);
	s->conn = NULL;
	/* Read by the close frame, which has gone out by now. */
	if (s->reason_owned)
		free((char *)s->close_reason);
	s->close_reason = NULL;
	s->reason_owned = false;
}

/* Publishes what the gRPC threads handed over, oldest first, at most
 * WS_DRAIN_PUBS publications or WS_DRAIN_FRAMES queued frames per call, and
 * stops early when a send queue crosses half its bound (hub_publish_some),
 * so that a burst cannot starve the writers of one loop turn (and fill fast
 * readers' queues up to their bound before they had a chance to write).
 * What is left waits in w->backlog; drain() wakes the loop for itself and
 * goes on at the next turn. The hand-off is taken only when the backlog is
 * empty, so the hand-off's bound still holds the producers back: at most
 * twice its size is ever waiting. With all, it drains everything (shutdown). */
static void drain_some(struct ws *w, bool all)
{
	size_t pubs = 0;
	uint64_t delivered0 = hub_delivered(w->hub);
	bool pressed = false;
	/* While draining, producers skip the wake-up: what they push is taken
	 * here, or reported by handoff_drain_end. */
	handoff_drain_begin(w->q);
	while (all || (!pressed && pubs < WS_DRAIN_PUBS &&
	               hub_delivered(w->hub) - delivered0 < WS_DRAIN_FRAMES)) {
		if (!w->backlog)
			w->backlog = handoff_take(w->q);
		if (!w->backlog)
			break;
		/* In steps, so that the frame budget is looked at every few. */
		size_t step =
		        WS_DRAIN_PUBS - pubs < WS_DRAIN_STEP ? WS_DRAIN_PUBS - pubs : WS_DRAIN_STEP;
		pubs += hub_publish_some(w->hub, &w->backlog, all ? SIZE_MAX : step, !all,
		                         &pressed);
	}
	if (handoff_drain_end(w->q) || w->backlog)
		lws_cancel_service(w->ctx);
}

static void drain(struct ws *w)
{
	drain_some(w, false);
}

/* The hub's command runner: control calls are presence.c's, with the
 * presence settings in force now. */
static void run_command(void *arg, struct publication *p)
{
	struct ws *w = arg;
	presence_command(w->pres, w->hub, p);
}

/* Applies a pending SIGHUP reload: new handshakes verify with the new
 * auth, the hub takes the new limits; open connections stay. */
static void apply_reload(struct ws *w)
{
	struct reload *rl = atomic_exchange(&w->reload, NULL);
	if (!rl)
		return;
	auth_free(w->owned_auth);
	w->auth = w->owned_auth = rl->auth;
	forget_verified(w);
	hub_set_limits(w->hub, &rl->lim);
	if (w->broker) {
		broker_set_limits(w->broker, &rl->lim.hist, rl->lim.idem_window_s);
		cluster_set_limits(w->cluster, &rl->lim.hist);
	}
	free(rl);
	log_info("event=reload_applied");
}

/* Redis mode: a client event delivered here goes to the other nodes. */
static void relay_client_event(void *arg, const char *tenant, const char *name,
                               const struct frame *f)
{
	struct ws *w = arg;
	cluster_publish_raw(w->cluster, tenant, name, f);
}

/* Applies pending presence settings (ws_reload_presence). */
/* Redis mode: a Subscribe call's subscription, with Redis's position. */
static int subscribe_server(void *arg, struct hub_conn *c, const char *channel)
{
	struct ws *w = arg;
	return cluster_subscribe_server(w->cluster, c, channel);
}

static void apply_presence_reload(struct ws *w)
{
	struct presence *pr = atomic_exchange(&w->pres_reload, NULL);
	if (!pr)
		return;
	presence_free(w->pres);
	w->pres = pr;
	if (w->cluster) {
		cluster_set_presence(w->cluster, pr);
		presence_set_relay(pr, relay_client_event, w);
		presence_set_subscriber(pr, subscribe_server, w);
	}
	presence_set_cluster(pr, w->pcl);
}

/* Builds the edge limits from cfg (already validated by config_load).
 * Returns NULL when out of memory. */
static struct edge_cfg *edge_new(const struct lh_config *cfg, unsigned int fd_cap)
{
	struct edge_cfg *e = calloc(1, sizeof *e);
	if (!e)
		return NULL;
	const char *why;
	e->origins = origins_new(cfg->allowed_origins, &why);
	if (why) {
		free(e);
		return NULL;
	}
	uint32_t derived = fd_cap > 2 * WS_FD_RESERVE ? fd_cap - WS_FD_RESERVE : fd_cap / 2;
	e->max_conns = cfg->max_connections > 0 ? (uint32_t)cfg->max_connections : derived;
	e->per_ip = (uint32_t)cfg->max_conns_per_ip;
	e->per_user = (uint32_t)cfg->max_conns_per_user;
	e->per_tenant = (uint32_t)cfg->max_conns_per_tenant;
	e->rate = (struct rate_cfg){(uint32_t)cfg->rate_limit, (uint32_t)cfg->rate_burst,
	                            (uint32_t)cfg->rate_strikes};
	e->max_message = (uint32_t)cfg->max_message_size;
	e->json_depth = (uint32_t)cfg->max_json_depth;
	e->json_elems = (uint32_t)cfg->max_json_elements;
	return e;
}

static void edge_free(struct edge_cfg *e)
{
	if (!e)
		return;
	origins_free(e->origins);
	free(e);
}

/* Applies pending edge limits (SIGHUP): new handshakes and the next
 * message of every connection see them; open connections over a lowered
 * connection limit stay. */
static void apply_edge_reload(struct ws *w)
{
	struct edge_cfg *e = atomic_exchange(&w->edge_reload, NULL);
	if (!e)
		return;
	edge_free(w->edge);
	w->edge = e;
	log_info("event=reload_edge origins=%zu max_connections=%u per_ip=%u per_user=%u "
	         "per_tenant=%u rate_limit=%u rate_burst=%u",
	         origins_count(e->origins), e->max_conns, e->per_ip, e->per_user, e->per_tenant,
	         e->rate.per_min, e->rate.burst);
}

/* Hands metrics the tenants of every open connection, for GetStats' top
 * tenants. O(connections) every WS_SWEEP_US, off the delivery path. */
static void tenants_snapshot(struct ws *w)
{
	size_t n = 0, i = 0;
	for (struct session *s = w->sessions; s; s = s->next)
		n++;
	const char **t = malloc((n ? n : 1) * sizeof *t);
	if (!t)
		return;
	for (struct session *s = w->sessions; s; s = s->next)
		t[i++] = hub_conn_tenant(s->conn);
	metrics_tenants_snapshot(t, n);
	free(t);
}

static void on_sweep(lws_sorted_usec_list_t *sul)
{
	struct ws *w = lws_container_of(sul, struct ws, sul_sweep);
	hub_sweep(w->hub, wall_ms(), WS_SWEEP_IDLE_MS);
	tenants_snapshot(w);
	lws_sul_schedule(w->ctx, 0, &w->sul_sweep, on_sweep, WS_SWEEP_US);
}

static void on_deadline(lws_sorted_usec_list_t *sul)
{
	struct ws *w = lws_container_of(sul, struct ws, sul_deadline);
	w->deadline_passed = true;
}

static int on_event(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
	struct session *s = user;
	switch (reason) {
	case LWS_CALLBACK_HTTP: return on_http(ws_of(wsi), wsi, in);
	case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: return on_confirm_upgrade(ws_of(wsi), wsi, in);
	case LWS_CALLBACK_ESTABLISHED: return on_established(ws_of(wsi), wsi, s);
	case LWS_CALLBACK_RECEIVE: return on_receive(ws_of(wsi), s, in, len);
	case LWS_CALLBACK_SERVER_WRITEABLE: return on_writeable(ws_of(wsi), s);
	case LWS_CALLBACK_TIMER: return on_timer(ws_of(wsi), s);
	case LWS_CALLBACK_CLOSED: on_closed(ws_of(wsi), s); return 0;
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		/* lws answers the client's close at the next writable event and
		 * then closes; frames written before that would be thrown away. */
		if (s)
			s->closing = true;
		return 0;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED: {
		struct ws *w = ws_of(wsi);
		w->deferring = w->direct_writes;
		if (w->broker && broker_service_some(w->broker, WS_BROKER_EVENTS))
			lws_cancel_service(w->ctx); /* the rest at the next turn */
		apply_reload(w);
		apply_presence_reload(w);
		apply_edge_reload(w);
		drain(w);
		w->deferring = false;
		flush_writes(w);
		return 0;
	}
	default: return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}

/* ------------------------------------------------------------------------
 * Set-up, the loop, shutdown
 * ------------------------------------------------------------------------ */

/* lws' errors and warnings, as our log lines. */
static void on_lws_log(int level, const char *line)
{
	size_t n = strlen(line);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		n--;
	log_msg(level == LLL_ERR ? LOG_ERROR : LOG_WARN, "msg=\"lws: %.*s\"", (int)n, line);
}

/* Raises the soft fd limit to the hard one (one fd per client) and returns
 * the size for lws' fd table. */
static unsigned int fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 0;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur > WS_FD_MAX ? WS_FD_MAX : (unsigned int)rl.rlim_cur;
}

/* Sets iface for host: "0.0.0.0" is every IPv4 interface, "" or "::"
 * every interface (dual stack). lws' dual-stack socket ignores an IPv4
 * address given as iface and binds everything, so IPv4 hosts get an IPv4
 * socket. */
static void set_listen_host(struct lws_context_creation_info *info, const char *host)
{
	struct in_addr a4;
	info->iface = NULL;
	if (strcmp(host, "localhost") == 0)
		host = "127.0.0.1"; /* lws takes addresses and interface names, not host names */
	if (strcmp(host, "0.0.0.0") == 0) {
		info->options |= LWS_SERVER_OPTION_DISABLE_IPV6;
	} else if (host[0] && strcmp(host, "::") != 0) {
		info->iface = host;
		if (inet_pton(AF_INET, host, &a4) == 1)
			info->options |= LWS_SERVER_OPTION_DISABLE_IPV6;
	}
}

/* Creates the context and the vhost listening on cfg's host and port. */
static int start_lws(struct ws *w, const struct lh_config *cfg)
{
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_VALIDATE_UTF8;
	/* TLS (wss://, https://): lws initialises OpenSSL only when asked. */
	if (cfg->tls_cert[0])
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.user = w;
	info.fd_limit_per_thread = w->fd_cap;
	info.max_http_header_data = WS_HEADER_MAX;
	info.max_http_header_pool = WS_HEADER_POOL;
	if (w->uv) {
		/* Our own loop, so that lws installs no signal handlers (main's
		 * signal thread has them) and ws_run can run it one turn at a
		 * time, like lws_service(). */
		info.options |= LWS_SERVER_OPTION_LIBUV;
		w->foreign_loops[0] = w->uv;
		info.foreign_loops = w->foreign_loops;
	}
	w->ctx = lws_create_context(&info);
	if (!w->ctx) {
		log_error("msg=\"cannot create the lws context\"");
		return LH_EIO;
	}
	info.vhost_name = "livehub";
	info.port = cfg->ws_port;
	set_listen_host(&info, cfg->ws_host);
	info.protocols = w->protocols;
	info.retry_and_idle_policy = &w->retry;
	if (cfg->tls_cert[0]) {
		/* Every connection on the port is TLS; lws loads the chain and the
		 * key here and refuses the vhost when they do not match. */
		info.ssl_cert_filepath = cfg->tls_cert;
		info.ssl_private_key_filepath = cfg->tls_key;
	}
	w->vh = lws_create_vhost(w->ctx, &info);
	if (!w->vh) {
		log_error("msg=\"cannot listen for WebSocket clients%s\" host=%s port=%d",
		          cfg->tls_cert[0] ? " (or the TLS certificate or key is unusable)" : "",
		          cfg->ws_host, cfg->ws_port);
		return LH_EIO;
	}
	/* lws keeps a vhost whose interface does not exist (yet), without a
	 * listening socket: that is a configuration error here. */
	w->port = lws_get_vhost_listen_port(w->vh);
	if (w->port <= 0) {
		log_error(
		        "msg=\"cannot listen for WebSocket clients: no such address\" host=%s port=%d",
		        cfg->ws_host, cfg->ws_port);
		return LH_EIO;
	}
	return 0;
}

/* Sets up the event loop cfg names: "poll" is lws' own poll() loop, whose
 * every turn costs O(connections); "libuv" is a libuv loop (epoll) owned by
 * w, whose turns cost O(active connections). Returns 0 or LH_EINVAL. */
static int open_loop(struct ws *w, const char *name)
{
	if (strcmp(name, "poll") == 0)
		return 0;
	if (strcmp(name, "libuv") != 0) {
		log_error("msg=\"unknown event loop\" event_loop=%s (poll or libuv)", name);
		return LH_EINVAL;
	}
	w->uv = malloc(sizeof(*w->uv));
	if (!w->uv || uv_loop_init(w->uv) != 0) {
		free(w->uv);
		w->uv = NULL;
		log_error("msg=\"cannot start the libuv loop\"");
		return LH_EIO;
	}
	return 0;
}

/* Destroys the lws context (closing every connection) and then our libuv
 * loop, if any: lws closes its libuv handles asynchronously, so the loop
 * runs until they are all gone before it is closed and freed. */
static void destroy_lws(struct ws *w)
{
	struct lws_context *ctx = w->ctx;
	w->ctx = NULL;
	if (ctx)
		lws_context_destroy(ctx);
	if (!w->uv)
		return;
	/* With a foreign loop lws finishes in two steps: the first destroy
	 * starts closing its handles, the loop completes the closes, and a
	 * second destroy frees the context. */
	uv_run(w->uv, UV_RUN_DEFAULT);
	lws_context_destroy(ctx);
	uv_run(w->uv, UV_RUN_DEFAULT);
	if (uv_loop_close(w->uv) != 0)
		log_warn("msg=\"libuv loop closed with handles left\"");
	free(w->uv);
	w->uv = NULL;
}

/* Whether host only listens on the loopback interface. */
static bool is_loopback(const char *host)
{
	return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
	       strcmp(host, "::1") == 0;
}

/* Redis readiness: /readyz and gRPC health follow Redis. */
static void on_redis_state(void *arg, bool up)
{
	atomic_store(&lh_metrics.redis_down, !up);
}

/* ------------------------------------------------------------------------
 * Presence across nodes (Redis mode)
 * ------------------------------------------------------------------------ */

#define WS_CLUSTER_TICK_US (PCL_TICK_MS * LWS_US_PER_MS)

static void each_session(void *arg, void (*fn)(struct hub_conn *c, void *fnarg), void *fnarg)
{
	struct ws *w = arg;
	for (struct session *s = w->sessions; s; s = s->next)
		fn(s->conn, fnarg);
}

static void on_cluster_tick(lws_sorted_usec_list_t *sul)
{
	struct ws *w = lws_container_of(sul, struct ws, sul_cluster);
	pcluster_tick(w->pcl, mono_ms());
	lws_sul_schedule(w->ctx, 0, &w->sul_cluster, on_cluster_tick, WS_CLUSTER_TICK_US);
}

/* Redis mode with LIVEHUB_PRESENCE_TTL > 0: presence, join/leave and the
 * control commands span the nodes (presence_cluster.h). Returns 0 or
 * LH_ENOMEM. */
static int start_presence_cluster(struct ws *w, const struct lh_config *cfg)
{
	if (cfg->presence_ttl <= 0)
		return 0;
	struct pcluster_env env = {w->hub, &w->pres, each_session, w};
	w->pcl = pcluster_new(w->broker, cfg->redis_prefix, cfg->presence_ttl, &env);
	if (!w->pcl) {
		log_error("msg=\"out of memory setting up presence across nodes\"");
		return LH_ENOMEM;
	}
	presence_set_cluster(w->pres, w->pcl);
	lws_sul_schedule(w->ctx, 0, &w->sul_cluster, on_cluster_tick, WS_CLUSTER_TICK_US);
	return 0;
}

/* Redis mode: the broker thread and the cluster glue. Returns 0 or -1. */
static int start_broker(struct ws *w, const struct lh_config *cfg, const struct hub_limits *lim)
{
	struct broker_config bc = {
	        .url = cfg->redis_url,
	        .prefix = cfg->redis_prefix,
	        .node_id = cfg->node_id,
	        .hist = &lim->hist,
	        .idem_window_s = lim->idem_window_s,
	        .max_publishes = (uint32_t)cfg->handoff_max,
	        .backoff_min_ms = 100,
	        .backoff_max_ms = 2000,
	};
	atomic_store(&lh_metrics.redis_down, true);
	w->broker = broker_new(&bc);
	if (!w->broker)
		return -1;
	w->cluster = cluster_new(w->hub, w->broker, &lim->hist);
	if (!w->cluster || broker_on_state(w->broker, on_redis_state, w))
		return -1;
	cluster_set_presence(w->cluster, w->pres);
	presence_set_relay(w->pres, relay_client_event, w);
	presence_set_subscriber(w->pres, subscribe_server, w);
	if (start_presence_cluster(w, cfg))
		return -1;
	if (broker_start(w->broker, ws_wake, w)) {
		log_error("msg=\"cannot start the Redis broker thread\"");
		return -1;
	}
	/* Most starts find Redis at once: then the node is ready when it says
	 * so. Without it, the node starts anyway (not ready) and keeps trying. */
	bool up = broker_wait_first(w->broker, 2000);
	atomic_store(&lh_metrics.redis_down, !up); /* E_STATE may say so again: same value */
	log_info("event=redis_mode node=%s prefix=%s redis_up=%d", broker_node_id(w->broker),
	         cfg->redis_prefix, up);
	return 0;
}

struct ws *ws_new(const struct lh_config *cfg, struct auth *auth, struct handoff *q)
{
	struct ws *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->auth = auth;
	w->q = q;
	w->ping_interval_s = cfg->ping_interval_s;
	w->demo = cfg->demo != 0;
	w->ping_timeout_s = cfg->ping_timeout_s;
	w->auth_timeout_s = cfg->auth_timeout_s;
	w->retry.secs_since_valid_ping = (uint16_t)cfg->ping_interval_s;
	w->retry.secs_since_valid_hangup = (uint16_t)cfg->ping_timeout_s;
	w->protocols[0] = (struct lws_protocols){
	        .name = WS_PROTOCOL_NAME,
	        .callback = on_event,
	        .per_session_data_size = sizeof(struct session),
	        .rx_buffer_size = (size_t)(cfg->rx_buffer_size > 0 ? cfg->rx_buffer_size : 128),
	        /* Without it lws cuts every send() to rx_buffer_size bytes and
	         * sends the rest from a copy, one piece per writable event. */
	        .tx_packet_size = WS_TX_PACKET,
	};
	struct hub_limits lim;
	if (config_hub_limits(cfg, &lim))
		goto fail;
	struct hub_transport tr = {tr_want_write, tr_kill};
	w->hub = hub_new(&lim, &tr);
	if (!w->hub)
		goto fail;
	w->fd_cap = fd_limit();
	w->edge = edge_new(cfg, w->fd_cap);
	w->ips = ipcount_new((uint64_t)(uintptr_t)w ^ (uint64_t)wall_ms());
	if (!w->edge || !w->ips) {
		log_error("msg=\"out of memory setting up the edge limits\"");
		goto fail;
	}
	w->pres = ws_presence_new(cfg);
	if (!w->pres)
		goto fail;
	hub_set_command_runner(w->hub, run_command, w);
	w->batch_cap = cfg->write_batch > 0 ? (size_t)cfg->write_batch : 0;
	w->direct_writes = cfg->direct_writes != 0;
	if (w->batch_cap && !(w->batch = malloc(LWS_PRE + w->batch_cap)))
		goto fail;
	lws_set_log_level(LLL_ERR | LLL_WARN, on_lws_log);
	if (open_loop(w, cfg->event_loop) || start_lws(w, cfg))
		goto fail;
	handoff_set_wake(q, ws_wake, w);
	if (cfg->redis_url[0] && start_broker(w, cfg, &lim))
		goto fail;
	lws_sul_schedule(w->ctx, 0, &w->sul_sweep, on_sweep, WS_SWEEP_US);
	log_info("msg=\"websocket listening\" host=%s port=%d", cfg->ws_host, w->port);
	if (!w->edge->origins && !is_loopback(cfg->ws_host))
		log_warn("msg=\"no allowed origins set: pages of any site may open WebSocket "
		         "connections with their visitors' tokens; set LIVEHUB_ALLOWED_ORIGINS\" "
		         "host=%s",
		         cfg->ws_host);
	return w;
fail:
	lws_sul_cancel(&w->sul_cluster);
	broker_stop(w->broker);
	destroy_lws(w);
	pcluster_free(w->pcl);
	cluster_free(w->cluster);
	broker_free(w->broker);
	hub_free(w->hub);
	edge_free(w->edge);
	ipcount_free(w->ips);
	presence_free(w->pres);
	free(w->flush);
	free(w->batch);
	free(w);
	return NULL;
}

struct broker *ws_broker(struct ws *w)
{
	return w->broker;
}

int ws_port(const struct ws *w)
{
	return w->port;
}

struct hub *ws_hub(struct ws *w)
{
	return w->hub;
}

/* Stops taking clients and asks every connection to close with 1001 after
 * its queued frames; the loop then runs until they are gone or the
 * shutdown timeout passes. */
static void begin_shutdown(struct ws *w)
{
	w->closing = true;
	/* The connections go without presence_on_close: take this node's
	 * presence out of the cluster at once rather than at expiry. */
	if (w->pcl)
		pcluster_leave_all(w->pcl);
	for (struct session *s = w->sessions; s; s = s->next)
		close_later(s, WS_CLOSE_SHUTDOWN, "server shutting down");
	for (struct session *s = w->unauthed; s; s = s->next)
		close_later(s, WS_CLOSE_SHUTDOWN, "server shutting down");
	lws_sul_schedule(w->ctx, 0, &w->sul_deadline, on_deadline,
	                 (lws_usec_t)atomic_load(&w->grace_ms) * 1000);
}

/* One turn of the event loop: waits for events (a cancel, a timer, a
 * socket) and services them. Returns 0 or -1. */
static int service_once(struct ws *w)
{
	if (w->uv) {
		uv_run(w->uv, UV_RUN_ONCE);
		return 0;
	}
	return lws_service(w->ctx, 0) < 0 ? -1 : 0;
}

int ws_run(struct ws *w)
{
	int rc = 0;
	while (!atomic_load(&w->stop)) {
		if (service_once(w) < 0) {
			log_error("msg=\"lws service loop failed\"");
			rc = -1;
			break;
		}
		/* Presence changes go in batches: every PCL_TICK_MS
		 * (on_cluster_tick), or here as soon as one is full. */
		if (w->pcl && pcluster_queued(w->pcl) >= PCL_BATCH_OPS)
			pcluster_flush(w->pcl);
	}
	drain_some(w, true);
	begin_shutdown(w);
	/* Also until Redis has this node's presence removal (leaves included). */
	while ((w->sessions || w->unauthed || (w->pcl && pcluster_busy(w->pcl))) &&
	       !w->deadline_passed) {
		if (service_once(w) < 0)
			break;
	}
	if (w->sessions || w->unauthed)
		log_warn("msg=\"shutdown timeout: closing remaining clients\"");
	drain_some(w, true);
	return rc;
}

void ws_stop(struct ws *w, int grace_ms)
{
	atomic_store(&w->grace_ms, grace_ms);
	atomic_store(&w->stop, true);
	if (w->ctx)
		lws_cancel_service(w->ctx);
}

void ws_reload(struct ws *w, struct auth *auth, const struct hub_limits *lim)
{
	struct reload *rl = malloc(sizeof *rl);
	if (!rl) {
		auth_free(auth);
		return;
	}
	rl->auth = auth;
	rl->lim = *lim;
	/* A reload not yet applied is replaced, and freed by whoever takes it
	 * out: here or the service thread. */
	struct reload *old = atomic_exchange(&w->reload, rl);
	if (old) {
		auth_free(old->auth);
		free(old);
	}
	lws_cancel_service(w->ctx);
}

struct presence *ws_presence_new(const struct lh_config *cfg)
{
	struct presence_config pc = {cfg->presence_channels, cfg->client_events,
	                             cfg->client_event_rate, cfg->client_event_burst,
	                             cfg->tenant_presence != 0};
	return presence_new(&pc);
}

void ws_reload_presence(struct ws *w, struct presence *pr)
{
	presence_free(atomic_exchange(&w->pres_reload, pr));
	lws_cancel_service(w->ctx);
}

void ws_wake(void *arg)
{
	struct ws *w = arg;
	if (w->ctx)
		lws_cancel_service(w->ctx);
}

void ws_free(struct ws *w)
{
	if (!w)
		return;
	handoff_set_wake(w->q, NULL, NULL);
	lws_sul_cancel(&w->sul_sweep);
	lws_sul_cancel(&w->sul_deadline);
	/* The broker's last callbacks (failed replies) may still queue frames
	 * on open connections: before they close. */
	lws_sul_cancel(&w->sul_cluster);
	broker_stop(w->broker);
	/* Destroying the context closes what is left: CLOSED closes their hub
	 * connections, so the hub is empty before it is freed. */
	destroy_lws(w);
	pcluster_free(w->pcl);
	cluster_free(w->cluster);
	broker_free(w->broker);
	hub_free(w->hub);
	presence_free(w->pres);
	presence_free(atomic_exchange(&w->pres_reload, NULL));
	struct reload *rl = atomic_exchange(&w->reload, NULL);
	if (rl) {
		auth_free(rl->auth);
		free(rl);
	}
	auth_free(w->owned_auth);
	forget_verified(w);
	edge_free(atomic_exchange(&w->edge_reload, NULL));
	edge_free(w->edge);
	ipcount_free(w->ips);
	free(w->flush);
	free(w->batch);
	free(w);
}

void ws_reload_edge(struct ws *w, const struct lh_config *cfg)
{
	struct edge_cfg *e = edge_new(cfg, w->fd_cap);
	if (!e) {
		log_error("event=reload_failed msg=\"out of memory building the edge limits\"");
		return;
	}
	edge_free(atomic_exchange(&w->edge_reload, e));
	lws_cancel_service(w->ctx);
}
