/*
 * hub: channels, subscriptions, tenants, users and the per-connection send
 * queues. Plain C with no I/O library headers; unit-tested alone.
 *
 * Threads: everything here runs on the service thread, except
 * hub_stats_read(), which any thread may call.
 *
 * Channels: clients name channels without their tenant ("job:42"); the hub
 * keys them as "tenant\x1fjob:42", so a name can only ever reach channels
 * of the caller's own tenant. Every connection is also, implicitly, on its
 * tenant channel "$tenant" and its user channel "$user:{user}".
 *
 * Transport: the hub asks the transport to write through want_write(); the
 * transport then takes frames with hub_conn_peek()/hub_conn_pop().
 */
#ifndef LH_HUB_H
#define LH_HUB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "history.h"
#include "publication.h"

struct hub;
struct hub_conn;

struct hub_transport {
	/* Frames were queued on an idle connection: ask for a write callback. */
	void (*want_write)(void *tctx);
	/* The connection must go (send queue overflow): close it with the
	 * WebSocket close code and reason. The transport calls hub_conn_close()
	 * later, from its own close callback. */
	void (*kill)(void *tctx, int close_code, const char *reason);
};

struct hub_limits {
	uint32_t max_subs_per_conn; /* explicit subscriptions per connection */
	uint32_t sendq_max_frames;  /* frames queued per connection before SLOW_CONSUMER */
	uint64_t sendq_max_bytes;   /* payload bytes queued per connection, likewise */
	struct hist_limits hist;    /* channel history: sizes, TTLs, global byte cap */
	uint32_t idem_window_s;     /* how long an idempotency key is remembered */
	uint32_t idem_max;          /* keys remembered at most (oldest forgotten first) */
};

/* Counters, written by the service thread, read by any thread. */
struct hub_stats {
	_Atomic uint64_t connections;
	_Atomic uint64_t users;
	_Atomic uint64_t tenants;
	_Atomic uint64_t channels;
	_Atomic uint64_t subscriptions;
	_Atomic uint64_t connections_total;
	_Atomic uint64_t messages_published;
	_Atomic uint64_t messages_delivered;
	_Atomic uint64_t messages_received;
	_Atomic uint64_t slow_consumers;
	_Atomic uint64_t conflated;        /* queued frames replaced by a newer one */
	_Atomic uint64_t dropped;          /* frames discarded with a slow consumer's queue */
	_Atomic uint64_t history_bytes;    /* gauge: memory held by channel histories */
	_Atomic uint64_t history_entries;  /* gauge: publications held in histories */
	_Atomic uint64_t recoveries;       /* subscribe with since answered recovered:true */
	_Atomic uint64_t recovery_misses;  /* ... answered recovered:false */
	_Atomic uint64_t deduplicated;     /* publishes answered from the idempotency table */
	_Atomic uint64_t idempotency_keys; /* gauge: keys remembered */
};

/* A plain copy of struct hub_stats. */
struct hub_stats_snapshot {
	uint64_t connections, users, tenants, channels, subscriptions;
	uint64_t connections_total, messages_published, messages_delivered;
	uint64_t messages_received, slow_consumers;
	uint64_t conflated, dropped, history_bytes, history_entries;
	uint64_t recoveries, recovery_misses, deduplicated, idempotency_keys;
};

/* Returns a hub, or NULL. The hub keeps pointers to lim and tr's functions
 * (copies the structs). */
struct hub *hub_new(const struct hub_limits *lim, const struct hub_transport *tr);
/* Frees the hub; every connection must be closed first. */
void hub_free(struct hub *h);
/* Replaces the limits (a SIGHUP reload). Existing subscriptions over a
 * lowered max_subs_per_conn stay; a queue over a lowered sendq_max_frames
 * overflows at its next frame. */
void hub_set_limits(struct hub *h, const struct hub_limits *lim);

/* Opens a connection of (tenant, user) and puts it on the implicit tenant
 * and user channels. tenant and user must pass name_tenant_ok/name_user_ok.
 * tctx is the transport's handle, passed back to want_write/kill.
 * Returns NULL when out of memory. */
struct hub_conn *hub_conn_open(struct hub *h, const char *tenant, const char *user, void *tctx);
/* Removes the connection from every channel, drops its queued frames and
 * frees it. */
void hub_conn_close(struct hub *h, struct hub_conn *c);

const char *hub_conn_tenant(const struct hub_conn *c);
const char *hub_conn_user(const struct hub_conn *c);
/* Bytes of a connection id with its NUL ("c" 7 hex "-" up to 11 digits). */
#define HUB_CONN_ID_MAX 24
/* Writes the connection's process-unique id, e.g. "c4f2a9e1-17", into buf
 * and returns buf. Formatted on demand: not stored per connection. */
const char *hub_conn_id(const struct hub_conn *c, char buf[HUB_CONN_ID_MAX]);

/* Subscribes c to the channel its client calls name (not reserved).
 * Returns 0, LH_EEXIST (already subscribed), LH_EINVAL (bad name),
 * LH_ELIMIT (too many subscriptions) or LH_ENOMEM. */
int hub_subscribe(struct hub *h, struct hub_conn *c, const char *name);
/* Where a channel stands, and what a recovery found (hub_subscribe_since). */
struct hub_position {
	uint64_t offset;  /* the channel's top offset: its last publication, 0 = none */
	char epoch[17];   /* 16 hex digits */
	bool recovered;   /* since was given and every missed publication is held */
	uint32_t replay;  /* publications hub_replay() will queue */
	const void *from; /* hub_replay's starting point; private */
};

/* A client's position in a channel: the last offset it saw, and the epoch. */
struct hub_since {
	bool given;
	uint64_t offset;
	char epoch[33];
};

/*
 * Subscribes like hub_subscribe and fills *pos. With since->given, also
 * decides recovery: recovered is true when since->epoch is the channel's
 * epoch and its history holds every publication after since->offset up to
 * the top; pos->replay then says how many there are. The caller queues its
 * reply, then calls hub_replay(pos) at once (nothing else may run on the
 * hub in between), so that the missed events follow the reply, in order,
 * before any live event.
 *
 * name may also be an implicit channel of c: "$tenant", "$user" or
 * "$user:{c's user}"; nothing is subscribed then (c is always on them) but
 * the position and the recovery are the same. Another reserved name is
 * LH_EINVAL.
 *
 * Returns 0 or LH_EEXIST (already subscribed; pos filled as well), or the
 * errors of hub_subscribe (pos not filled).
 */
int hub_subscribe_since(struct hub *h, struct hub_conn *c, const char *name,
                        const struct hub_since *since, struct hub_position *pos);
/* Queues the pos->replay publications found by hub_subscribe_since on c. */
void hub_replay(struct hub *h, struct hub_conn *c, const struct hub_position *pos);

/* Returns 0 or LH_ENOENT (not subscribed). */
int hub_unsubscribe(struct hub *h, struct hub_conn *c, const char *name);

/* Queues f (taking a new reference) on c, e.g. a reply. Returns 0, or
 * LH_EFULL when the queue is over its bound in frames or bytes (the
 * connection is then killed with SLOW_CONSUMER). A frame with a key
 * (f->key != 0, job:progress events) first takes the place of a queued
 * frame with the same key: that one is dropped and the new one goes to the
 * back of the queue, so a channel's frames stay in offset order. */
int hub_conn_send(struct hub *h, struct hub_conn *c, struct frame *f);
/*
 * Write contract. The hub calls want_write() only when a connection's queue
 * goes from empty to non-empty, never again while frames remain queued. So
 * on each writable callback the transport writes hub_conn_peek()'s frame,
 * then hub_conn_pop(), and asks for another callback itself while
 * hub_conn_queued() > 0. A connection killed as a slow consumer has its
 * queue emptied at once (peek returns NULL) and gets nothing more queued;
 * it stays subscribed until the transport calls hub_conn_close(), which
 * must not happen from inside kill() itself. A frame is popped in the same
 * callback that wrote it (lws copies what the socket does not take), so no
 * queued frame is ever partly written and conflation may drop any of them.
 */
/* The oldest queued frame, or NULL. */
struct frame *hub_conn_peek(struct hub_conn *c);
/* Drops the oldest queued frame (after the transport has written it). */
void hub_conn_pop(struct hub_conn *c);
/* Frames queued on c. */
size_t hub_conn_queued(const struct hub_conn *c);
/* Payload bytes queued on c. */
uint64_t hub_conn_queued_bytes(const struct hub_conn *c);
/*
 * Several messages per send (PROTOCOL.md "Several messages per frame").
 * Copies the oldest queued frames into buf, joined by '\n', as long as they
 * fit in cap bytes (at most max_frames of them), pops the ones it copied and
 * returns the bytes written, with *nframes set to their count. When fewer
 * than two frames would fit it takes nothing and returns 0: the transport
 * then writes hub_conn_peek()'s frame as it is, without a copy.
 */
size_t hub_conn_take_batch(struct hub_conn *c, unsigned char *buf, size_t cap, size_t max_frames,
                           size_t *nframes);

/* Publishes p: gives it the next offset in each channel, builds its event
 * frame once per channel, keeps a reference in the channel's history (when
 * its kind has one) and queues a reference on every subscriber. Fills
 * p->status, p->subscribers and p->pos[], then calls p->on_done(p) if set.
 * With p->idem_key set, a (tenant, key) seen inside the idempotency window
 * publishes nothing: p gets the first call's positions and duplicate=true,
 * or status LH_EEXIST when that call published something else (another
 * type, channel or data).
 * A publication of kind PUB_HISTORY is passed to hub_history instead. */
void hub_publish(struct hub *h, struct publication *p);

/* One publication read from a history. type and data point into the
 * result's own memory. */
struct hub_history_item {
	uint64_t offset;
	int64_t ts_ms;
	const char *type; /* NUL-terminated */
	const char *data; /* the JSON object text, NUL-terminated */
	size_t data_len;
};

struct hub_history_result {
	char channel[LH_CHANNEL_MAX + 1];
	uint64_t offset; /* the channel's top offset */
	char epoch[17];  /* "" when the channel does not exist */
	bool recovered;  /* since given: every publication after it is below */
	uint32_t n;
	struct hub_history_item items[]; /* oldest first, then their text */
};

/* Reads the history of p->channels[0] in p->tenant (PUB_HISTORY): the
 * newest p->hist_limit entries (0: all), or with p->hist_has_since those
 * after p->hist_since_offset when the epoch matches and none is missing
 * (else none, recovered=false), the oldest p->hist_limit of them. Sets
 * p->history (NULL and p->status LH_ENOMEM when out of memory) and calls
 * p->on_done. */
void hub_history(struct hub *h, struct publication *p);
/* Frees a history result. NULL is a no-op. */
void hub_history_free(struct hub_history_result *r);

/* Drops history past its TTL and idempotency keys past their window, then
 * frees channels that have no subscriber, no history left and no
 * publication for idle_ms. Channels live on while empty so that offsets
 * keep increasing across short gaps and history can be recovered; a freed
 * channel comes back with a new epoch. The service thread calls it every
 * few seconds. */
void hub_sweep(struct hub *h, int64_t now_ms, int64_t idle_ms);

/* Open connections of tenant, and of (tenant, user): the subscriber
 * counts of their implicit channels, one dict lookup each. 0 for an
 * invalid name. For the connection limits checked at the handshake. */
uint32_t hub_tenant_conns(struct hub *h, const char *tenant);
uint32_t hub_user_conns(struct hub *h, const char *tenant, const char *user);

/* Counts one frame received from a client. */
void hub_count_received(struct hub *h);

/*
 * Publishes the publications of *list (oldest first, linked by ->next) with
 * hub_publish until the list is empty or max_pubs are done, and, with
 * yield, also stops right after a publication that made a send queue cross
 * half of its bound (frames or bytes) going up: the caller then lets the
 * transport write before it goes on (a later call, the next loop turn), so
 * that a backlog larger than the bound does not close a reader that keeps
 * up. A connection raises this once per busy period (until its queue is
 * empty again), so a reader that never catches up makes the drain yield
 * once, not for every publication, and is closed at the bound.
 * *list is left at the first publication not done. Returns how many were
 * done; *pressed says whether it stopped for a queue.
 */
size_t hub_publish_some(struct hub *h, struct publication **list, size_t max_pubs, bool yield,
                        bool *pressed);

/* Sets who runs control commands: a publication with p->cmd set is passed
 * to run(arg, p) by hub_publish (in its place in the line), which must set
 * p->status and call p->on_done. Without a runner such a publication fails
 * with LH_EINVAL. The runner may use every hub function. */
void hub_set_command_runner(struct hub *h, void (*run)(void *arg, struct publication *p),
                            void *arg);

/* ------------------------------------------------------------------------
 * Redis mode (broker.h, cluster.h). In memory mode none of this is set and
 * the hub runs exactly as on one node.
 * ------------------------------------------------------------------------ */

/* The cluster glue's hooks, called on the service thread. */
struct hub_cluster {
	/* A channel got its first subscriber (implicit channels included, at
	 * hub_conn_open), or lost its last one. The hook must not call back
	 * into the hub's subscription functions. */
	void (*on_first)(void *arg, const char *tenant, const char *name);
	void (*on_last)(void *arg, const char *tenant, const char *name);
	/* Runs a publication (PUB_PUBLISH, not a command) instead of
	 * publishing it here: hands it to Redis, which gives it its offsets;
	 * must set p->status and call p->on_done, maybe later. */
	void (*publish)(void *arg, struct publication *p);
	/* Runs a PUB_HISTORY publication instead of hub_history (reads Redis);
	 * must set p->status and p->history and call p->on_done, maybe later. */
	void (*history)(void *arg, struct publication *p);
};
/* Sets (or, with NULL, clears) the cluster hooks; cl must outlive the hub
 * or be cleared. */
void hub_set_cluster(struct hub *h, const struct hub_cluster *cl, void *arg);
/* Queues f (a reference each) on every subscriber of the channel tenant's
 * clients call name, as hub_publish does with a local publication but with
 * the frame already built elsewhere (an event from Redis, with its offset
 * and epoch in it; or a client event / presence frame of another node).
 * Returns how many connections it was queued on. */
size_t hub_deliver(struct hub *h, const char *tenant, const char *name, struct frame *f);
/* Redis mode: sets the channel's position to Redis's (top offset, epoch),
 * emptying its history cache unless it continues it. No-op when the
 * channel does not exist. */
void hub_channel_sync(struct hub *h, const char *tenant, const char *name, uint64_t top,
                      uint64_t epoch);
/* Redis mode: hub_deliver for an event frame at offset in epoch (its
 * publish time ts_ms), which also advances the channel's position and
 * keeps the frame in the channel's history, bounded as in memory mode: a
 * cache of Redis's stream, so that most recoveries need no read. An offset
 * that does not follow the channel's top, or another epoch, empties the
 * cache first. When skip is not NULL, connections it returns true for do
 * not get the frame (they have it already). */
size_t hub_deliver_event(struct hub *h, const char *tenant, const char *name, struct frame *f,
                         uint64_t offset, uint64_t epoch, int64_t ts_ms,
                         bool (*skip)(void *arg, const struct hub_conn *c), void *skip_arg);
/* Redis mode: like hub_subscribe_since's position and recovery for c's
 * channel name (explicit, or c's implicit ones), subscribing nothing and
 * counting nothing. Returns 0 or LH_ENOENT (no such channel here). */
int hub_channel_recover(struct hub *h, struct hub_conn *c, const char *name,
                        const struct hub_since *since, struct hub_position *pos);
/* Counts a recovery answered recovered or not (GetStats 45/46). */
void hub_count_recovery(struct hub *h, bool recovered);
/* The conflation key hub_publish gives a frame of a publication with key on
 * (tenant, name), so that frames delivered by hub_deliver conflate alike. */
uint64_t hub_conflate_key(uint64_t key, const char *tenant, const char *name);

/* Event frames queued on connections since start (messages_delivered). */
uint64_t hub_delivered(struct hub *h);

/* Any thread: a consistent-enough copy of the counters. */
void hub_stats_read(struct hub *h, struct hub_stats_snapshot *out);

/* ------------------------------------------------------------------------
 * Walking channels and connections (presence and the control RPCs). Service
 * thread only. The callbacks may queue frames (hub_conn_send) and kill
 * connections (hub_conn_kill) but must not subscribe, unsubscribe or close
 * anything: the arrays being walked would move under them.
 * ------------------------------------------------------------------------ */

/* Calls fn(c, arg) for every connection on the channel that tenant's
 * clients call name (explicit like "board:7", or "$tenant" / "$user:{u}"),
 * and returns how many there were (0 when the channel does not exist). */
size_t hub_channel_each(struct hub *h, const char *tenant, const char *name,
                        void (*fn)(struct hub_conn *c, void *arg), void *arg);
/* Calls fn(name, subscribers, arg) for every channel of tenant that has a
 * subscriber and whose name starts with prefix (implicit channels, "$...",
 * are left out). In no particular order. */
void hub_channels_each(struct hub *h, const char *tenant, const char *prefix,
                       void (*fn)(const char *name, uint32_t subscribers, void *arg), void *arg);
/* Calls fn(name, arg) for every explicit channel c is on. */
void hub_conn_each_channel(struct hub_conn *c, void (*fn)(const char *name, void *arg), void *arg);
/* Whether c is subscribed to its channel name (explicit channels only). */
bool hub_conn_subscribed(struct hub *h, struct hub_conn *c, const char *name);
/* The channel's newest offset (0 when nothing was published yet) and its
 * epoch (16 hex digits and a NUL). Returns 0 or LH_ENOENT (no such channel). */
int hub_channel_top(struct hub *h, const char *tenant, const char *name, uint64_t *offset,
                    char epoch[17]);
/* Asks the transport to close c with close_code and reason (copied by the
 * transport) and queues nothing more on it. Returns false when c was
 * already being closed by the hub. */
bool hub_conn_kill(struct hub *h, struct hub_conn *c, int close_code, const char *reason);
/* Identity note: hub_conn_user() returns the same pointer for every
 * connection of one tenant and user, so connections on one channel are of
 * the same user exactly when their hub_conn_user() pointers are equal. */

#endif
