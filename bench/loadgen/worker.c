/*
 * worker: one process, one epoll loop, a share of the WebSocket (or
 * Engine.IO/Socket.IO over WebSocket) connections. Each connection checks
 * what it receives: per-channel offsets (gaps, duplicates, reordering), the
 * tenant marker in the payload, the channel name; and records publish ->
 * deliver latency from the CLOCK_MONOTONIC stamp in the payload.
 */
#define _GNU_SOURCE
#include "lg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum cstate {
	CS_IDLE,
	CS_CONNECTING,
	CS_HTTP,
	CS_EIO_OPEN,
	CS_SIO_CONNECT,
	CS_WAIT_CONNECTED,
	CS_WAIT_SUBSCRIBED,
	CS_READY,
	CS_DONE,
	CS_FAILED
};

struct conn {
	int fd;
	int g; /* global connection index */
	uint8_t hub; /* index in o->ws_host: g % o->nws */
	uint8_t state;
	uint8_t tries;
	bool have_off;
	char epoch[24];
	int64_t last_off;
	uint64_t received;
	uint64_t t_start; /* churn: when this cycle began */
	char *rb;         /* unconsumed input */
	uint32_t rlen, rcap;
	char *msg; /* a fragmented message being assembled */
	uint32_t mlen, mcap;
	char *wq; /* output the socket did not take yet */
	uint32_t wlen, wcap;
	char tenant[32];
};

struct worker {
	const struct lg_opts *o;
	int epfd;
	int first, count;
	struct conn *c;
	int next_open; /* setup: next connection to open */
	int opening;   /* handshakes in flight */
	int settled;   /* setup: connections ready or given up */
	bool churning;
	uint64_t churn_end;
	uint32_t rnd;
	struct sockaddr_in dst[LG_MAX_HUBS];
	struct wstats st;
	double cpu_at_ready; /* own CPU seconds when setup ended (not churn) */
	char scratch[256 * 1024];
};

static uint32_t xrand(struct worker *w)
{
	w->rnd ^= w->rnd << 13;
	w->rnd ^= w->rnd >> 17;
	w->rnd ^= w->rnd << 5;
	return w->rnd;
}

static int grow(char **buf, uint32_t *cap, uint32_t need)
{
	if (need <= *cap)
		return 0;
	uint32_t n = *cap ? *cap : 1024;
	while (n < need)
		n *= 2;
	char *p = realloc(*buf, n);
	if (!p)
		return -1;
	*buf = p;
	*cap = n;
	return 0;
}

static void set_events(struct worker *w, struct conn *c, uint32_t ev)
{
	struct epoll_event e = {.events = ev, .data.u64 = (uint64_t)(c - w->c)};
	epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &e);
}

/* Writes what the socket takes now and queues the rest behind EPOLLOUT. */
static int conn_write(struct worker *w, struct conn *c, const char *p, size_t n)
{
	if (!c->wlen) {
		ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
		if (k < 0 && errno != EAGAIN)
			return -1;
		if (k < 0)
			k = 0;
		p += k;
		n -= (size_t)k;
		if (!n)
			return 0;
	}
	if (grow(&c->wq, &c->wcap, c->wlen + (uint32_t)n))
		return -1;
	memcpy(c->wq + c->wlen, p, n);
	c->wlen += (uint32_t)n;
	set_events(w, c, EPOLLIN | EPOLLOUT);
	return 0;
}

/* Sends one masked client frame (RFC 6455 5.3) with the given opcode. */
static int ws_send(struct worker *w, struct conn *c, int op, const char *p, size_t n)
{
	char f[16 + 4096];
	size_t h = 0;

	if (n > 4096)
		return -1;
	f[h++] = (char)(0x80 | op);
	if (n < 126) {
		f[h++] = (char)(0x80 | n);
	} else {
		f[h++] = (char)(0x80 | 126);
		f[h++] = (char)(n >> 8);
		f[h++] = (char)n;
	}
	uint32_t m = xrand(w);
	unsigned char mask[4] = {(unsigned char)m, (unsigned char)(m >> 8),
	                         (unsigned char)(m >> 16), (unsigned char)(m >> 24)};
	memcpy(f + h, mask, 4);
	h += 4;
	for (size_t i = 0; i < n; i++)
		f[h + i] = (char)(p[i] ^ mask[i & 3]);
	return conn_write(w, c, f, h + n);
}

static int ws_text(struct worker *w, struct conn *c, const char *s)
{
	return ws_send(w, c, 1, s, strlen(s));
}

static void conn_free_buffers(struct conn *c)
{
	free(c->rb);
	free(c->msg);
	free(c->wq);
	c->rb = c->msg = c->wq = NULL;
	c->rlen = c->rcap = c->mlen = c->mcap = c->wlen = c->wcap = 0;
}

static void conn_close(struct worker *w, struct conn *c, uint8_t state)
{
	if (c->fd >= 0) {
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
		c->fd = -1;
	}
	conn_free_buffers(c);
	c->state = state;
}

static int conn_open(struct worker *w, struct conn *c)
{
	const struct lg_opts *o = w->o;
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (conn_is_stalled(o, c->g)) {
		int small = 4096; /* so that the hub's queue, not the kernel, holds the backlog */
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	}
	struct sockaddr_in src = {.sin_family = AF_INET};
	src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(c->g % o->src_addrs));
	if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0 ||
	    (connect(fd, (struct sockaddr *)&w->dst[c->hub], sizeof(w->dst[0])) < 0 && errno != EINPROGRESS)) {
		close(fd);
		return -1;
	}
	c->fd = fd;
	c->state = CS_CONNECTING;
	c->have_off = false;
	c->received = 0;
	c->t_start = now_ns();
	struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.u64 = (uint64_t)(c - w->c)};
	epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &e);
	w->opening++;
	return 0;
}

static int send_upgrade(struct worker *w, struct conn *c)
{
	const struct lg_opts *o = w->o;
	char tenant[32], user[32], tok[1024], req[2048];

	conn_identity(o, c->g, tenant, sizeof(tenant), user, sizeof(user));
	snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
	if (jwt_mint(tok, sizeof(tok), o->secret, tenant, user) < 0)
		return -1;
	const char *path = o->proto == PROTO_SIO ? "/socket.io/?EIO=4&transport=websocket" : "/ws";
	char sep = o->proto == PROTO_SIO ? '&' : '?';
	int n;
	if (o->token_query || o->proto == PROTO_SIO)
		n = snprintf(req, sizeof(req), "GET %s%ctoken=%s HTTP/1.1\r\n", path, sep, tok);
	else
		n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nAuthorization: Bearer %s\r\n",
		             path, tok);
	n += snprintf(
	        req + n, sizeof(req) - (size_t)n,
	        "Host: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
	        o->ws_host[c->hub], o->ws_port[c->hub]);
	c->state = CS_HTTP;
	set_events(w, c, EPOLLIN);
	return conn_write(w, c, req, (size_t)n);
}

/* The job channel connection g subscribes to; foreign connections use the
 * same names as measured ones (in their own tenant). */
static int job_of(const struct lg_opts *o, int g)
{
	if (conn_is_foreign(o, g))
		return (g - o->conns) % o->conns;
	if (conn_is_stalled(o, g))
		return (g - o->conns - o->foreign) % o->conns;
	return g;
}

static bool wants_subscribe(const struct lg_opts *o)
{
	return o->scenario != SC_BROADCAST;
}

static int send_client_msg(struct worker *w, struct conn *c, const char *json)
{
	if (w->o->proto == PROTO_WS)
		return ws_text(w, c, json);
	char buf[512];
	snprintf(buf, sizeof(buf), "42[\"message\",%s]", json);
	return ws_text(w, c, buf);
}

static void conn_ready(struct worker *w, struct conn *c);

static void on_connected(struct worker *w, struct conn *c)
{
	w->st.connected++;
	if (!wants_subscribe(w->o)) {
		conn_ready(w, c);
		return;
	}
	char m[128];
	snprintf(m, sizeof(m), "{\"type\":\"subscribe\",\"channel\":\"job:%d\",\"id\":1}",
	         job_of(w->o, c->g));
	c->state = CS_WAIT_SUBSCRIBED;
	if (send_client_msg(w, c, m))
		conn_close(w, c, CS_FAILED);
}

/* A string value after `key` (which includes the opening quote of the
 * value), up to the closing quote; NULL when absent. */
static const char *find_str(const char *s, size_t n, const char *key, size_t *len)
{
	size_t kl = strlen(key);
	const char *p = memmem(s, n, key, kl);
	if (!p)
		return NULL;
	p += kl;
	const char *e = memchr(p, '"', (size_t)(s + n - p));
	if (!e)
		return NULL;
	*len = (size_t)(e - p);
	return p;
}

static bool find_u64(const char *s, size_t n, const char *key, uint64_t *v)
{
	size_t kl = strlen(key);
	const char *p = memmem(s, n, key, kl);
	if (!p)
		return false;
	p += kl;
	if (p < s + n && *p == '"')
		p++;
	if (p >= s + n || *p < '0' || *p > '9')
		return false;
	uint64_t x = 0;
	while (p < s + n && *p >= '0' && *p <= '9')
		x = x * 10 + (uint64_t)(*p++ - '0');
	*v = x;
	return true;
}

static void on_event(struct worker *w, struct conn *c, const char *s, size_t n)
{
	const struct lg_opts *o = w->o;
	size_t cl, el, tl;
	const char *ch = find_str(s, n, "\"channel\":\"", &cl);
	const char *ep = find_str(s, n, "\"epoch\":\"", &el);
	const char *tn = find_str(s, n, "\"tn\":\"", &tl);
	uint64_t off, t;

	if (!ch || !ep || !find_u64(s, n, "\"offset\":", &off)) {
		w->st.parse_errors++;
		return;
	}
	if (!tn || tl != strlen(c->tenant) || memcmp(tn, c->tenant, tl)) {
		w->st.foreign++;
		return;
	}
	char want[32];
	if (o->scenario == SC_BROADCAST)
		snprintf(want, sizeof(want), "$tenant");
	else
		snprintf(want, sizeof(want), "job:%d", job_of(o, c->g));
	if (cl != strlen(want) || memcmp(ch, want, cl)) {
		w->st.unexpected++;
		return;
	}
	if (find_u64(s, n, "\"t\":\"", &t)) {
		uint64_t now = now_ns(), d = now > t ? now - t : 0;
		hist_add(&w->st.lat, d);
		if (c->hub != o->pub_hub) {
			hist_add(&w->st.xlat, d);
			w->st.xevents++;
		}
	}
	if (el >= sizeof(c->epoch))
		el = sizeof(c->epoch) - 1;
	if (c->have_off && (strlen(c->epoch) != el || memcmp(c->epoch, ep, el))) {
		w->st.epoch_changes++;
		c->have_off = false;
	}
	if (c->have_off) {
		if ((int64_t)off == c->last_off + 1)
			;
		else if ((int64_t)off > c->last_off + 1)
			w->st.gaps++;
		else if ((int64_t)off == c->last_off)
			w->st.dups++;
		else
			w->st.reorders++;
	}
	if (!c->have_off || (int64_t)off > c->last_off)
		c->last_off = (int64_t)off;
	memcpy(c->epoch, ep, el);
	c->epoch[el] = 0;
	c->have_off = true;
	c->received++;
	w->st.events++;
}

/* One protocol message (a JSON object). */
static void on_json(struct worker *w, struct conn *c, const char *s, size_t n)
{
	size_t tl;
	const char *type = find_str(s, n, "\"type\":\"", &tl);

	if (!type) {
		w->st.parse_errors++;
		return;
	}
#define IS(lit) (tl == sizeof(lit) - 1 && !memcmp(type, lit, tl))
	if (IS("connected")) {
		if (c->state == CS_WAIT_CONNECTED)
			on_connected(w, c);
	} else if (IS("subscribed")) {
		if (c->state == CS_WAIT_SUBSCRIBED)
			conn_ready(w, c);
	} else if (IS("error")) {
		w->st.errors++;
	} else if (IS("pong") || IS("unsubscribed")) {
		;
	} else {
		on_event(w, c, s, n);
	}
#undef IS
}

/* Engine.IO v4 packet ('0' open, '2' ping, '4' message) carrying a
 * Socket.IO v5 packet ('0' connect, '2' event, '4' connect error). */
static void on_eio(struct worker *w, struct conn *c, const char *s, size_t n)
{
	if (!n)
		return;
	switch (s[0]) {
	case '0':
		if (c->state == CS_EIO_OPEN) {
			c->state = CS_SIO_CONNECT;
			if (ws_text(w, c, "40"))
				conn_close(w, c, CS_FAILED);
		}
		return;
	case '2': ws_text(w, c, "3"); return;
	case '4': break;
	default: return;
	}
	if (n < 2)
		return;
	if (s[1] == '0') {
		if (c->state == CS_SIO_CONNECT)
			c->state = CS_WAIT_CONNECTED;
	} else if (s[1] == '2') {
		const char *b = memchr(s, '{', n);
		if (!b)
			w->st.parse_errors++;
		else
			on_json(w, c, b, (size_t)(s + n - b));
	} else if (s[1] == '4') {
		w->st.errors++;
	}
}

static void on_message(struct worker *w, struct conn *c, const char *s, size_t n)
{
	if (w->o->proto == PROTO_SIO) {
		on_eio(w, c, s, n);
		return;
	}
	while (n) {
		const char *nl = memchr(s, '\n', n);
		size_t l = nl ? (size_t)(nl - s) : n;
		if (l)
			on_json(w, c, s, l);
		if (!nl)
			break;
		s += l + 1;
		n -= l + 1;
	}
}

/* Parses the HTTP response; returns bytes used, 0 when incomplete, -1 on
 * refusal. */
static long parse_http(struct worker *w, struct conn *c, const char *p, size_t n)
{
	const char *end = memmem(p, n, "\r\n\r\n", 4);
	if (!end)
		return n > 8192 ? -1 : 0;
	if (n < 12 || memcmp(p, "HTTP/1.1 101", 12) ||
	    !memmem(p, (size_t)(end - p), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 28))
		return -1;
	c->state = w->o->proto == PROTO_SIO ? CS_EIO_OPEN : CS_WAIT_CONNECTED;
	return end + 4 - p;
}

/* Parses server frames; returns bytes consumed or -1 when the connection
 * was closed. */
static long parse_frames(struct worker *w, struct conn *c, char *p, size_t n)
{
	size_t off = 0;

	while (n - off >= 2) {
		unsigned char b0 = (unsigned char)p[off], b1 = (unsigned char)p[off + 1];
		uint64_t plen = b1 & 127;
		size_t h = 2;
		if (plen == 126) {
			if (n - off < 4)
				break;
			plen = (uint64_t)(unsigned char)p[off + 2] << 8 | (unsigned char)p[off + 3];
			h = 4;
		} else if (plen == 127) {
			if (n - off < 10)
				break;
			plen = 0;
			for (int i = 0; i < 8; i++)
				plen = plen << 8 | (unsigned char)p[off + 2 + i];
			h = 10;
		}
		if (b1 & 0x80)
			h += 4; /* servers must not mask; tolerate it */
		if (n - off < h + plen)
			break;
		char *pl = p + off + h;
		if (b1 & 0x80)
			for (uint64_t i = 0; i < plen; i++)
				pl[i] ^= p[off + h - 4 + (i & 3)];
		int op = b0 & 15;
		bool fin = b0 & 0x80;
		off += h + plen;
		if (op == 0 || ((op == 1 || op == 2) && (!fin || c->mlen))) {
			if (grow(&c->msg, &c->mcap, c->mlen + (uint32_t)plen))
				return -1;
			memcpy(c->msg + c->mlen, pl, plen);
			c->mlen += (uint32_t)plen;
			if (fin) {
				on_message(w, c, c->msg, c->mlen);
				c->mlen = 0;
			}
		} else if (op == 1 || op == 2) {
			on_message(w, c, pl, plen);
		} else if (op == 8) {
			w->st.closed++;
			conn_close(w, c, CS_DONE);
			return -1;
		} else if (op == 9) {
			ws_send(w, c, 10, pl, plen);
		}
		if (c->fd < 0)
			return -1;
	}
	return (long)off;
}

static long consume(struct worker *w, struct conn *c, char *p, size_t n)
{
	long used = 0;
	if (c->state == CS_HTTP) {
		used = parse_http(w, c, p, n);
		if (used <= 0)
			return used;
	}
	long k = parse_frames(w, c, p + used, n - (size_t)used);
	return k < 0 ? -1 : used + k;
}

static void on_readable(struct worker *w, struct conn *c)
{
	ssize_t k = recv(c->fd, w->scratch, sizeof(w->scratch), 0);
	if (k < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (k <= 0) {
		bool setup = c->state < CS_READY;
		if (!setup)
			w->st.closed++;
		conn_close(w, c, setup ? CS_FAILED : CS_DONE);
		return;
	}
	w->st.bytes_in += (uint64_t)k;
	char *p = w->scratch;
	size_t n = (size_t)k;
	if (c->rlen) {
		if (grow(&c->rb, &c->rcap, c->rlen + (uint32_t)k))
			return;
		memcpy(c->rb + c->rlen, w->scratch, (size_t)k);
		c->rlen += (uint32_t)k;
		p = c->rb;
		n = c->rlen;
	}
	long used = consume(w, c, p, n);
	if (used < 0) {
		if (c->fd >= 0)
			conn_close(w, c, CS_FAILED);
		return;
	}
	size_t rest = n - (size_t)used;
	if (rest && grow(&c->rb, &c->rcap, (uint32_t)rest))
		return;
	if (rest)
		memmove(c->rb, p + used, rest);
	c->rlen = (uint32_t)rest;
}

static void on_writable(struct worker *w, struct conn *c)
{
	if (c->state == CS_CONNECTING) {
		int err = 0;
		socklen_t l = sizeof(err);
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
		if (err || send_upgrade(w, c))
			conn_close(w, c, CS_FAILED);
		return;
	}
	while (c->wlen) {
		ssize_t k = send(c->fd, c->wq, c->wlen, MSG_NOSIGNAL);
		if (k < 0 && errno == EAGAIN)
			return;
		if (k <= 0) {
			conn_close(w, c, CS_FAILED);
			return;
		}
		memmove(c->wq, c->wq + k, c->wlen - (size_t)k);
		c->wlen -= (uint32_t)k;
	}
	set_events(w, c, EPOLLIN);
}

static void conn_ready(struct worker *w, struct conn *c)
{
	c->state = CS_READY;
	/* A stalled connection stops reading for good: off epoll, so that not
	 * even the hub's close is read (its fd stays open until the end). */
	if (conn_is_stalled(w->o, c->g)) {
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		w->st.stalled++;
	}
}

/* Opens connections while fewer than o->handshakes are in flight. */
static void pump(struct worker *w)
{
	while (w->opening < w->o->handshakes && w->next_open < w->count) {
		struct conn *c = &w->c[w->next_open++];
		if (conn_open(w, c)) {
			c->state = CS_FAILED;
			w->st.connect_fail++;
			w->settled++;
		}
	}
}

/* Churn: a cycle finished; close politely and start the next one. */
static void churn_next(struct worker *w, struct conn *c, bool ok)
{
	uint64_t now = now_ns();
	if (ok) {
		w->st.cycles++;
		hist_add(&w->st.lat, now - c->t_start);
		ws_send(w, c, 8, "\x03\xe8", 2);
	} else {
		w->st.connect_fail++;
	}
	conn_close(w, c, CS_IDLE);
	if (now < w->churn_end && conn_open(w, c) == 0)
		return;
	c->state = CS_DONE;
	w->settled++;
}

/* Bookkeeping of state changes caused by one epoll event. */
static void after(struct worker *w, struct conn *c, uint8_t prev)
{
	if (prev >= CS_READY || c->state == prev)
		return;
	if (c->state == CS_READY) {
		w->opening--;
		if (w->churning) {
			churn_next(w, c, true);
			return;
		}
		w->st.ready++;
		w->settled++;
	} else if (c->state == CS_FAILED || c->state == CS_DONE) {
		w->opening--;
		if (w->churning) {
			churn_next(w, c, false);
			return;
		}
		if (++c->tries < 3 && conn_open(w, c) == 0)
			return;
		c->state = CS_FAILED;
		w->st.connect_fail++;
		w->settled++;
	}
}

static uint64_t expected(const struct lg_opts *o, int g, uint64_t p)
{
	if (conn_is_foreign(o, g) || conn_is_stalled(o, g))
		return 0;
	if (o->scenario == SC_BROADCAST) {
		uint64_t t = (uint64_t)o->tenants, k = (uint64_t)(g % o->tenants);
		return p / t + (k < p % t);
	}
	uint64_t n = (uint64_t)o->conns;
	return p / n + ((uint64_t)g < p % n);
}

static uint64_t missing_now(struct worker *w, uint64_t published)
{
	uint64_t m = 0;
	for (int i = 0; i < w->count; i++) {
		struct conn *c = &w->c[i];
		uint64_t e = expected(w->o, c->g, published);
		if (c->state == CS_READY && c->received < e)
			m += e - c->received;
	}
	return m;
}

static double own_cpu(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

/* Sends the final figures; cpu_s counts from the end of setup, so that it
 * covers the same window as the hub's CPU figure. */
static void finish(struct worker *w, uint64_t published, int to_parent)
{
	const struct lg_opts *o = w->o;
	bool counts = o->scenario == SC_BROADCAST || o->scenario == SC_JOBS;

	for (int i = 0; i < w->count; i++) {
		struct conn *c = &w->c[i];
		if (counts && c->state == CS_READY && !conn_is_stalled(o, c->g)) {
			uint64_t e = expected(o, c->g, published);
			if (c->received < e)
				w->st.missing += e - c->received;
			else
				w->st.extra += c->received - e;
		}
		if (c->fd >= 0)
			conn_close(w, c, CS_DONE);
	}
	w->st.cpu_s = own_cpu() - w->cpu_at_ready;
	write_all(to_parent, &w->st, sizeof(w->st));
}

/* Setup took too long: whatever is still handshaking has failed. */
static void give_up(struct worker *w)
{
	for (int i = 0; i < w->count; i++) {
		struct conn *c = &w->c[i];
		if (c->state > CS_IDLE && c->state < CS_READY) {
			conn_close(w, c, CS_FAILED);
			w->st.connect_fail++;
			w->settled++;
		}
	}
	w->next_open = w->count;
}

void worker_main(const struct lg_opts *o, int index, int first, int count, int to_parent,
                 int from_parent)
{
	struct worker *w = calloc(1, sizeof(*w));
	if (!w)
		_exit(3);
	w->o = o;
	w->first = first;
	w->count = count;
	w->rnd = 2463534242u ^ (uint32_t)(index * 7919 + 1);
	w->c = calloc((size_t)count, sizeof(*w->c));
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	for (int k = 0; k < o->nws; k++) {
		w->dst[k].sin_family = AF_INET;
		w->dst[k].sin_port = htons((uint16_t)o->ws_port[k]);
		inet_pton(AF_INET, o->ws_host[k], &w->dst[k].sin_addr);
	}
	for (int i = 0; i < count; i++) {
		w->c[i].fd = -1;
		w->c[i].g = first + i;
		w->c[i].hub = (uint8_t)((first + i) % o->nws);
	}
	struct epoll_event ce = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
	epoll_ctl(w->epfd, EPOLL_CTL_ADD, from_parent, &ce);
	w->churning = o->scenario == SC_CHURN;
	uint64_t start = now_ns();
	w->churn_end = start + (uint64_t)(o->duration * 1e9);
	uint64_t setup_deadline = (w->churning ? w->churn_end : start) + 180000000000ull;
	bool ready_sent = false;
	struct epoll_event ev[1024];

	for (;;) {
		pump(w);
		int n = epoll_wait(w->epfd, ev, 1024, 50);
		for (int i = 0; i < n; i++) {
			if (ev[i].data.u64 == UINT64_MAX) {
				struct wcmd cmd;
				if (read_all(from_parent, &cmd, sizeof(cmd)) ||
				    cmd.op == CMD_FINISH) {
					finish(w, cmd.published, to_parent);
					_exit(0);
				}
				uint64_t m = missing_now(w, cmd.published);
				write_all(to_parent, &m, sizeof(m));
				continue;
			}
			struct conn *c = &w->c[ev[i].data.u64];
			uint8_t prev = c->state;
			if (c->fd >= 0 && (ev[i].events & (EPOLLOUT | EPOLLERR)))
				on_writable(w, c);
			if (c->fd >= 0 && (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
				on_readable(w, c);
			after(w, c, prev);
		}
		if (!ready_sent && w->settled < w->count && now_ns() > setup_deadline)
			give_up(w);
		if (!ready_sent && w->settled >= w->count) {
			struct wready r = {.ready = w->st.ready, .failed = w->st.connect_fail};
			write_all(to_parent, &r, sizeof(r));
			ready_sent = true;
			if (!w->churning)
				w->cpu_at_ready = own_cpu();
		}
	}
}
