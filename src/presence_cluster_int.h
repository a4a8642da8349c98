/*
 * presence_cluster_int: what presence_cluster.c (entries, reads, heartbeat)
 * and presence_ctl.c (control commands across nodes) share. Service thread
 * only. Not for other modules: they use presence_cluster.h.
 */
#ifndef LH_PRESENCE_CLUSTER_INT_H
#define LH_PRESENCE_CLUSTER_INT_H

#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "broker.h"
#include "names.h"
#include "presence_cluster.h"

#define PCL_KEY_MAX (BROKER_PREFIX_MAX + LH_TENANT_MAX + LH_CHANNEL_MAX + 32)

struct op;

/* A control command waiting for the other nodes' acknowledgements. */
struct pending {
	struct pending *next;
	struct pcluster *pc;
	uint64_t id;
	struct publication *p;
	int expected;     /* other nodes that received it; -1 until PUBLISH answers */
	int got;          /* acknowledgements counted */
	int64_t deadline; /* monotonic ms */
};

struct pcluster {
	struct broker *b;
	struct pcluster_env env;
	char prefix[BROKER_PREFIX_MAX + 1];
	char node[BROKER_NODE_MAX + 1];
	char ctl[BROKER_PREFIX_MAX + 8];
	int64_t ttl_ms;
	struct op *ops; /* queued changes (presence_cluster.c): ops[head..nops) */
	size_t head, nops, cap;
	int64_t next_beat; /* monotonic ms; 0: at the next tick */
	int64_t now_ms;    /* the last tick's clock */
	uint64_t next_id;
	struct pending *pending;
	bool leaving;    /* shutting down: entries removed, nothing written again */
	size_t inflight; /* writes (and fences) sent, not answered yet */
	bool oom_logged;
};

/* Counters (presence_cluster.h struct pcluster_stats), one writer (the
 * service thread). */
struct pcl_counters {
	_Atomic uint64_t nodes, connections, ops, batches, expired, ctl_sent, ctl_applied, errors;
};
extern struct pcl_counters pcl_stats;

static inline void pcl_stat_add(_Atomic uint64_t *v, uint64_t d)
{
	atomic_fetch_add_explicit(v, d, memory_order_relaxed);
}

/* ------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------ */

static inline bool pcl_is_array(const redisReply *r, size_t n)
{
	return r && r->type == REDIS_REPLY_ARRAY && r->elements >= n;
}

static inline bool pcl_is_int(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_INTEGER;
}

static inline bool pcl_is_str(const redisReply *r)
{
	return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* Logs a reply that is not what a script returns (an error, NULL) and
 * counts it. */
void pcl_reply_failed(const char *what, const redisReply *r);

/* presence_ctl.c. Runs a Disconnect, Subscribe or Unsubscribe here and
 * sends it to the other nodes; p->on_done comes later. Returns false for
 * another command (not taken). */
bool pcl_ctl_command(struct pcluster *pc, struct publication *p);
/* A P:ctl message (broker_listen). */
void pcl_ctl_on_message(void *arg, const char *msg, size_t len);
/* Answers the commands waiting past their deadline. */
void pcl_ctl_expire(struct pcluster *pc, int64_t now_ms);
/* Answers every command still waiting (with what came). */
void pcl_ctl_free(struct pcluster *pc);

#endif
