/*
 * presence_cluster: presence and the control commands across the nodes of
 * a Redis-backed cluster (docs/SCALING.md "Presence across nodes"). Only in
 * Redis mode (LIVEHUB_REDIS_URL set); the memory broker never creates one.
 *
 * Data in Redis (P = LIVEHUB_REDIS_PREFIX, T = tenant, C = channel as
 * clients name it, "$tenant" for the tenant-wide presence):
 *   P:{T:C}:presence       hash  clientId -> {"user":…,"node":…}
 *   P:{T:C}:presence:exp   zset  clientId -> expiry (ms, Redis TIME)
 *   P:{T:C}:presence:users hash  user -> connections in the cluster
 *   P:node:<id>            string {"node":…,"connections":N}, PX ttl
 *   P:nodes                zset  node id -> expiry (ms); P:nodes:conns
 *                          hash node id -> its connections
 * Every change goes through one Lua script, so the per-user counter stays
 * equal to what the presence hash holds; entries whose expiry passed are
 * purged (and their users' counters lowered) by whichever script touches
 * the channel next, so a crashed node's connections vanish within the TTL.
 *
 * Writes are batched: joins and leaves queue here and go out every
 * PCL_TICK_MS (or as soon as PCL_BATCH_OPS are queued) as one EVAL of up
 * to PCL_BATCH_OPS changes, so a reconnect storm costs Redis at most
 * 1000/PCL_TICK_MS commands a second plus one per PCL_BATCH_OPS changes;
 * every TTL/3 the node re-writes (upserts) all of its entries with a new
 * expiry, in the same batches, and beats its heartbeat.
 *
 * Join/leave announcements (presence:join/leave, user:online/offline) come
 * from the script's answer: it reports when a user's connection count on a
 * channel in the whole cluster goes 0 -> 1 or 1 -> 0. The node that made
 * the change queues the frame on its own connections (not the one that
 * caused it) and publishes it on the channel for the other nodes
 * (broker_publish_raw).
 *
 * Control commands (Disconnect, Subscribe, Unsubscribe) run here and go to
 * every other node on P:ctl; each applies it and acknowledges with its
 * counts; the call is answered with the sum when every node that received
 * it answered, or after PCL_CTL_WAIT_MS with what came.
 *
 * Code: presence_cluster.c (entries, reads, heartbeat) and presence_ctl.c
 * (control commands), sharing presence_cluster_int.h.
 *
 * Threads: service thread only, except pcluster_stats_read().
 */
#ifndef LH_PRESENCE_CLUSTER_H
#define LH_PRESENCE_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hub.h"
#include "publication.h"
#include "ws_protocol.h"

#define PCL_BATCH_OPS     200  /* changes in one EVAL */
#define PCL_FLUSH_BATCHES 4    /* EVALs sent per flush at most (the rest wait a tick) */
#define PCL_CTL_WAIT_MS   2000 /* how long a control command waits for other nodes */
#define PCL_TICK_MS       20   /* changes wait at most this long for their batch */

struct broker;
struct presence;
struct pcluster;

/* What the WebSocket front lends: its hub, where its presence settings
 * are (replaced on SIGHUP), and a walk over its open connections. */
struct pcluster_env {
	struct hub *hub;
	struct presence *const *pres;
	void (*each_conn)(void *arg, void (*fn)(struct hub_conn *c, void *fnarg), void *fnarg);
	void *arg;
};

/* Counters, written by the service thread, read by any thread. */
struct pcluster_stats {
	uint64_t nodes;       /* gauge: nodes alive (heartbeats not expired) */
	uint64_t connections; /* gauge: connections of those nodes */
	uint64_t ops;         /* presence changes written (joins, leaves, refreshes) */
	uint64_t batches;     /* EVALs sent for them */
	uint64_t expired;     /* entries this node purged as expired */
	uint64_t ctl_sent;    /* control commands sent to the other nodes */
	uint64_t ctl_applied; /* control commands of other nodes applied here */
	uint64_t errors;      /* presence writes/reads that failed (Redis down, error) */
};

/* Returns the cluster presence over broker b (started), or NULL when out of
 * memory. prefix is LIVEHUB_REDIS_PREFIX, ttl_s the entry and heartbeat
 * expiry (> 0). Listens on P:ctl. */
struct pcluster *pcluster_new(struct broker *b, const char *prefix, int ttl_s,
                              const struct pcluster_env *env);
/* Frees pc; commands still waiting for other nodes are answered with what
 * came. NULL is a no-op. */
void pcluster_free(struct pcluster *pc);

/* Whether Redis is usable now (else presence is this node's only). */
bool pcluster_up(const struct pcluster *pc);

/* c joined (join) or left tenant channel name ("$tenant" included): queues
 * the change for the next flush. */
void pcluster_member(struct pcluster *pc, struct hub_conn *c, const char *name, bool join);
/* Sends the queued changes. */
void pcluster_flush(struct pcluster *pc);
/* Changes queued and not sent yet: the loop flushes as soon as a batch is
 * full. */
size_t pcluster_queued(const struct pcluster *pc);
/* Every PCL_TICK_MS: sends the queued changes; the refresh and heartbeat
 * every TTL/3; control commands waiting past PCL_CTL_WAIT_MS. now_ms: a
 * monotonic clock. */
void pcluster_tick(struct pcluster *pc, int64_t now_ms);
/* Shutdown: removes every entry of this node and its heartbeat, and
 * publishes the leaves that follow; from then on nothing is written. */
void pcluster_leave_all(struct pcluster *pc);
/* After pcluster_leave_all: true until Redis has answered all of it (the
 * announcements included), so the loop runs on (within the shutdown
 * grace) before the broker stops. False when Redis is down. */
bool pcluster_busy(const struct pcluster *pc);

/* A client's presence request (access already checked): asks Redis and
 * queues the reply on c when it answers. Returns 0, or LH_EUNAVAILABLE
 * (Redis down: the caller answers from this node) or LH_ENOMEM. */
int pcluster_request(struct pcluster *pc, struct hub_conn *c, const struct wsp_request *req);
/* A control command (publication with cmd): returns true when it was taken
 * (p->on_done called later, on the service thread), false when the caller
 * runs it on this node alone (ListChannels). */
bool pcluster_command(struct pcluster *pc, struct publication *p);

/* Any thread: a copy of the counters. */
void pcluster_stats_read(struct pcluster_stats *out);

#endif
