/*
 * ws: the WebSocket and HTTP front on libwebsockets. See ws.h.
 *
 * One lws context, one vhost, one protocol that serves both the plain HTTP
 * requests (/healthz, 404s) and the /ws WebSocket connections. Everything
 * here runs on the service thread except ws_stop() and ws_wake(), which only
 * touch an atomic flag and call lws_cancel_service().
 *
 * A connection's life: CONFIRM_UPGRADE checks the path and the token (HTTP
 * 401/404 before the upgrade); ESTABLISHED verifies the token again (lws
 * drops the per-session struct when it re-binds the connection to the ws
 * protocol), opens the hub connection and queues `connected`; RECEIVE parses
 * client messages and queues replies through the hub so they stay in order
 * with events; SERVER_WRITEABLE writes one queued frame per callback; CLOSED
 * closes the hub connection.
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

#include "livehub.h"
#include "log.h"
#include "publication.h"
#include "ws_protocol.h"

_Static_assert(LWS_PRE <= LH_FRAME_HEADROOM, "frames must have room for the lws frame header");

#define WS_PROTOCOL_NAME  "livehub"
#define WS_MSG_MAX        (64 * 1024)          /* largest client message */
#define WS_HEADER_MAX     8192                 /* request headers, so a long JWT fits */
#define WS_HEADER_POOL    64                   /* handshakes parsed at the same time */
#define WS_FD_MAX         65536                /* cap on lws' fd table */
#define WS_SWEEP_US       (5 * LWS_US_PER_SEC) /* how often idle channels are swept */
#define WS_SWEEP_IDLE_MS  60000                /* how long an unused channel lives on */
#define WS_CLOSE_SHUTDOWN 1001

/* A client message that spans several RECEIVE callbacks. */
struct rxbuf {
	size_t len;
	size_t cap;
	char data[];
};

/* Per WebSocket connection, allocated by lws (per_session_data_size) and
 * zeroed; valid from ESTABLISHED to CLOSED. Kept small: idle connections
 * are the bulk of the memory. */
struct session {
	struct lws *wsi;
	struct hub_conn *conn;       /* NULL until ESTABLISHED succeeded */
	struct rxbuf *rx;            /* only while a message spans fragments */
	struct session *prev, *next; /* ws->sessions */
	const char *close_reason;    /* static text, with close_code */
	int close_code;              /* nonzero: close at the next write */
};

struct ws {
	struct lws_context *ctx;
	struct lws_vhost *vh;
	struct hub *hub;   /* owned */
	struct auth *auth; /* borrowed */
	struct handoff *q; /* borrowed */
	int port;
	int ping_interval_s, ping_timeout_s, shutdown_timeout_s;
	lws_retry_bo_t retry;              /* lws keeps a pointer */
	struct lws_protocols protocols[2]; /* lws keeps a pointer */
	lws_sorted_usec_list_t sul_sweep;
	lws_sorted_usec_list_t sul_deadline;
	struct session *sessions;   /* live WebSocket connections */
	bool closing;               /* shutdown has begun: no new clients */
	bool deadline_passed;       /* shutdown_timeout_s is over */
	_Atomic bool stop;          /* any thread: ws_stop() was called */
	char tokbuf[WS_HEADER_MAX]; /* scratch for the token, service thread */
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

static struct ws *ws_of(struct lws *wsi)
{
	return lws_context_user(lws_get_context(wsi));
}

/* Sets the close frame's code and reason and returns -1, which makes lws
 * send it and close the connection. */
static int close_now(struct lws *wsi, int code, const char *reason)
{
	lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)reason, strlen(reason));
	return -1;
}

/* Marks s to be closed with code/reason (a static string) at its next
 * write, and asks for that write. */
static void close_later(struct session *s, int code, const char *reason)
{
	if (!s->close_code) {
		s->close_code = code;
		s->close_reason = reason;
	}
	lws_callback_on_writable(s->wsi);
}

static const char *status_text(unsigned int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 503: return "Service Unavailable";
	default: return "Error";
	}
}

/* Writes a complete plain-text response, status line, headers and body in
 * one write, as lws does for its own status pages. The status line is
 * written here rather than by lws_add_http_header_status(), which answers
 * a refused upgrade as HTTP/1.0 (some clients reject that). Returns 0 or
 * -1. */
static int http_reply(struct lws *wsi, unsigned int status, const char *body)
{
	char buf[LWS_PRE + 512];
	char *start = buf + LWS_PRE;
	size_t room = sizeof(buf) - LWS_PRE;
	int n = snprintf(start, room,
	                 "HTTP/1.1 %u %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
	                 "content-length: %zu\r\ncache-control: no-store\r\n\r\n%s",
	                 status, status_text(status), strlen(body), body);
	if (n < 0 || (size_t)n >= room)
		return -1;
	return lws_write(wsi, (unsigned char *)start, (size_t)n, LWS_WRITE_HTTP) == n ? 0 : -1;
}

/* ------------------------------------------------------------------------
 * Hub transport: called by the hub on the service thread.
 * ------------------------------------------------------------------------ */

static void tr_want_write(void *tctx)
{
	struct session *s = tctx;
	lws_callback_on_writable(s->wsi);
}

/* The hub gave up on the connection (send queue overflow): it is closed
 * from SERVER_WRITEABLE, the only place lws lets us close a ws connection
 * that is not in a callback of its own. */
static void tr_kill(void *tctx, int close_code, const char *reason)
{
	close_later(tctx, close_code, reason);
}

/* ------------------------------------------------------------------------
 * HTTP and the handshake
 * ------------------------------------------------------------------------ */

static int on_http(struct ws *w, struct lws *wsi, const char *uri)
{
	int rc;
	if (strcmp(uri, "/healthz") == 0)
		rc = w->closing ? http_reply(wsi, 503, "shutting down\n")
		                : http_reply(wsi, 200, "ok\n");
	else
		rc = http_reply(wsi, 404, "not found\n");
	if (rc || lws_http_transaction_completed(wsi))
		return -1;
	return 0;
}

/* Finds the client's token: ?token= on the URL, else "Authorization:
 * Bearer". Returns a pointer into w->tokbuf, or NULL. */
static const char *find_token(struct ws *w, struct lws *wsi)
{
	const char *t = lws_get_urlarg_by_name(wsi, "token=", w->tokbuf, (int)sizeof(w->tokbuf));
	if (t && *t)
		return t;
	int n = lws_hdr_copy(wsi, w->tokbuf, (int)sizeof(w->tokbuf), WSI_TOKEN_HTTP_AUTHORIZATION);
	if (n <= 7 || strncasecmp(w->tokbuf, "Bearer ", 7) != 0)
		return NULL;
	t = w->tokbuf + 7;
	while (*t == ' ')
		t++;
	return *t ? t : NULL;
}

/* Verifies the request's token. Returns 0 with *id filled, or LH_EAUTH /
 * LH_EEXPIRED with *why set to a client-safe reason. */
static int verify(struct ws *w, struct lws *wsi, struct auth_identity *id, const char **why)
{
	const char *token = find_token(w, wsi);
	if (!token) {
		*why = "no token";
		return LH_EAUTH;
	}
	int rc = auth_verify(w->auth, token, id, why);
	memset(w->tokbuf, 0, sizeof(w->tokbuf));
	return rc;
}

/* Before the upgrade: only /ws, only with a valid token. A non-zero return
 * after writing a response refuses the upgrade with that response. */
static int on_confirm_upgrade(struct ws *w, struct lws *wsi, const char *proto)
{
	char path[256];
	if (!proto || strcmp(proto, "websocket") != 0) {
		http_reply(wsi, 400, "only WebSocket upgrades are supported\n");
		return 1;
	}
	int n = lws_hdr_copy(wsi, path, (int)sizeof(path), WSI_TOKEN_GET_URI);
	if (n <= 0 || strcmp(path, "/ws") != 0) {
		http_reply(wsi, 404, "not found\n");
		return 1;
	}
	if (w->closing) {
		http_reply(wsi, 503, "shutting down\n");
		return 1;
	}
	struct auth_identity id;
	const char *why = "invalid token";
	int rc = verify(w, wsi, &id, &why);
	if (rc) {
		char body[160];
		snprintf(body, sizeof(body), "%s: %s\n",
		         rc == LH_EEXPIRED ? "TOKEN_EXPIRED" : "AUTH_FAILED", why);
		http_reply(wsi, 401, body);
		log_debug("msg=\"handshake refused\" code=%s reason=\"%s\"",
		          rc == LH_EEXPIRED ? "TOKEN_EXPIRED" : "AUTH_FAILED", why);
		return 1;
	}
	return 0;
}

static void session_link(struct ws *w, struct session *s)
{
	s->prev = NULL;
	s->next = w->sessions;
	if (w->sessions)
		w->sessions->prev = s;
	w->sessions = s;
}

static void session_unlink(struct ws *w, struct session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else if (w->sessions == s)
		w->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
}

/* The connection is a WebSocket now. Its identity is derived again from
 * the token (still readable in the headers) because lws dropped whatever
 * CONFIRM_UPGRADE stored. */
static int on_established(struct ws *w, struct lws *wsi, struct session *s)
{
	struct auth_identity id;
	const char *why = "invalid token";
	s->wsi = wsi;
	if (w->closing)
		return close_now(wsi, WS_CLOSE_SHUTDOWN, "server shutting down");
	int rc = verify(w, wsi, &id, &why);
	if (rc)
		return close_now(wsi, 1008, rc == LH_EEXPIRED ? "TOKEN_EXPIRED" : "AUTH_FAILED");
	s->conn = hub_conn_open(w->hub, id.tenant, id.user, s);
	if (!s->conn)
		return close_now(wsi, 1011, "SERVER_ERROR");
	session_link(w, s);
	log_debug("msg=\"client connected\" client=%s tenant=%s user=%s", hub_conn_id(s->conn),
	          id.tenant, id.user);
	/* From here on CLOSED must follow, so failures close from the writer. */
	struct frame *f = wsp_connected(hub_conn_id(s->conn), id.tenant, id.user,
	                                w->ping_interval_s, w->ping_timeout_s);
	if (!f) {
		close_later(s, 1011, "SERVER_ERROR");
		return 0;
	}
	hub_conn_send(w->hub, s->conn, f);
	frame_unref(f);
	return 0;
}

/* ------------------------------------------------------------------------
 * Client messages
 * ------------------------------------------------------------------------ */

static struct frame *do_subscribe(struct ws *w, struct session *s, const struct wsp_request *req)
{
	int rc = hub_subscribe(w->hub, s->conn, req->channel);
	switch (rc) {
	case 0:
	case LH_EEXIST: return wsp_subscribed(req);
	case LH_ELIMIT:
		return wsp_error(WSP_LIMIT_EXCEEDED,
		                 "the connection is on the maximum number of channels", true, req);
	case LH_EINVAL: return wsp_error(WSP_BAD_REQUEST, "invalid \"channel\"", true, req);
	default: return wsp_error(WSP_SERVER_ERROR, "out of memory", true, req);
	}
}

/* Handles one complete client message: parse, act, queue the reply. */
static void on_message(struct ws *w, struct session *s, const char *buf, size_t len)
{
	struct wsp_request req;
	struct wsp_error err;
	struct frame *f;
	hub_count_received(w->hub);
	if (wsp_parse(buf, len, &req, &err)) {
		f = wsp_error(err.code, err.message, true, &req);
	} else if (req.type == WSP_SUBSCRIBE) {
		f = do_subscribe(w, s, &req);
	} else if (req.type == WSP_UNSUBSCRIBE) {
		/* LH_ENOENT is fine: unsubscribing is idempotent. */
		hub_unsubscribe(w->hub, s->conn, req.channel);
		f = wsp_unsubscribed(&req);
	} else {
		f = wsp_reply(&req);
	}
	if (!f) {
		close_later(s, 1011, "SERVER_ERROR");
		return;
	}
	hub_conn_send(w->hub, s->conn, f);
	frame_unref(f);
}

/* Appends a fragment to s->rx. Returns 0, LH_ELIMIT past WS_MSG_MAX or
 * LH_ENOMEM. */
static int rx_append(struct session *s, const void *in, size_t len)
{
	struct rxbuf *rx = s->rx;
	size_t have = rx ? rx->len : 0;
	if (len > WS_MSG_MAX - have)
		return LH_ELIMIT;
	if (!rx || rx->cap - rx->len < len) {
		size_t cap = rx ? rx->cap * 2 : 1024;
		while (cap < have + len)
			cap *= 2;
		if (cap > WS_MSG_MAX)
			cap = WS_MSG_MAX;
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
	if (!s->conn)
		return -1;
	if (lws_frame_is_binary(wsi))
		return close_now(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
		                 "binary frames are not accepted");
	if (s->close_code)
		return 0; /* closing: nothing more is answered */
	bool final = lws_is_final_fragment(wsi);
	if (final && !s->rx) {
		on_message(w, s, in, len);
		return 0;
	}
	int rc = rx_append(s, in, len);
	if (rc == LH_ELIMIT)
		return close_now(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "message over 64 KiB");
	if (rc)
		return close_now(wsi, 1011, "SERVER_ERROR");
	if (final) {
		on_message(w, s, s->rx->data, s->rx->len);
		free(s->rx);
		s->rx = NULL;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * Writing and closing
 * ------------------------------------------------------------------------ */

/* Writes the oldest queued frame: one lws_write per callback. A pending
 * close goes first, except at shutdown, when queued frames are sent
 * before the 1001. */
static int on_writeable(struct ws *w, struct session *s)
{
	if (!s->conn)
		return 0;
	size_t queued = hub_conn_queued(s->conn);
	if (s->close_code && !(s->close_code == WS_CLOSE_SHUTDOWN && queued > 0))
		return close_now(s->wsi, s->close_code, s->close_reason);
	struct frame *f = hub_conn_peek(s->conn);
	if (!f)
		return 0;
	/* lws writes the frame header into the headroom before the payload;
	 * server frames are unmasked, so the shared payload is not changed. */
	if (lws_write(s->wsi, frame_payload(f), f->len, LWS_WRITE_TEXT) < 0)
		return -1;
	hub_conn_pop(s->conn);
	if (queued > 1 || s->close_code)
		lws_callback_on_writable(s->wsi);
	return 0;
}

static void on_closed(struct ws *w, struct session *s)
{
	free(s->rx);
	s->rx = NULL;
	if (!s->conn)
		return;
	log_debug("msg=\"client disconnected\" client=%s", hub_conn_id(s->conn));
	session_unlink(w, s);
	hub_conn_close(w->hub, s->conn);
	s->conn = NULL;
}

/* Publishes everything the gRPC threads handed over, oldest first. */
static void drain(struct ws *w)
{
	struct publication *p = handoff_take(w->q);
	while (p) {
		/* on_done may hand p back to its publisher: read next first. */
		struct publication *next = p->next;
		hub_publish(w->hub, p);
		p = next;
	}
}

static void on_sweep(lws_sorted_usec_list_t *sul)
{
	struct ws *w = lws_container_of(sul, struct ws, sul_sweep);
	hub_sweep(w->hub, wall_ms(), WS_SWEEP_IDLE_MS);
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
	case LWS_CALLBACK_CLOSED: on_closed(ws_of(wsi), s); return 0;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED: drain(ws_of(wsi)); return 0;
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
	info.user = w;
	info.fd_limit_per_thread = fd_limit();
	info.max_http_header_data = WS_HEADER_MAX;
	info.max_http_header_pool = WS_HEADER_POOL;
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
	w->vh = lws_create_vhost(w->ctx, &info);
	if (!w->vh) {
		log_error("msg=\"cannot listen for WebSocket clients\" host=%s port=%d",
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

struct ws *ws_new(const struct lh_config *cfg, struct auth *auth, struct handoff *q)
{
	struct ws *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->auth = auth;
	w->q = q;
	w->ping_interval_s = cfg->ping_interval_s;
	w->ping_timeout_s = cfg->ping_timeout_s;
	w->shutdown_timeout_s = cfg->shutdown_timeout_s;
	w->retry.secs_since_valid_ping = (uint16_t)cfg->ping_interval_s;
	w->retry.secs_since_valid_hangup = (uint16_t)cfg->ping_timeout_s;
	w->protocols[0] = (struct lws_protocols){
	        .name = WS_PROTOCOL_NAME,
	        .callback = on_event,
	        .per_session_data_size = sizeof(struct session),
	        .rx_buffer_size = (size_t)(cfg->rx_buffer_size > 0 ? cfg->rx_buffer_size : 512),
	};
	struct hub_limits lim = {(uint32_t)cfg->max_subs_per_conn, (uint32_t)cfg->sendq_max_frames};
	struct hub_transport tr = {tr_want_write, tr_kill};
	w->hub = hub_new(&lim, &tr);
	if (!w->hub)
		goto fail;
	lws_set_log_level(LLL_ERR | LLL_WARN, on_lws_log);
	if (start_lws(w, cfg))
		goto fail;
	handoff_set_wake(q, ws_wake, w);
	lws_sul_schedule(w->ctx, 0, &w->sul_sweep, on_sweep, WS_SWEEP_US);
	log_info("msg=\"websocket listening\" host=%s port=%d", cfg->ws_host, w->port);
	return w;
fail:
	if (w->ctx)
		lws_context_destroy(w->ctx);
	hub_free(w->hub);
	free(w);
	return NULL;
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
	for (struct session *s = w->sessions; s; s = s->next)
		close_later(s, WS_CLOSE_SHUTDOWN, "server shutting down");
	lws_sul_schedule(w->ctx, 0, &w->sul_deadline, on_deadline,
	                 (lws_usec_t)w->shutdown_timeout_s * LWS_US_PER_SEC);
}

int ws_run(struct ws *w)
{
	int rc = 0;
	while (!atomic_load(&w->stop)) {
		if (lws_service(w->ctx, 0) < 0) {
			log_error("msg=\"lws service loop failed\"");
			rc = -1;
			break;
		}
	}
	drain(w);
	begin_shutdown(w);
	while (w->sessions && !w->deadline_passed) {
		if (lws_service(w->ctx, 0) < 0)
			break;
	}
	if (w->sessions)
		log_warn("msg=\"shutdown timeout: closing remaining clients\"");
	drain(w);
	return rc;
}

void ws_stop(struct ws *w)
{
	atomic_store(&w->stop, true);
	if (w->ctx)
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
	/* Destroying the context closes what is left: CLOSED closes their hub
	 * connections, so the hub is empty before it is freed. */
	lws_context_destroy(w->ctx);
	hub_free(w->hub);
	free(w);
}
