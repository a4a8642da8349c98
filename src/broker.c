/*
 * broker: the Redis broker. See broker.h.
 *
 * The broker thread owns two non-blocking connections to Redis, "cmd"
 * (commands, scripts; replies matched to a FIFO of what was sent) and "sub"
 * (pub/sub: SUBSCRIBE for broker_listen, SSUBSCRIBE for followed channels).
 * Both come up together and go down together: any error on either drops
 * both, fails whatever waits for a reply, and schedules a reconnect with a
 * capped, jittered backoff. The broker is "up" once both are connected,
 * authenticated, the publish script is loaded and every subscription is
 * confirmed again.
 *
 * Other threads talk to it through `jobs` (mpsc.h) and an eventfd; it
 * answers through `events` (mpsc.h) and the wake function, and the service
 * thread runs the callbacks in broker_service(). The tables of listeners
 * and state callbacks belong to the service thread; the follow table, the
 * connections and the script's SHA to the broker thread. Counters are
 * atomics, read by GetStats and /metrics.
 */
#include "broker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "dict.h"
#include "history.h"
#include "idem.h"
#include "livehub.h"
#include "log.h"
#include "mpsc.h"
#include "publication.h"

#define READ_CHUNK    16384
#define CONNECT_MS    3000 /* a connection not made (or handshaken) by then is dropped */
#define PING_EVERY_MS 1000 /* while up, each connection is PINGed this often */
#define PING_DEAD_MS  5000 /* ... and dropped when a PING is unanswered this long */
#define MAX_PUB_ARGS  16

/* The publish script: one channel, atomically. KEYS: meta, stream, idem
 * ("" when no key). ARGV: frame prefix, frame suffix, history size, ttl s,
 * a random epoch, the pub/sub channel, this node, the conflation key (hex),
 * the idempotency window ms (0: none), the publication's digest, the
 * publish command (SPUBLISH or PUBLISH). Returns {"ok"|"dup", "off epoch
 * [digest]"}. The stream entry's id is "<offset>-0", so XRANGE reads
 * offsets directly. */
static const char publish_lua[] =
        "local win = tonumber(ARGV[9])\n"
        "if win > 0 then\n"
        "  local prev = redis.call('GET', KEYS[3])\n"
        "  if prev then return {'dup', prev} end\n"
        "end\n"
        "redis.call('HSETNX', KEYS[1], 'epoch', ARGV[5])\n"
        "local epoch = redis.call('HGET', KEYS[1], 'epoch')\n"
        "local off = redis.call('HINCRBY', KEYS[1], 'top', 1)\n"
        "local frame = ARGV[1] .. off .. ',\"epoch\":\"' .. epoch .. '\"' .. ARGV[2]\n"
        "local size = tonumber(ARGV[3])\n"
        "local ttl = tonumber(ARGV[4])\n"
        "if size > 0 then\n"
        "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, off .. '-0', 'f', frame)\n"
        "  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end\n"
        "end\n"
        "if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end\n"
        "redis.call(ARGV[11], ARGV[6], 'E ' .. off .. ' ' .. epoch .. ' ' .. ARGV[8] .. ' ' .. "
        "ARGV[7] .. '\\n' .. frame)\n"
        "local res = off .. ' ' .. epoch\n"
        "if win > 0 then redis.call('SET', KEYS[3], res .. ' ' .. ARGV[10], 'PX', win) end\n"
        "return {'ok', res}\n";

/* ------------------------------------------------------------------------
 * Messages between the threads
 * ------------------------------------------------------------------------ */

enum job_kind { J_CMD, J_LISTEN, J_FOLLOW, J_UNFOLLOW, J_PUBLISH, J_RAW, J_LIMITS };

/* Work for the broker thread. */
struct job {
	struct mpsc_node link;
	enum job_kind kind;
	char *cmd; /* J_CMD, J_RAW: formatted command, redisFreeCommand */
	int cmdlen;
	broker_reply_fn fn; /* J_CMD */
	void *arg;
	void (*done)(void *arg, bool ok); /* J_FOLLOW */
	struct publication *pub;          /* J_PUBLISH */
	struct hist_limits *hist;         /* J_LIMITS: owned */
	int idx;                          /* J_LISTEN: index in b->listeners */
	char name[];                      /* J_LISTEN, J_FOLLOW, J_UNFOLLOW */
};

enum ev_kind { E_REPLY, E_LISTEN_MSG, E_CHAN_MSG, E_STATE, E_FOLLOW, E_PUB_DONE };

/* A callback owed to the service thread. */
struct ev {
	struct mpsc_node link;
	enum ev_kind kind;
	broker_reply_fn fn; /* E_REPLY */
	void *arg;
	void (*done)(void *arg, bool ok); /* E_FOLLOW */
	bool ok;                          /* E_FOLLOW; E_STATE: up */
	redisReply *reply;                /* E_REPLY, E_*_MSG: freed after the callback */
	int idx;                          /* E_LISTEN_MSG */
	struct publication *pub;          /* E_PUB_DONE */
};

/* ------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------ */

struct broker;
/* What a reply on a connection is for, in the order commands were sent. */
struct pending {
	void (*on_reply)(struct broker *b, struct pending *pd, redisReply *r); /* broker thread */
	broker_reply_fn fn; /* for on_user: the caller's callback */
	void *arg;
	struct pubjob *pj; /* for on_publish */
	int chan;          /* on_publish: the channel's index; handshake: 0 cmd, 1 sub */
};

enum cstate { C_DOWN, C_CONNECTING, C_HANDSHAKE, C_READY };

struct rconn {
	const char *name; /* "cmd" or "sub", for logs */
	int fd;
	enum cstate st;
	redisReader *rd;
	char *out; /* bytes not written yet */
	size_t outlen, outcap, outoff;
	struct pending *fifo; /* ring */
	size_t head, n, cap;
	int handshake;        /* replies still awaited before C_READY */
	int64_t ping_sent_ms; /* the PING awaiting its reply was sent then; 0: none */
	int64_t ping_next_ms; /* when to send the next one */
};

/* A publication on its way: one script call per channel. */
struct pubjob {
	struct publication *p;
	int left;   /* replies awaited */
	int status; /* first failure */
	bool retried[LH_PUB_MAX_CHANNELS];
};

/* A followed channel (broker thread). */
struct follow {
	uint32_t count; /* broker_follow calls not unfollowed */
	bool confirmed; /* the subscription is confirmed on this connection */
	bool sent;      /* SSUBSCRIBE sent on this connection */
	struct waiter *waiters;
	size_t len;
	char name[];
};

struct waiter {
	struct waiter *next;
	void (*done)(void *arg, bool ok);
	void *arg;
};

struct listener {
	char *name;
	void (*fn)(void *arg, const char *msg, size_t len);
	void *arg;
};

struct state_cb {
	void (*fn)(void *arg, bool up);
	void *arg;
};

struct broker {
	/* Set at creation, then read-only. */
	struct broker_url url;
	char prefix[BROKER_PREFIX_MAX];
	char node[BROKER_NODE_MAX];
	struct hist_limits hist; /* broker thread after start (J_LIMITS) */
	int backoff_min_ms, backoff_max_ms;
	char sha[41];

	/* Any thread. */
	_Atomic bool up;
	_Atomic bool stop;
	_Atomic uint32_t idem_window_s;
	_Atomic uint32_t pubs; /* publications taken, on_done not run yet */
	_Atomic bool tried;    /* the first connection attempt has ended (up or not) */
	uint32_t max_pubs;
	struct mpsc jobs;
	struct mpsc events;
	int efd; /* eventfd: jobs are waiting */
	void (*wake)(void *);
	void *wake_arg;
	pthread_t thread;
	bool started;
	pthread_mutex_t err_lock;
	char last_error[160]; /* err_lock */
	_Atomic uint64_t st_reconnects, st_inflight, st_publishes, st_pub_failures;
	_Atomic uint64_t st_received, st_followed, st_commands;

	/* Service thread. */
	struct mpsc_node *backlog; /* events taken, not run yet (broker_service_some) */
	struct listener *listeners;
	size_t nlisteners;
	struct state_cb *states;
	size_t nstates;
	broker_msg_fn chan_fn;
	void *chan_arg;

	/* Broker thread. */
	struct rconn cmd, sub;
	_Atomic bool sharded; /* SSUBSCRIBE/SPUBLISH exist (broker_publish_raw reads it) */
	bool was_up;          /* up was reported */
	bool ever_up;         /* for the reconnect counter */
	int confirming;       /* subscriptions of the current connection not confirmed */
	bool resubscribed;    /* subscribe_all ran on the current connection */
	int64_t retry_at_ms;  /* when to connect again (C_DOWN) */
	int64_t deadline_ms;  /* connect + handshake deadline */
	int attempt;          /* failed attempts in a row */
	uint64_t rng;
	struct dict *follows; /* name -> struct follow */
	char **listen_names;  /* copies of the listeners' names, by index */
	size_t nlisten_names;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t seed(void)
{
	uint64_t s = 0;
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (read(fd, &s, sizeof(s)) != (ssize_t)sizeof(s))
			s = 0;
		close(fd);
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return s ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)getpid();
}

/* Records why Redis is unavailable: what, then detail. */
static void set_error(struct broker *b, const char *what, const char *detail)
{
	pthread_mutex_lock(&b->err_lock);
	snprintf(b->last_error, sizeof(b->last_error), "%s%s", what, detail ? detail : "");
	pthread_mutex_unlock(&b->err_lock);
}

void broker_last_error(struct broker *b, char *buf, size_t cap)
{
	pthread_mutex_lock(&b->err_lock);
	snprintf(buf, cap, "%s", b->last_error[0] ? b->last_error : "not connected to Redis yet");
	pthread_mutex_unlock(&b->err_lock);
}

/* ------------------------------------------------------------------------
 * Queues between the threads
 * ------------------------------------------------------------------------ */

static void post(struct broker *b, struct ev *e)
{
	if (mpsc_push(&b->events, &e->link) && b->wake)
		b->wake(b->wake_arg);
}

static struct ev *ev_new(enum ev_kind kind)
{
	struct ev *e = calloc(1, sizeof(*e));
	if (e)
		e->kind = kind;
	return e;
}

/* Posts a reply (or NULL) for a caller's command. Out of memory: the
 * callback is lost, which cannot be allowed; so the event is allocated
 * before the command is accepted (see queue_job's callers). */
static void post_reply(struct broker *b, broker_reply_fn fn, void *arg, redisReply *r)
{
	struct ev *e = ev_new(E_REPLY);
	if (!e) {
		/* Nothing better to do than drop the reply; logged. */
		log_error("event=redis_reply_lost reason=\"out of memory\"");
		if (r)
			freeReplyObject(r);
		return;
	}
	e->fn = fn;
	e->arg = arg;
	e->reply = r;
	post(b, e);
}

static void post_pub_done(struct broker *b, struct publication *p, int status)
{
	struct ev *e = ev_new(E_PUB_DONE);
	p->status = status;
	if (status == 0)
		atomic_fetch_add(&b->st_publishes, 1);
	else
		atomic_fetch_add(&b->st_pub_failures, 1);
	if (!e) {
		log_error("event=redis_publish_lost reason=\"out of memory\"");
		return;
	}
	e->pub = p;
	post(b, e);
}

static void post_follow(struct broker *b, void (*done)(void *, bool), void *arg, bool ok)
{
	if (!done)
		return;
	struct ev *e = ev_new(E_FOLLOW);
	if (!e)
		return;
	e->done = done;
	e->arg = arg;
	e->ok = ok;
	post(b, e);
}

static int queue_job(struct broker *b, struct job *j)
{
	if (mpsc_push(&b->jobs, &j->link)) {
		uint64_t one = 1;
		if (write(b->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			return LH_EIO;
	}
	return 0;
}

static struct job *job_new(enum job_kind kind, const char *name)
{
	size_t n = name ? strlen(name) + 1 : 0;
	struct job *j = calloc(1, sizeof(*j) + n);
	if (!j)
		return NULL;
	j->kind = kind;
	if (name)
		memcpy(j->name, name, n);
	return j;
}

static void job_free(struct job *j)
{
	free(j->hist);
	if (j->cmd)
		redisFreeCommand(j->cmd);
	free(j);
}

/* ------------------------------------------------------------------------
 * Connection plumbing (broker thread)
 * ------------------------------------------------------------------------ */

static int out_append(struct rconn *c, const char *p, size_t n)
{
	if (c->outlen + n > c->outcap) {
		size_t cap = c->outcap ? c->outcap : 4096;
		while (cap < c->outlen + n)
			cap *= 2;
		char *o = realloc(c->out, cap);
		if (!o)
			return LH_ENOMEM;
		c->out = o;
		c->outcap = cap;
	}
	memcpy(c->out + c->outlen, p, n);
	c->outlen += n;
	return 0;
}

static int fifo_push(struct rconn *c, const struct pending *pd)
{
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 64;
		struct pending *f = malloc(cap * sizeof(*f));
		if (!f)
			return LH_ENOMEM;
		for (size_t i = 0; i < c->n; i++)
			f[i] = c->fifo[(c->head + i) % c->cap];
		free(c->fifo);
		c->fifo = f;
		c->head = 0;
		c->cap = cap;
	}
	c->fifo[(c->head + c->n) % c->cap] = *pd;
	c->n++;
	return 0;
}

static bool fifo_pop(struct rconn *c, struct pending *out)
{
	if (!c->n)
		return false;
	*out = c->fifo[c->head];
	c->head = (c->head + 1) % c->cap;
	c->n--;
	return true;
}

/* Sends one formatted command with what its reply is for. */
static int send_raw(struct broker *b, struct rconn *c, const char *cmd, size_t len,
                    const struct pending *pd)
{
	if (out_append(c, cmd, len))
		return LH_ENOMEM;
	if (pd && fifo_push(c, pd)) {
		c->outlen -= len;
		return LH_ENOMEM;
	}
	atomic_fetch_add_explicit(&b->st_commands, 1, memory_order_relaxed);
	return 0;
}

/* Formats argv and sends it. Returns 0 or LH_ENOMEM. */
static int send_argv(struct broker *b, struct rconn *c, int argc, const char **argv,
                     const size_t *lens, const struct pending *pd)
{
	char *cmd = NULL;
	int n = redisFormatCommandArgv(&cmd, argc, argv, lens);
	if (n < 0)
		return LH_ENOMEM;
	int rc = send_raw(b, c, cmd, (size_t)n, pd);
	redisFreeCommand(cmd);
	return rc;
}

static int send_words(struct broker *b, struct rconn *c, const struct pending *pd, int argc, ...)
{
	const char *argv[8];
	va_list ap;
	va_start(ap, argc);
	for (int i = 0; i < argc && i < 8; i++)
		argv[i] = va_arg(ap, const char *);
	va_end(ap);
	return send_argv(b, c, argc, argv, NULL, pd);
}

/* Starts a non-blocking connect. Returns 0 or -1 (errno set). */
static int open_socket(const struct broker_url *u)
{
	if (u->unix_socket) {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		size_t n = strlen(u->host);
		if (n >= sizeof(sa.sun_path)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		memcpy(sa.sun_path, u->host, n + 1);
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -1;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
			int e = errno;
			close(fd);
			errno = e;
			return -1;
		}
		return fd;
	}
	char port[8];
	snprintf(port, sizeof(port), "%d", u->port);
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC}, *res = NULL;
	int g = getaddrinfo(u->host, port, &hints, &res);
	if (g != 0) {
		errno = EHOSTUNREACH;
		return -1;
	}
	int fd = -1;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		            a->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd >= 0) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	}
	return fd;
}

static void conn_reset(struct rconn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->st = C_DOWN;
	if (c->rd)
		redisReaderFree(c->rd);
	c->rd = NULL;
	c->outlen = c->outoff = 0;
	c->handshake = 0;
	c->ping_sent_ms = c->ping_next_ms = 0;
}

/* ------------------------------------------------------------------------
 * Going down and coming up (broker thread)
 * ------------------------------------------------------------------------ */

static void fail_pending(struct broker *b, struct rconn *c)
{
	struct pending pd;
	while (fifo_pop(c, &pd))
		pd.on_reply(b, &pd, NULL);
	atomic_store_explicit(&b->st_inflight, 0, memory_order_relaxed);
}

static void follow_confirmed(struct broker *b, struct follow *f);

static void set_up(struct broker *b, bool up)
{
	atomic_store(&b->up, up);
	if (up == b->was_up)
		return;
	b->was_up = up;
	struct ev *e = ev_new(E_STATE);
	if (e) {
		e->ok = up;
		post(b, e);
	}
	if (up) {
		atomic_store(&b->tried, true);
		if (b->ever_up)
			atomic_fetch_add(&b->st_reconnects, 1);
		b->ever_up = true;
		b->attempt = 0;
		size_t pos = 0;
		struct dict_entry de;
		while (dict_next(b->follows, &pos, &de)) {
			struct follow *f = de.val;
			if (f->confirmed && f->waiters)
				follow_confirmed(b, f);
		}
		log_info("event=redis_up node=%s sharded=%d", b->node, b->sharded);
	}
}

/* Drops both connections: every reply owed is failed (NULL), follow waiters
 * learn !ok, the broker reports down and retries after a backoff. */
static void drop(struct broker *b, const char *why)
{
	bool logged = b->was_up || b->attempt == 0;
	if (logged)
		log_warn("event=redis_down node=%s reason=\"%s\"", b->node, why);
	set_error(b, "", why);
	atomic_store(&b->tried, true);
	conn_reset(&b->cmd);
	conn_reset(&b->sub);
	set_up(b, false);
	fail_pending(b, &b->cmd);
	fail_pending(b, &b->sub);
	size_t pos = 0;
	struct dict_entry de;
	while (dict_next(b->follows, &pos, &de)) {
		struct follow *f = de.val;
		f->confirmed = f->sent = false;
		for (struct waiter *w = f->waiters, *next; w; w = next) {
			next = w->next;
			post_follow(b, w->done, w->arg, false);
			free(w);
		}
		f->waiters = NULL;
		if (f->count == 0) {
			dict_del(b->follows, f->name, f->len);
			free(f);
		}
	}
	atomic_store(&b->st_followed, 0);
	b->confirming = 0;
	b->resubscribed = false;
	int64_t d = (int64_t)b->backoff_min_ms << (b->attempt < 16 ? b->attempt : 16);
	if (d > b->backoff_max_ms || d <= 0)
		d = b->backoff_max_ms;
	/* Jitter: between half and all of it, so that nodes do not reconnect in
	 * lockstep after a Redis restart. */
	d = d / 2 + (int64_t)(rng_next(&b->rng) % (uint64_t)(d / 2 + 1));
	b->attempt++;
	b->retry_at_ms = now_ms() + d;
}

static void on_handshake(struct broker *b, struct pending *pd, redisReply *r);
static void subscribe_all(struct broker *b);

static int handshake_auth(struct broker *b, struct rconn *c)
{
	struct pending pd = {.on_reply = on_handshake, .chan = c == &b->sub};
	int rc = 0;
	if (b->url.password[0]) {
		if (b->url.user[0])
			rc = send_words(b, c, &pd, 3, "AUTH", b->url.user, b->url.password);
		else
			rc = send_words(b, c, &pd, 2, "AUTH", b->url.password);
		c->handshake++;
	}
	if (!rc && b->url.db > 0) {
		char db[16];
		snprintf(db, sizeof(db), "%d", b->url.db);
		rc = send_words(b, c, &pd, 2, "SELECT", db);
		c->handshake++;
	}
	return rc;
}

static void on_probe(struct broker *b, struct pending *pd, redisReply *r);
static void on_script(struct broker *b, struct pending *pd, redisReply *r);
static void on_role(struct broker *b, struct pending *pd, redisReply *r);

/* The socket is connected: sends the handshake. */
static int start_handshake(struct broker *b, struct rconn *c)
{
	c->st = C_HANDSHAKE;
	c->rd = redisReaderCreate();
	if (!c->rd)
		return LH_ENOMEM;
	int rc = handshake_auth(b, c);
	if (rc || c != &b->cmd)
		goto out;
	/* Whether sharded pub/sub exists (Redis 7): an unknown command is an
	 * error reply, not a dropped connection. */
	char probe[BROKER_PREFIX_MAX + 8];
	snprintf(probe, sizeof(probe), "%s:probe", b->prefix);
	struct pending pp = {.on_reply = on_probe};
	rc = send_words(b, c, &pp, 3, "SPUBLISH", probe, "");
	c->handshake++;
	struct pending ps = {.on_reply = on_script};
	if (!rc)
		rc = send_words(b, c, &ps, 3, "SCRIPT", "LOAD", publish_lua);
	c->handshake++;
	/* A replica takes the connection and the script but refuses every
	 * write: it is not up for us (see on_role). */
	struct pending pr = {.on_reply = on_role};
	if (!rc)
		rc = send_words(b, c, &pr, 1, "ROLE");
	c->handshake++;
out:
	if (!rc && c->handshake == 0)
		c->st = C_READY;
	return rc;
}

/* Both connections ready: re-establishes every subscription; the broker is
 * up once they are confirmed. */
static void maybe_ready(struct broker *b)
{
	if (b->cmd.st != C_READY || b->sub.st != C_READY || b->was_up || b->resubscribed)
		return;
	subscribe_all(b);
	if (b->confirming == 0)
		set_up(b, true);
}

static void handshake_step(struct broker *b, struct rconn *c)
{
	if (--c->handshake == 0) {
		c->st = C_READY;
		maybe_ready(b);
	}
}

static void on_handshake(struct broker *b, struct pending *pd, redisReply *r)
{
	if (!r)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		drop(b, r->str);
		return;
	}
	handshake_step(b, pd->chan ? &b->sub : &b->cmd);
}

static void on_probe(struct broker *b, struct pending *pd, redisReply *r)
{
	if (!r)
		return;
	b->sharded = r->type != REDIS_REPLY_ERROR;
	if (!b->sharded)
		log_info(
		        "event=redis_no_sharded_pubsub detail=\"falling back to PUBLISH/SUBSCRIBE\"");
	handshake_step(b, &b->cmd);
}

static void on_script(struct broker *b, struct pending *pd, redisReply *r)
{
	if (!r)
		return;
	if (r->type != REDIS_REPLY_STRING || r->len != 40) {
		drop(b, r->type == REDIS_REPLY_ERROR ? r->str : "SCRIPT LOAD: unexpected reply");
		return;
	}
	memcpy(b->sha, r->str, 40);
	b->sha[40] = '\0';
	handshake_step(b, &b->cmd);
}

/* ROLE: anything but "master" (a replica, a sentinel) cannot run the
 * publish script, so the broker stays down and retries with its backoff
 * (a failover that moves the address heals). An error (ROLE refused by an
 * ACL) tells nothing: carry on. */
static void on_role(struct broker *b, struct pending *pd, redisReply *r)
{
	if (!r)
		return;
	if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
	    r->element[0]->type == REDIS_REPLY_STRING &&
	    strcmp(r->element[0]->str, "master") != 0) {
		char why[96];
		snprintf(why, sizeof(why), "Redis is not a primary (ROLE %.32s): it refuses writes",
		         r->element[0]->str);
		drop(b, why);
		return;
	}
	handshake_step(b, &b->cmd);
}

static void on_pong(struct broker *b, struct pending *pd, redisReply *r)
{
	if (r)
		(pd->chan ? &b->sub : &b->cmd)->ping_sent_ms = 0;
}

/* While up, PINGs each connection every PING_EVERY_MS, so that a Redis that
 * stopped answering (a hung host, a partition that keeps TCP open) is
 * noticed within PING_DEAD_MS instead of TCP's hours. */
static void keepalive(struct broker *b, int64_t now)
{
	if (!b->was_up)
		return;
	struct rconn *cs[2] = {&b->cmd, &b->sub};
	for (int i = 0; i < 2; i++) {
		struct rconn *c = cs[i];
		if (c->ping_sent_ms && now - c->ping_sent_ms > PING_DEAD_MS) {
			drop(b, "Redis did not answer PING within 5 s");
			return;
		}
		if (!c->ping_sent_ms && now >= c->ping_next_ms) {
			struct pending pd = {.on_reply = on_pong, .chan = i};
			if (send_words(b, c, &pd, 1, "PING") == 0) {
				c->ping_sent_ms = now;
				c->ping_next_ms = now + PING_EVERY_MS;
			}
		}
	}
}

static void on_internal(struct broker *b, struct pending *pd, redisReply *r)
{
	if (r && r->type == REDIS_REPLY_ERROR)
		log_warn("event=redis_error reply=\"%s\"", r->str);
}

static void try_connect(struct broker *b)
{
	b->deadline_ms = now_ms() + CONNECT_MS;
	struct rconn *cs[2] = {&b->cmd, &b->sub};
	for (int i = 0; i < 2; i++) {
		cs[i]->fd = open_socket(&b->url);
		if (cs[i]->fd < 0) {
			char why[128];
			snprintf(why, sizeof(why), "connect: %s", strerror(errno));
			drop(b, why);
			return;
		}
		cs[i]->st = C_CONNECTING;
	}
}

/* ------------------------------------------------------------------------
 * Subscriptions (broker thread)
 * ------------------------------------------------------------------------ */

static int send_subscribe(struct broker *b, const char *verb, const char *name)
{
	/* Subscription replies are matched by their kind, not by the FIFO. */
	return send_words(b, &b->sub, NULL, 2, verb, name);
}

static const char *sub_verb(const struct broker *b, bool on)
{
	if (b->sharded)
		return on ? "SSUBSCRIBE" : "SUNSUBSCRIBE";
	return on ? "SUBSCRIBE" : "UNSUBSCRIBE";
}

static void subscribe_all(struct broker *b)
{
	b->resubscribed = true;
	for (size_t i = 0; i < b->nlisten_names; i++) {
		if (send_subscribe(b, "SUBSCRIBE", b->listen_names[i]) == 0)
			b->confirming++;
	}
	size_t pos = 0;
	struct dict_entry de;
	while (dict_next(b->follows, &pos, &de)) {
		struct follow *f = de.val;
		if (send_subscribe(b, sub_verb(b, true), f->name) == 0) {
			f->sent = true;
			b->confirming++;
		}
	}
}

static void follow_confirmed(struct broker *b, struct follow *f)
{
	f->confirmed = true;
	/* Before up, waiters are told when it comes (set_up): a follower told
	 * it is subscribed may send commands at once. */
	if (!b->was_up)
		return;
	for (struct waiter *w = f->waiters, *next; w; w = next) {
		next = w->next;
		post_follow(b, w->done, w->arg, true);
		free(w);
	}
	f->waiters = NULL;
	atomic_store(&b->st_followed, dict_count(b->follows));
}

/* Tells f's waiters the subscription was not made (it is being dropped
 * unconfirmed: nobody follows it any more), so that their callbacks run
 * and release what they hold. */
static void waiters_fail(struct broker *b, struct follow *f)
{
	for (struct waiter *w = f->waiters, *next; w; w = next) {
		next = w->next;
		post_follow(b, w->done, w->arg, false);
		free(w);
	}
	f->waiters = NULL;
}

static void do_follow(struct broker *b, struct job *j)
{
	size_t len = strlen(j->name);
	struct follow *f = dict_get(b->follows, j->name, len);
	if (!f) {
		f = calloc(1, sizeof(*f) + len + 1);
		if (f) {
			memcpy(f->name, j->name, len + 1);
			f->len = len;
		}
		if (!f || dict_put(b->follows, f->name, len, f) != 0) {
			free(f);
			post_follow(b, j->done, j->arg, false);
			return;
		}
	}
	f->count++;
	if (f->confirmed) {
		post_follow(b, j->done, j->arg, true);
		return;
	}
	if (j->done) {
		struct waiter *w = calloc(1, sizeof(*w));
		if (!w) {
			post_follow(b, j->done, j->arg, false);
			return;
		}
		*w = (struct waiter){f->waiters, j->done, j->arg};
		f->waiters = w;
	}
	if (!f->sent && b->resubscribed) {
		if (send_subscribe(b, sub_verb(b, true), f->name) == 0) {
			f->sent = true;
			if (!b->was_up)
				b->confirming++;
		}
	} else if (!f->sent && b->cmd.st == C_DOWN) {
		/* Down: the waiter learns it now; the subscription is made when
		 * Redis comes back. */
		for (struct waiter *w = f->waiters, *next; w; w = next) {
			next = w->next;
			post_follow(b, w->done, w->arg, false);
			free(w);
		}
		f->waiters = NULL;
	}
}

static void do_unfollow(struct broker *b, const char *name)
{
	size_t len = strlen(name);
	struct follow *f = dict_get(b->follows, name, len);
	if (!f || f->count == 0 || --f->count > 0)
		return;
	/* An unconfirmed subscription is dropped when its confirmation comes,
	 * so that a confirmation is never taken for a later follow's. */
	if (f->sent && !f->confirmed)
		return;
	if (f->confirmed)
		send_subscribe(b, sub_verb(b, false), f->name);
	waiters_fail(b, f);
	dict_del(b->follows, f->name, f->len);
	free(f);
	atomic_store(&b->st_followed, dict_count(b->follows));
}

static bool is_listen_name(const struct broker *b, const char *name)
{
	for (size_t i = 0; i < b->nlisten_names; i++)
		if (!strcmp(b->listen_names[i], name))
			return true;
	return false;
}

/* A subscription confirmation on the sub connection. */
static void on_subscribed(struct broker *b, const char *name, size_t len, bool sharded_kind)
{
	/* Up first: a follower told it is subscribed may send commands at
	 * once, and broker_cmd refuses them while the broker is down. */
	if (!b->was_up && b->confirming > 0 && --b->confirming == 0 && b->cmd.st == C_READY &&
	    b->sub.st == C_READY)
		set_up(b, true);
	bool listen = !sharded_kind && (b->sharded || is_listen_name(b, name));
	struct follow *f = listen ? NULL : dict_get(b->follows, name, len);
	if (f && f->count == 0) {
		send_subscribe(b, sub_verb(b, false), f->name);
		waiters_fail(b, f);
		dict_del(b->follows, f->name, f->len);
		free(f);
	} else if (f) {
		follow_confirmed(b, f);
	}
}

/* ------------------------------------------------------------------------
 * Publishing (broker thread)
 * ------------------------------------------------------------------------ */

static void on_publish(struct broker *b, struct pending *pd, redisReply *r);

/* Sends the script call for channel i of pj's publication (EVAL with the
 * script's text when full, after a NOSCRIPT). Returns 0 or LH_ENOMEM. */
static int send_publish(struct broker *b, struct pubjob *pj, int i, bool full)
{
	struct publication *p = pj->p;
	const char *name = p->channels[i];
	char meta[512], stream[512], idem[700], chan[512];
	broker_key(b, meta, sizeof(meta), p->tenant, name, ":meta");
	broker_key(b, stream, sizeof(stream), p->tenant, name, ":stream");
	broker_key(b, chan, sizeof(chan), p->tenant, name, "");
	idem[0] = '\0';
	uint32_t win = p->idem_key[0] ? (uint32_t)atomic_load(&b->idem_window_s) * 1000u : 0;
	if (win)
		snprintf(idem, sizeof(idem), "%s:idem:%s", meta, p->idem_key);
	else
		snprintf(idem, sizeof(idem), "%s:idem", meta);

	/* The frame around its offset and epoch, as hub.c's event_frame(). */
	size_t dlen = p->data && p->data_len ? p->data_len : 2;
	const char *data = p->data && p->data_len ? p->data : "{}";
	char pre[LH_TYPE_MAX + LH_CHANNEL_MAX + 64];
	int prelen = snprintf(pre, sizeof(pre),
	                      "{\"type\":\"%s\",\"channel\":\"%s\",\"offset\":", p->type, name);
	char head[48];
	int headlen = snprintf(head, sizeof(head), ",\"ts\":%lld,\"data\":", (long long)p->ts_ms);
	char *suffix = malloc((size_t)headlen + dlen + 2);
	if (!suffix)
		return LH_ENOMEM;
	memcpy(suffix, head, (size_t)headlen);
	memcpy(suffix + headlen, data, dlen);
	suffix[(size_t)headlen + dlen] = '}';
	size_t suflen = (size_t)headlen + dlen + 1;

	uint32_t size, ttl;
	hist_kind_of(&b->hist, name, strlen(name), &size, &ttl);
	char ssize[16], sttl[16], epoch[17], key[20], swin[16], digest[20];
	snprintf(ssize, sizeof(ssize), "%u", size);
	snprintf(sttl, sizeof(sttl), "%u", ttl);
	snprintf(epoch, sizeof(epoch), "%016llx", (unsigned long long)rng_next(&b->rng));
	snprintf(key, sizeof(key), "%llx", (unsigned long long)p->conflate_key);
	snprintf(swin, sizeof(swin), "%u", win);
	snprintf(digest, sizeof(digest), "%016llx", (unsigned long long)idem_digest(p));
	const char *argv[MAX_PUB_ARGS] = {full ? "EVAL" : "EVALSHA",
	                                  full ? publish_lua : b->sha,
	                                  "3",
	                                  meta,
	                                  stream,
	                                  idem,
	                                  pre,
	                                  suffix,
	                                  ssize,
	                                  sttl,
	                                  epoch,
	                                  chan,
	                                  b->node,
	                                  key,
	                                  swin,
	                                  digest};
	const char *verb = b->sharded ? "SPUBLISH" : "PUBLISH";
	const char *args[MAX_PUB_ARGS + 1];
	size_t lens[MAX_PUB_ARGS + 1];
	for (int k = 0; k < MAX_PUB_ARGS; k++) {
		args[k] = argv[k];
		/* The frame's prefix and suffix are counted, not terminated. */
		lens[k] = k == 6 ? (size_t)prelen : k == 7 ? suflen : strlen(argv[k]);
	}
	args[MAX_PUB_ARGS] = verb;
	lens[MAX_PUB_ARGS] = strlen(verb);
	struct pending pd = {.on_reply = on_publish, .pj = pj, .chan = i};
	int rc = send_argv(b, &b->cmd, MAX_PUB_ARGS + 1, args, lens, &pd);
	free(suffix);
	return rc;
}

static void pub_finish(struct broker *b, struct pubjob *pj)
{
	if (--pj->left > 0)
		return;
	post_pub_done(b, pj->p, pj->status);
	free(pj);
}

/* Reads "offset epoch [digest]" into pos. */
static int parse_result(const redisReply *r, struct pub_position *pos, char *digest)
{
	if (r->type != REDIS_REPLY_STRING)
		return -1;
	char buf[96];
	if (r->len >= sizeof(buf))
		return -1;
	memcpy(buf, r->str, r->len);
	buf[r->len] = '\0';
	unsigned long long off;
	char ep[17] = "", dg[20] = "";
	int n = sscanf(buf, "%llu %16s %19s", &off, ep, dg);
	if (n < 2 || !broker_epoch_ok(ep, strlen(ep)))
		return -1;
	pos->offset = off;
	memcpy(pos->epoch, ep, 17);
	pos->subscribers = 0;
	if (digest)
		snprintf(digest, 20, "%s", dg);
	return 0;
}

static void on_publish(struct broker *b, struct pending *pd, redisReply *r)
{
	struct pubjob *pj = pd->pj;
	struct publication *p = pj->p;
	int i = pd->chan;
	if (!r) {
		pj->status = pj->status ? pj->status : LH_EUNAVAILABLE;
	} else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0 &&
	           !pj->retried[i]) {
		/* Redis lost its script cache (restart, SCRIPT FLUSH): EVAL
		 * sends the text, which loads it again. */
		pj->retried[i] = true;
		if (send_publish(b, pj, i, true) == 0)
			return;
		pj->status = LH_ENOMEM;
	} else if (r->type == REDIS_REPLY_ERROR) {
		log_warn("event=redis_publish_failed reply=\"%s\"", r->str);
		set_error(b, "publish script: ", r->str);
		pj->status = pj->status ? pj->status : LH_EUNAVAILABLE;
		if (strncmp(r->str, "READONLY", 8) == 0) {
			/* The primary became a replica (a failover): no write
			 * will pass on this connection; reconnect (ROLE is
			 * checked again) and report down meanwhile. */
			pub_finish(b, pj);
			drop(b, "Redis became a read-only replica");
			return;
		}
	} else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	           r->element[0]->type == REDIS_REPLY_STRING) {
		bool dup = strcmp(r->element[0]->str, "dup") == 0;
		char digest[20];
		if (parse_result(r->element[1], &p->pos[i], digest)) {
			pj->status = LH_EIO;
		} else if (dup) {
			char want[20];
			snprintf(want, sizeof(want), "%016llx", (unsigned long long)idem_digest(p));
			if (strcmp(digest, want) != 0)
				pj->status = pj->status ? pj->status : LH_EEXIST;
			p->duplicate = true;
		}
	} else {
		pj->status = LH_EIO;
	}
	pub_finish(b, pj);
}

static void do_publish(struct broker *b, struct publication *p)
{
	if (b->cmd.st != C_READY || !b->was_up) {
		post_pub_done(b, p, LH_EUNAVAILABLE);
		return;
	}
	struct pubjob *pj = calloc(1, sizeof(*pj));
	if (!pj) {
		post_pub_done(b, p, LH_ENOMEM);
		return;
	}
	pj->p = p;
	pj->left = p->nchannels;
	p->subscribers = 0;
	p->duplicate = false;
	memset(p->pos, 0, sizeof(p->pos));
	int sent = 0;
	for (int i = 0; i < p->nchannels; i++) {
		if (send_publish(b, pj, i, false) == 0) {
			sent++;
		} else {
			pj->status = LH_ENOMEM;
			pj->left--;
		}
	}
	if (sent == 0) {
		post_pub_done(b, p, pj->status);
		free(pj);
	}
}

/* ------------------------------------------------------------------------
 * Jobs and I/O (broker thread)
 * ------------------------------------------------------------------------ */

static void on_user(struct broker *b, struct pending *pd, redisReply *r)
{
	post_reply(b, pd->fn, pd->arg, r);
}

static void run_job(struct broker *b, struct job *j)
{
	bool ready = b->cmd.st == C_READY && b->was_up;
	switch (j->kind) {
	case J_CMD:
		if (!ready) {
			post_reply(b, j->fn, j->arg, NULL);
		} else {
			struct pending pd = {.on_reply = on_user, .fn = j->fn, .arg = j->arg};
			if (send_raw(b, &b->cmd, j->cmd, (size_t)j->cmdlen, &pd))
				post_reply(b, j->fn, j->arg, NULL);
		}
		break;
	case J_RAW:
		if (ready) {
			struct pending pd = {.on_reply = on_internal};
			send_raw(b, &b->cmd, j->cmd, (size_t)j->cmdlen, &pd);
		}
		break;
	case J_LISTEN: {
		char **names = realloc(b->listen_names, (b->nlisten_names + 1) * sizeof(*names));
		char *copy = strdup(j->name);
		if (!names || !copy) {
			free(copy);
			if (names)
				b->listen_names = names;
			log_error("event=redis_listen_failed reason=\"out of memory\"");
			break;
		}
		b->listen_names = names;
		b->listen_names[b->nlisten_names++] = copy;
		if (b->resubscribed && send_subscribe(b, "SUBSCRIBE", copy) == 0 && !b->was_up)
			b->confirming++;
		break;
	}
	case J_FOLLOW: do_follow(b, j); break;
	case J_UNFOLLOW: do_unfollow(b, j->name); break;
	case J_PUBLISH: do_publish(b, j->pub); break;
	case J_LIMITS: b->hist = *j->hist; break;
	}
	job_free(j);
}

static void run_jobs(struct broker *b)
{
	uint64_t v;
	if (read(b->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_warn("event=redis_eventfd_read_failed");
	struct mpsc_node *n = mpsc_take(&b->jobs, NULL);
	while (n) {
		struct mpsc_node *next = n->next;
		run_job(b, (struct job *)n);
		n = next;
	}
}

/* A message or subscription reply on the sub connection. Takes r. */
static void on_sub_reply(struct broker *b, redisReply *r)
{
	if (r->type == REDIS_REPLY_ARRAY && r->elements >= 3 &&
	    r->element[0]->type == REDIS_REPLY_STRING &&
	    r->element[1]->type == REDIS_REPLY_STRING) {
		const char *kind = r->element[0]->str;
		const char *name = r->element[1]->str;
		size_t len = r->element[1]->len;
		if ((!strcmp(kind, "smessage") || !strcmp(kind, "message")) &&
		    r->element[2]->type == REDIS_REPLY_STRING) {
			atomic_fetch_add_explicit(&b->st_received, 1, memory_order_relaxed);
			struct ev *e = ev_new(E_CHAN_MSG);
			if (!e)
				goto out;
			e->reply = r;
			if (!strcmp(kind, "message")) {
				for (size_t i = 0; i < b->nlisten_names; i++)
					if (!strcmp(b->listen_names[i], name)) {
						e->kind = E_LISTEN_MSG;
						e->idx = (int)i;
					}
			}
			post(b, e);
			return;
		}
		if (!strcmp(kind, "ssubscribe") || !strcmp(kind, "subscribe")) {
			on_subscribed(b, name, len, kind[0] == 's' && kind[1] == 's');
			goto out;
		}
		goto out; /* unsubscribe confirmations */
	}
	/* Anything else answers a command of the handshake. */
	struct pending pd;
	if (fifo_pop(&b->sub, &pd)) {
		pd.on_reply(b, &pd, r);
	} else if (r->type == REDIS_REPLY_ERROR) {
		log_warn("event=redis_sub_error reply=\"%s\"", r->str);
	}
out:
	freeReplyObject(r);
}

/* Reads and dispatches what c has. Returns false when the connection was
 * dropped. */
static bool conn_read(struct broker *b, struct rconn *c)
{
	char buf[READ_CHUNK];
	for (;;) {
		ssize_t n = read(c->fd, buf, sizeof(buf));
		if (n == 0) {
			drop(b, "connection closed by Redis");
			return false;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			char why[96];
			snprintf(why, sizeof(why), "read: %s", strerror(errno));
			drop(b, why);
			return false;
		}
		if (redisReaderFeed(c->rd, buf, (size_t)n) != REDIS_OK) {
			drop(b, "bad reply from Redis");
			return false;
		}
		for (;;) {
			void *rep = NULL;
			if (redisReaderGetReply(c->rd, &rep) != REDIS_OK) {
				drop(b, "bad reply from Redis");
				return false;
			}
			if (!rep)
				break;
			redisReply *r = rep;
			if (c == &b->sub) {
				on_sub_reply(b, r);
			} else {
				struct pending pd;
				if (!fifo_pop(c, &pd)) {
					freeReplyObject(r);
					drop(b, "a reply nobody asked for");
					return false;
				}
				if (pd.on_reply == on_user) {
					post_reply(b, pd.fn, pd.arg, r); /* takes r */
				} else {
					pd.on_reply(b, &pd, r);
					freeReplyObject(r);
				}
			}
			if (c->fd < 0)
				return false; /* a handler dropped the connection */
		}
		if ((size_t)n < sizeof(buf))
			break;
	}
	return true;
}

static bool conn_write(struct broker *b, struct rconn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return true;
			char why[96];
			snprintf(why, sizeof(why), "write: %s", strerror(errno));
			drop(b, why);
			return false;
		}
		c->outoff += (size_t)n;
	}
	c->outoff = c->outlen = 0;
	return true;
}

static bool conn_connected(struct broker *b, struct rconn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);
	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		char why[96];
		snprintf(why, sizeof(why), "connect: %s", strerror(err));
		drop(b, why);
		return false;
	}
	if (start_handshake(b, c)) {
		drop(b, "out of memory");
		return false;
	}
	if (c->st == C_READY)
		maybe_ready(b);
	return true;
}

static void handle_events(struct broker *b, struct rconn *c, short revents)
{
	if (c->fd < 0)
		return;
	if (c->st == C_CONNECTING) {
		if (revents & (POLLOUT | POLLERR | POLLHUP))
			conn_connected(b, c);
		return;
	}
	if ((revents & (POLLIN | POLLHUP | POLLERR)) && !conn_read(b, c))
		return;
	if (c->fd >= 0 && c->outlen > c->outoff)
		conn_write(b, c);
}

static void *broker_main(void *arg)
{
	struct broker *b = arg;
	b->retry_at_ms = 0;
	while (!atomic_load(&b->stop)) {
		int64_t now = now_ms();
		if (b->cmd.st == C_DOWN && now >= b->retry_at_ms)
			try_connect(b);
		if (!b->was_up && b->cmd.st != C_DOWN && now_ms() > b->deadline_ms)
			drop(b, "connect or handshake timed out");
		keepalive(b, now);
		/* Replies first: a command queued now may go out in the same write. */
		struct pollfd fds[3] = {{.fd = b->efd, .events = POLLIN}};
		struct rconn *cs[2] = {&b->cmd, &b->sub};
		for (int i = 0; i < 2; i++) {
			fds[1 + i].fd = cs[i]->fd;
			fds[1 + i].events =
			        cs[i]->st == C_CONNECTING
			                ? POLLOUT
			                : POLLIN | (cs[i]->outlen > cs[i]->outoff ? POLLOUT : 0);
		}
		int timeout = b->was_up ? PING_EVERY_MS / 4 : -1;
		if (b->cmd.st == C_DOWN)
			timeout = (int)(b->retry_at_ms - now_ms());
		else if (!b->was_up)
			timeout = (int)(b->deadline_ms - now_ms());
		if (timeout < 0 && (b->cmd.st == C_DOWN || !b->was_up))
			timeout = 0;
		int n = poll(fds, 3, timeout);
		if (n < 0 && errno != EINTR) {
			log_error("event=redis_poll_failed error=\"%s\"", strerror(errno));
			break;
		}
		if (n <= 0)
			continue;
		for (int i = 0; i < 2; i++)
			if (fds[1 + i].fd >= 0 && fds[1 + i].revents)
				handle_events(b, cs[i], fds[1 + i].revents);
		if (fds[0].revents & POLLIN)
			run_jobs(b);
		for (int i = 0; i < 2; i++)
			if (cs[i]->fd >= 0 && cs[i]->st != C_CONNECTING &&
			    cs[i]->outlen > cs[i]->outoff)
				conn_write(b, cs[i]);
		atomic_store_explicit(&b->st_inflight, b->cmd.n, memory_order_relaxed);
	}
	/* Stopping: whatever waits is failed, on the service thread's side. */
	conn_reset(&b->cmd);
	conn_reset(&b->sub);
	set_up(b, false);
	fail_pending(b, &b->cmd);
	fail_pending(b, &b->sub);
	run_jobs(b);
	return NULL;
}

/* ------------------------------------------------------------------------
 * The service thread's side
 * ------------------------------------------------------------------------ */

static void run_event(struct broker *b, struct ev *e)
{
	switch (e->kind) {
	case E_REPLY: e->fn(e->arg, e->reply); break;
	case E_LISTEN_MSG:
		if (e->idx >= 0 && (size_t)e->idx < b->nlisteners) {
			struct listener *l = &b->listeners[e->idx];
			l->fn(l->arg, e->reply->element[2]->str, e->reply->element[2]->len);
		}
		break;
	case E_CHAN_MSG: {
		/* "P:{T:C}": the tenant has no ':' and names no '}'. The name
		 * comes from Redis: it is checked to be ours before anything
		 * past its length is looked at. */
		const char *name = e->reply->element[1]->str;
		size_t plen = strlen(b->prefix);
		size_t len = e->reply->element[1]->len;
		if (!b->chan_fn || len < plen + 6 || memcmp(name, b->prefix, plen) != 0 ||
		    name[plen] != ':' || name[plen + 1] != '{' || name[len - 1] != '}')
			break;
		const char *t = name + plen + 2;
		const char *colon = memchr(t, ':', (size_t)(name + len - 1 - t));
		if (!colon)
			break;
		char tenant[LH_TENANT_MAX + 1], chan[LH_CHANNEL_MAX + 1];
		size_t tl = (size_t)(colon - t), cl = (size_t)(name + len - 1 - (colon + 1));
		if (tl == 0 || tl > LH_TENANT_MAX || cl == 0 || cl > LH_CHANNEL_MAX)
			break;
		memcpy(tenant, t, tl);
		tenant[tl] = '\0';
		memcpy(chan, colon + 1, cl);
		chan[cl] = '\0';
		b->chan_fn(b->chan_arg, tenant, chan, e->reply->element[2]->str,
		           e->reply->element[2]->len);
		break;
	}
	case E_STATE:
		for (size_t i = 0; i < b->nstates; i++)
			b->states[i].fn(b->states[i].arg, e->ok);
		break;
	case E_FOLLOW: e->done(e->arg, e->ok); break;
	case E_PUB_DONE:
		atomic_fetch_sub(&b->pubs, 1);
		if (e->pub->on_done)
			e->pub->on_done(e->pub);
		break;
	}
	if (e->reply)
		freeReplyObject(e->reply);
	free(e);
}

void broker_service(struct broker *b)
{
	broker_service_some(b, SIZE_MAX);
}

bool broker_service_some(struct broker *b, size_t max)
{
	/* Events taken but not run yet wait in backlog, oldest first; new ones
	 * are taken only once it is empty, so order holds. */
	if (!b->backlog)
		b->backlog = mpsc_take(&b->events, NULL);
	size_t n = 0;
	while (b->backlog && n < max) {
		struct mpsc_node *e = b->backlog;
		b->backlog = e->next;
		run_event(b, (struct ev *)e);
		n++;
		if (!b->backlog && n < max)
			b->backlog = mpsc_take(&b->events, NULL);
	}
	return b->backlog != NULL;
}

int broker_cmd(struct broker *b, broker_reply_fn fn, void *arg, int argc, const char **argv,
               const size_t *lens)
{
	if (!atomic_load(&b->up))
		return LH_EUNAVAILABLE;
	struct job *j = job_new(J_CMD, NULL);
	if (!j)
		return LH_ENOMEM;
	j->cmdlen = redisFormatCommandArgv(&j->cmd, argc, argv, lens);
	if (j->cmdlen < 0) {
		j->cmd = NULL;
		job_free(j);
		return LH_ENOMEM;
	}
	j->fn = fn;
	j->arg = arg;
	return queue_job(b, j);
}

int broker_listen(struct broker *b, const char *name,
                  void (*fn)(void *arg, const char *msg, size_t len), void *arg)
{
	struct listener *l = realloc(b->listeners, (b->nlisteners + 1) * sizeof(*l));
	if (!l)
		return LH_ENOMEM;
	b->listeners = l;
	char *copy = strdup(name);
	struct job *j = job_new(J_LISTEN, name);
	if (!copy || !j) {
		free(copy);
		free(j);
		return LH_ENOMEM;
	}
	j->idx = (int)b->nlisteners;
	l[b->nlisteners++] = (struct listener){copy, fn, arg};
	return queue_job(b, j);
}

bool broker_up(const struct broker *b)
{
	return atomic_load(&b->up);
}

const char *broker_node_id(const struct broker *b)
{
	return b->node;
}

int broker_on_state(struct broker *b, void (*fn)(void *arg, bool up), void *arg)
{
	struct state_cb *s = realloc(b->states, (b->nstates + 1) * sizeof(*s));
	if (!s)
		return LH_ENOMEM;
	b->states = s;
	s[b->nstates++] = (struct state_cb){fn, arg};
	return 0;
}

size_t broker_key(const struct broker *b, char *buf, size_t cap, const char *tenant,
                  const char *name, const char *suffix)
{
	int n = snprintf(buf, cap, "%s:{%s:%s}%s", b->prefix, tenant, name, suffix);
	return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

void broker_set_channel_fn(struct broker *b, broker_msg_fn fn, void *arg)
{
	b->chan_fn = fn;
	b->chan_arg = arg;
}

int broker_follow(struct broker *b, const char *tenant, const char *name,
                  void (*done)(void *arg, bool ok), void *arg)
{
	char key[BROKER_PREFIX_MAX + LH_TENANT_MAX + LH_CHANNEL_MAX + 8];
	if (!broker_key(b, key, sizeof(key), tenant, name, ""))
		return LH_EINVAL;
	struct job *j = job_new(J_FOLLOW, key);
	if (!j)
		return LH_ENOMEM;
	j->done = done;
	j->arg = arg;
	return queue_job(b, j);
}

void broker_unfollow(struct broker *b, const char *tenant, const char *name)
{
	char key[BROKER_PREFIX_MAX + LH_TENANT_MAX + LH_CHANNEL_MAX + 8];
	if (!broker_key(b, key, sizeof(key), tenant, name, ""))
		return;
	struct job *j = job_new(J_UNFOLLOW, key);
	if (!j) {
		log_error("event=redis_unfollow_lost reason=\"out of memory\"");
		return;
	}
	queue_job(b, j);
}

void broker_set_limits(struct broker *b, const struct hist_limits *hist, uint32_t idem_window_s)
{
	atomic_store(&b->idem_window_s, idem_window_s);
	struct job *j = job_new(J_LIMITS, NULL);
	struct hist_limits *copy = malloc(sizeof(*copy));
	if (!j || !copy) {
		free(j);
		free(copy);
		log_error("event=redis_reload_failed reason=\"out of memory\"");
		return;
	}
	*copy = *hist;
	j->hist = copy;
	queue_job(b, j);
}

int broker_publish(struct broker *b, struct publication *p)
{
	if (!atomic_load(&b->up) || atomic_load(&b->stop))
		return LH_EUNAVAILABLE;
	if (atomic_fetch_add(&b->pubs, 1) >= b->max_pubs) {
		atomic_fetch_sub(&b->pubs, 1);
		return LH_EFULL;
	}
	struct job *j = job_new(J_PUBLISH, NULL);
	if (!j) {
		atomic_fetch_sub(&b->pubs, 1);
		return LH_ENOMEM;
	}
	j->pub = p;
	return queue_job(b, j);
}

int broker_publish_raw(struct broker *b, const char *tenant, const char *name, const char *frame,
                       size_t len)
{
	if (!atomic_load(&b->up))
		return LH_EUNAVAILABLE;
	char key[BROKER_PREFIX_MAX + LH_TENANT_MAX + LH_CHANNEL_MAX + 8];
	if (!broker_key(b, key, sizeof(key), tenant, name, ""))
		return LH_EINVAL;
	size_t nl = strlen(b->node);
	char *msg = malloc(3 + nl + len);
	struct job *j = job_new(J_RAW, NULL);
	if (!msg || !j) {
		free(msg);
		free(j);
		return LH_ENOMEM;
	}
	msg[0] = 'R';
	msg[1] = ' ';
	memcpy(msg + 2, b->node, nl);
	msg[2 + nl] = '\n';
	memcpy(msg + 3 + nl, frame, len);
	const char *argv[3] = {b->sharded ? "SPUBLISH" : "PUBLISH", key, msg};
	size_t lens[3] = {strlen(argv[0]), strlen(key), 3 + nl + len};
	j->cmdlen = redisFormatCommandArgv(&j->cmd, 3, argv, lens);
	free(msg);
	if (j->cmdlen < 0) {
		j->cmd = NULL;
		job_free(j);
		return LH_ENOMEM;
	}
	return queue_job(b, j);
}

void broker_stats_read(const struct broker *b, struct broker_stats *out)
{
	struct broker *m = (struct broker *)b;
	out->up = atomic_load(&m->up);
	out->reconnects = atomic_load(&m->st_reconnects);
	out->cmds_in_flight = atomic_load(&m->st_inflight);
	out->publishes = atomic_load(&m->st_publishes);
	out->publish_failures = atomic_load(&m->st_pub_failures);
	out->messages_received = atomic_load(&m->st_received);
	out->channels_followed = atomic_load(&m->st_followed);
	out->commands = atomic_load(&m->st_commands);
}

/* ------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------ */

struct broker *broker_new(const struct broker_config *cfg)
{
	struct broker *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	const char *why = NULL;
	if (broker_url_parse(cfg->url, &b->url, &why)) {
		log_error("event=redis_url_invalid reason=\"%s\"", why);
		free(b);
		return NULL;
	}
	b->rng = seed();
	snprintf(b->prefix, sizeof(b->prefix), "%s", cfg->prefix ? cfg->prefix : "livehub");
	if (cfg->node_id && cfg->node_id[0])
		snprintf(b->node, sizeof(b->node), "%s", cfg->node_id);
	else
		snprintf(b->node, sizeof(b->node), "%016llx",
		         (unsigned long long)rng_next(&b->rng));
	if (cfg->hist)
		b->hist = *cfg->hist;
	atomic_init(&b->idem_window_s, cfg->idem_window_s);
	b->max_pubs = cfg->max_publishes ? cfg->max_publishes : 65536;
	b->backoff_min_ms = cfg->backoff_min_ms > 0 ? cfg->backoff_min_ms : 100;
	b->backoff_max_ms = cfg->backoff_max_ms >= b->backoff_min_ms ? cfg->backoff_max_ms : 5000;
	mpsc_init(&b->jobs);
	mpsc_init(&b->events);
	b->cmd = (struct rconn){.name = "cmd", .fd = -1};
	b->sub = (struct rconn){.name = "sub", .fd = -1};
	b->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	b->follows = dict_new(rng_next(&b->rng), offsetof(struct follow, name));
	if (b->efd < 0 || !b->follows || pthread_mutex_init(&b->err_lock, NULL) != 0) {
		if (b->efd >= 0)
			close(b->efd);
		dict_free(b->follows);
		free(b);
		return NULL;
	}
	return b;
}

int broker_start(struct broker *b, void (*wake)(void *), void *wake_arg)
{
	b->wake = wake;
	b->wake_arg = wake_arg;
	if (pthread_create(&b->thread, NULL, broker_main, b) != 0)
		return LH_EIO;
	b->started = true;
	return 0;
}

bool broker_wait_first(struct broker *b, int timeout_ms)
{
	for (int waited = 0; !atomic_load(&b->tried) && waited < timeout_ms; waited += 5)
		nanosleep(&(struct timespec){0, 5 * 1000 * 1000}, NULL);
	return atomic_load(&b->up);
}

void broker_stop(struct broker *b)
{
	if (!b || !b->started)
		return;
	atomic_store(&b->stop, true);
	uint64_t one = 1;
	if (write(b->efd, &one, sizeof(one)) < 0)
		log_warn("event=redis_stop_wake_failed");
	pthread_join(b->thread, NULL);
	b->started = false;
	/* Jobs that raced with the stop are failed here; then every callback
	 * owed runs. */
	run_jobs(b);
	broker_service(b);
}

void broker_free(struct broker *b)
{
	if (!b)
		return;
	/* Whatever came after broker_stop (unfollows of the connections
	 * closed since) has nobody to go to. */
	for (struct mpsc_node *n = mpsc_take(&b->jobs, NULL), *next; n; n = next) {
		next = n->next;
		job_free((struct job *)n);
	}
	broker_service(b);
	size_t pos = 0;
	struct dict_entry de;
	while (dict_next(b->follows, &pos, &de)) {
		struct follow *f = de.val;
		for (struct waiter *w = f->waiters, *next; w; w = next) {
			next = w->next;
			free(w);
		}
		free(f);
	}
	dict_free(b->follows);
	for (size_t i = 0; i < b->nlisteners; i++)
		free(b->listeners[i].name);
	free(b->listeners);
	for (size_t i = 0; i < b->nlisten_names; i++)
		free(b->listen_names[i]);
	free(b->listen_names);
	free(b->states);
	free(b->cmd.out);
	free(b->cmd.fifo);
	free(b->sub.out);
	free(b->sub.fifo);
	close(b->efd);
	pthread_mutex_destroy(&b->err_lock);
	free(b);
}
