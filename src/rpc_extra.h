/*
 * rpc_extra: the gRPC services livehub serves beside HubService, for
 * operators and tools: grpc.health.v1.Health (Check, Watch) and server
 * reflection (grpc.reflection.v1 and v1alpha ServerReflectionInfo, answered
 * by reflection.c from the embedded descriptor set).
 *
 * They run on a completion queue and thread of their own, so rpc.c only
 * calls the four hooks below at the right points of its server's life.
 */
#ifndef LH_RPC_EXTRA_H
#define LH_RPC_EXTRA_H

#include <grpc/grpc.h>

#include "hub.h"
#include "livehub/v1/hub.pb-c.h"
#include "metrics.h"

struct rpc_extra;

/* Before grpc_server_start: registers the methods and a completion queue
 * on server and starts the thread. Returns NULL after logging why. */
struct rpc_extra *rpc_extra_attach(grpc_server *server);
/* After grpc_server_start: arms the first requests. */
void rpc_extra_start(struct rpc_extra *x);
/* Before grpc_server_shutdown_and_notify: health turns NOT_SERVING and
 * every Watch stream gets that and ends (UNAVAILABLE). */
void rpc_extra_stopping(struct rpc_extra *x);
/* After grpc_server_destroy (or instead of starting): shuts the queue down,
 * joins the thread, frees x. NULL is a no-op. */
/* True when no Watch call is still open or sending its last status:
 * rpc_stop waits for it before cancelling what is left, so a watcher's
 * NOT_SERVING is not cut off by grpc_server_cancel_all_calls. */
bool rpc_extra_idle(struct rpc_extra *x);
void rpc_extra_free(struct rpc_extra *x);

/* Storage for the GetStats fields filled by rpc_extra_stats. */
struct rpc_extra_stats {
	Livehub__V1__TenantConnections tenants[METRICS_TOP_TENANTS];
	Livehub__V1__TenantConnections *tenant_ptr[METRICS_TOP_TENANTS];
	struct metrics_tenant top[METRICS_TOP_TENANTS];
};

/* Fills GetStatsResponse's operational fields (12 on) from the metrics, s
 * and handoff_depth; out's pointers point into st. Any thread. */
void rpc_extra_stats(Livehub__V1__GetStatsResponse *out, struct rpc_extra_stats *st,
                     const struct hub_stats_snapshot *s, uint64_t handoff_depth);

#endif
