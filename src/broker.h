/*
 * broker: how several livehub nodes act as one hub over Redis.
 *
 * Two implementations sit behind one switch: the memory broker (the
 * default: no struct broker at all, callers test `if (broker)`, the hub
 * works alone exactly as on one node) and the Redis broker below, chosen
 * by LIVEHUB_REDIS_URL.
 *
 * Threads. The Redis broker runs one thread of its own: a poll() loop over
 * two non-blocking connections to Redis (commands; pub/sub) and an eventfd
 * that other threads ring when they queue work for it. hiredis is used only
 * to format commands and to parse replies (0.14's async API does not know
 * sharded pub/sub). Replies and pub/sub messages go back to the service
 * thread through a lock-free queue and a wake (lws_cancel_service), and
 * the service thread runs every callback in broker_service(): the hub
 * stays single-threaded, and no callback ever runs on the broker thread.
 *
 * Keys (P = the prefix, T = tenant, C = the channel as clients name it):
 *   P:{T:C}:stream  history (XADD, MAXLEN ~ the kind's history size)
 *   P:{T:C}:meta    hash: epoch (16 hex), top (last offset)
 *   P:{T:C}         sharded pub/sub channel of the channel's events
 *   P:ctl           node-wide control channel (broker_listen)
 *
 * Only the Redis broker touches hiredis (the reply type is opaque here).
 */
#ifndef LH_BROKER_H
#define LH_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct broker;     /* NULL in memory mode: callers test `if (broker)` */
struct redisReply; /* hiredis */
struct publication;
struct hist_limits;

/* ------------------------------------------------------------------------
 * The contract shared with the other Redis helpers (redis-contract.md).
 * ------------------------------------------------------------------------ */

/* Called on the SERVICE THREAD with the reply (NULL when Redis is unavailable or the
 * connection dropped before the reply; an error reply is passed as is). The reply
 * is freed after fn returns. */
typedef void (*broker_reply_fn)(void *arg, struct redisReply *reply);

/* Service thread. Queues one command (argv copied) on the command connection.
 * Returns 0, or LH_EUNAVAILABLE when Redis is down right now (fn is not called). */
int broker_cmd(struct broker *b, broker_reply_fn fn, void *arg, int argc, const char **argv,
               const size_t *lens);

/* Service thread. Messages on the (non-sharded) pub/sub channel `name` (full name, prefix
 * included) are passed to fn on the service thread, in order, for as long as the node
 * lives, across reconnects. For node-wide control traffic (presence heartbeats, control
 * RPCs). Returns 0 or LH_ENOMEM. */
int broker_listen(struct broker *b, const char *name,
                  void (*fn)(void *arg, const char *msg, size_t len), void *arg);

/* Any thread. Connected and scripts loaded. */
bool broker_up(const struct broker *b);
/* Any thread. This node's id (LIVEHUB_NODE_ID or the random default). */
const char *broker_node_id(const struct broker *b);
/* Service thread: fn(arg, up) when the connection state changes (up after a reconnect:
 * everything listened to / subscribed is re-established first). Several may be set. */
int broker_on_state(struct broker *b, void (*fn)(void *arg, bool up), void *arg);

/* ------------------------------------------------------------------------
 * Configuration and life cycle.
 * ------------------------------------------------------------------------ */

#define BROKER_HOST_MAX   256
#define BROKER_SECRET_MAX 512
#define BROKER_PREFIX_MAX 64
#define BROKER_NODE_MAX   64

/* A parsed LIVEHUB_REDIS_URL. */
struct broker_url {
	bool unix_socket;                 /* unix:///path */
	char host[BROKER_HOST_MAX];       /* host name or address, or the socket path */
	int port;                         /* default 6379 */
	char user[BROKER_SECRET_MAX];     /* "" = none (AUTH password alone) */
	char password[BROKER_SECRET_MAX]; /* "" = no AUTH */
	int db;                           /* SELECT db when > 0 */
};

/* Parses `redis://[[user]:password@]host[:port][/db]` or `unix:///path`
 * (user and password may be percent-encoded; an IPv6 host is written in
 * brackets). Pure: no I/O. Returns 0, or LH_EINVAL with *why set to a
 * static text naming what is wrong. */
int broker_url_parse(const char *url, struct broker_url *out, const char **why);

struct broker_config {
	const char *url;                /* LIVEHUB_REDIS_URL; must parse */
	const char *prefix;             /* LIVEHUB_REDIS_PREFIX */
	const char *node_id;            /* LIVEHUB_NODE_ID; "" = random 16 hex */
	const struct hist_limits *hist; /* history size and TTL per kind (copied) */
	uint32_t idem_window_s;         /* idempotency window of publishes; 0: keys ignored */
	uint32_t max_publishes;         /* publications waiting for Redis at most (LH_EFULL) */
	/* Reconnect backoff bounds (ms): doubled from min up to max, jittered. */
	int backoff_min_ms;
	int backoff_max_ms;
};

/* Returns a broker (not connected, no thread yet), or NULL after logging
 * why (a bad URL, out of memory). */
struct broker *broker_new(const struct broker_config *cfg);
/* Starts the broker thread. wake(arg) is called from the broker thread when
 * callbacks are ready for broker_service(). Returns 0 or LH_EIO. */
int broker_start(struct broker *b, void (*wake)(void *), void *wake_arg);
/* Waits (at most timeout_ms) until the first connection attempt has ended;
 * returns whether Redis is up. For start-up, before the service loop runs
 * (callbacks owed meanwhile run at its first turn). */
bool broker_wait_first(struct broker *b, int timeout_ms);
/* Service thread: runs every callback that is ready (replies, messages,
 * state changes, finished publications). Cheap when there is none. */
void broker_service(struct broker *b);
/* Service thread: runs at most max callbacks, oldest first; returns true
 * when more are waiting (the caller runs them at its next turn, after its
 * writes, so that a burst from Redis cannot fill every send queue at once). */
bool broker_service_some(struct broker *b, size_t max);
/* Stops and joins the broker thread; callbacks still owed are run with a
 * NULL reply (publications fail with LH_EUNAVAILABLE) on the calling
 * thread, which must be the service thread (or the service thread must be
 * gone). */
void broker_stop(struct broker *b);
/* Frees a stopped broker. NULL is a no-op. */
void broker_free(struct broker *b);

/* ------------------------------------------------------------------------
 * Channels: publishing, following (sharded pub/sub), history.
 * ------------------------------------------------------------------------ */

/* The Redis names of a channel (tenant, name as clients call it): writes
 * "P:{T:C}" plus suffix ("", ":stream", ":meta") into buf. Returns the
 * length, or 0 when it does not fit. */
size_t broker_key(const struct broker *b, char *buf, size_t cap, const char *tenant,
                  const char *name, const char *suffix);

/* A channel message (sharded pub/sub) arrived for (tenant, name): msg is
 * the frame text as published (broker_frame_split() tells the kinds
 * apart). Service thread. */
typedef void (*broker_msg_fn)(void *arg, const char *tenant, const char *name, const char *msg,
                              size_t len);
/* Sets who receives channel messages (one receiver: the WebSocket front). */
void broker_set_channel_fn(struct broker *b, broker_msg_fn fn, void *arg);

/* Any thread. New history sizes/TTLs per kind and idempotency window for
 * the publications handed over from now on (a SIGHUP reload). Copied. */
void broker_set_limits(struct broker *b, const struct hist_limits *hist, uint32_t idem_window_s);

/* Service thread. Starts following (SSUBSCRIBE) the channel. Counted:
 * every follow needs its unfollow. When done is not NULL, done(arg, ok) is
 * called on the service thread once the subscription is confirmed (ok) or
 * could not be made (Redis down: !ok); messages published after a
 * confirmation are delivered. Returns 0 or LH_ENOMEM (done not called). */
int broker_follow(struct broker *b, const char *tenant, const char *name,
                  void (*done)(void *arg, bool ok), void *arg);
/* Service thread. Drops one follow of the channel; the last one
 * unsubscribes. */
void broker_unfollow(struct broker *b, const char *tenant, const char *name);

/* Any thread (the service thread, in livehub). Hands the publication to the broker thread,
 * which runs the publish script for each of its channels. p->on_done is
 * later called on the service thread with p->status 0 and p->pos[] filled
 * with Redis's offsets and epochs, or LH_EUNAVAILABLE. The caller still
 * delivers nothing itself: every node (this one included) gets the event
 * back from sharded pub/sub. Returns 0, or LH_EUNAVAILABLE (Redis down now:
 * p not taken), LH_EFULL (max_publishes are waiting) or LH_ENOMEM. */
int broker_publish(struct broker *b, struct publication *p);

/* Service thread. Publishes a frame without offset or history (client
 * events, presence join/leave) on the channel's pub/sub so other nodes'
 * subscribers get it too. Returns 0 or LH_EUNAVAILABLE / LH_ENOMEM. */
int broker_publish_raw(struct broker *b, const char *tenant, const char *name, const char *frame,
                       size_t len);

/* A channel message, split: kind 'E' an event with offset/epoch, 'R' a raw
 * frame (client event, presence), with the node that sent it. */
struct broker_msg {
	char kind;
	uint64_t offset; /* 'E' */
	char epoch[17];  /* 'E' */
	char node[BROKER_NODE_MAX];
	const char *frame; /* points into the message */
	size_t frame_len;
	uint64_t conflate_key; /* 'E' */
};
/* Parses a channel message as published by this module. Pure. Returns 0
 * or LH_EINVAL. */
int broker_msg_parse(const char *msg, size_t len, struct broker_msg *out);

/* Whether s[0..len) is an epoch as the scripts make them: 16 lowercase or
 * uppercase hex digits. Pure. (What Redis hands back is checked with it
 * before it goes into a frame or a gRPC string.) */
bool broker_epoch_ok(const char *s, size_t len);

/* The parts of an event frame (as published, read back from a stream). */
struct broker_frame {
	const char *type; /* not NUL-terminated */
	size_t type_len;
	uint64_t offset;
	int64_t ts_ms;
	const char *data; /* the JSON object text */
	size_t data_len;
};
/* Splits an event frame built by the publish script. Pure. Returns 0 or
 * LH_EINVAL (another shape). */
int broker_frame_parts(const char *frame, size_t len, struct broker_frame *out);

/* ------------------------------------------------------------------------
 * Stats (GetStats 53-62, /metrics). Any thread.
 * ------------------------------------------------------------------------ */

struct broker_stats {
	bool up;
	uint64_t reconnects;        /* connections (re)made after the first */
	uint64_t cmds_in_flight;    /* commands sent, reply not read yet */
	uint64_t publishes;         /* publications accepted by the publish script */
	uint64_t publish_failures;  /* publications failed (Redis down, script error) */
	uint64_t messages_received; /* channel messages read from pub/sub */
	uint64_t channels_followed; /* gauge: channels SSUBSCRIBEd now */
	uint64_t commands;          /* commands sent in all */
};
void broker_stats_read(const struct broker *b, struct broker_stats *out);
/* Any thread. Why Redis is (or was last) unavailable, for error messages. */
void broker_last_error(struct broker *b, char *buf, size_t cap);

#endif
