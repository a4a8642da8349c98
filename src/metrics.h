/*
 * metrics: process-wide counters and histograms for /metrics (Prometheus
 * text format) and GetStats. Plain C, no I/O library.
 *
 * Threads: every counter is a relaxed atomic, so any thread may count and
 * any thread may read without a lock. Labels are fixed enums (reasons,
 * message types, gRPC methods registered at start-up, status codes):
 * nothing per channel, tenant or user, so the number of series is bounded.
 * The per-tenant connection counts of GetStats are a snapshot the service
 * thread takes now and then (metrics_tenants_snapshot), kept under a mutex
 * that only that snapshot and its readers take.
 */
#ifndef LH_METRICS_H
#define LH_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "hub.h"
#include "presence_cluster.h"
#include "strbuf.h"

/* Why a WebSocket connection ended. */
enum metrics_close {
	MC_CLIENT,         /* the client closed, or the connection was lost */
	MC_SHUTDOWN,       /* livehub was shutting down (1001) */
	MC_SLOW_CONSUMER,  /* send queue overflow (4000) */
	MC_PROTOCOL_ERROR, /* binary frame, oversized message */
	MC_AUTH,           /* token no longer valid at ESTABLISHED */
	MC_SERVER_ERROR,   /* out of memory and the like (1011) */
	MC_RATE_LIMITED,   /* sustained rate-limit abuse (1008) */
	MC_DISCONNECTED,   /* a Disconnect call (4100, 4501) */
	MC_NCLOSE
};

/* Why a WebSocket handshake was refused with an HTTP status. */
enum metrics_refusal {
	MR_NOT_WEBSOCKET, /* 400: upgrade to something else */
	MR_NOT_FOUND,     /* 404: not /ws */
	MR_SHUTTING_DOWN, /* 503 */
	MR_AUTH,          /* 401: see the auth failure reasons */
	MR_ORIGIN,        /* 403: Origin not on the allow-list */
	MR_LIMIT_GLOBAL,  /* 503: max_connections reached */
	MR_LIMIT_IP,      /* 429: max_connections_per_ip reached */
	MR_LIMIT_USER,    /* 429: max_connections_per_user reached */
	MR_LIMIT_TENANT,  /* 429: max_connections_per_tenant reached */
	MR_NREFUSAL
};

/* Why a token was not accepted. */
enum metrics_auth {
	MA_NO_TOKEN,
	MA_MALFORMED,
	MA_ALGORITHM,
	MA_SIGNATURE,
	MA_EXPIRED,
	MA_NOT_YET_VALID,
	MA_CLAIMS,
	MA_UNKNOWN_KEY,  /* a kid no configured key has */
	MA_AUTH_TIMEOUT, /* no auth message in time after a connect without a token */
	MA_NAUTH
};

/* Client messages, by type. */
enum metrics_in { MI_SUBSCRIBE, MI_UNSUBSCRIBE, MI_PING, MI_OTHER, MI_INVALID, MI_NIN };

/* Frames queued for clients, by type. Events are the hub's own counter
 * (struct metrics_gauges.hub.messages_delivered): counted once per publication there. */
enum metrics_out { MO_EVENT, MO_CONNECTED, MO_REPLY, MO_ERROR, MO_NOUT };

/* A latency histogram with fixed buckets (seconds, from 50 µs to 10 s). */
#define METRICS_NBUCKETS 16
struct metrics_hist {
	_Atomic uint64_t bucket[METRICS_NBUCKETS + 1]; /* not cumulative; last is +Inf */
	_Atomic uint64_t sum_us;
	_Atomic uint64_t count;
};

#define METRICS_MAX_METHODS 48
#define METRICS_NCODES      17 /* gRPC status codes 0..16 */

struct metrics {
	_Atomic uint64_t conn_opened;
	_Atomic uint64_t conn_closed[MC_NCLOSE];
	_Atomic uint64_t refused[MR_NREFUSAL];
	_Atomic uint64_t auth_failed[MA_NAUTH];
	_Atomic uint64_t msg_in[MI_NIN];
	_Atomic uint64_t msg_out[MO_NOUT];
	_Atomic uint64_t bytes_out;
	_Atomic uint64_t
	        writes[2]; /* sends of queued frames: [0] at a writable event, [1] direct */
	_Atomic uint64_t rate_limited;  /* client messages refused with RATE_LIMITED */
	_Atomic uint64_t shape_refused; /* client messages over the JSON depth/element limits */
	_Atomic uint64_t reloads;
	_Atomic uint64_t reload_failures;
	_Atomic uint64_t token_refreshes;    /* refresh accepted */
	_Atomic uint64_t token_expirations;  /* closed 4001: exp passed unrefreshed */
	_Atomic uint64_t awaiting_auth;      /* gauge: sockets without a token, before auth */
	_Atomic uint64_t channel_denied;     /* subscribes refused by token rights */
	_Atomic bool ready;                  /* accepting clients and calls */
	_Atomic bool redis_down;             /* Redis mode: Redis unreachable (not ready) */
	int64_t started_ms;                  /* CLOCK_MONOTONIC, set by metrics_init */
	struct metrics_hist publish_latency; /* gRPC arrival -> queued on every subscriber */
	struct metrics_hist write_latency;   /* gRPC arrival -> written to a client socket */
	_Atomic int nmethods;
	char method[METRICS_MAX_METHODS][128]; /* "/pkg.Service/Method" */
	_Atomic uint64_t grpc_calls[METRICS_MAX_METHODS][METRICS_NCODES];
	struct metrics_hist grpc_latency[METRICS_MAX_METHODS];
};

/* The one instance. */
extern struct metrics lh_metrics;

/* Values only their owners can read at the moment of a scrape. */
struct metrics_gauges {
	struct hub_stats_snapshot hub; /* hub_stats_read */
	uint64_t handoff_depth;        /* publications waiting for the service thread */
	uint64_t handoff_bytes;        /* bytes waiting in the hand-off */
	uint64_t sendq_frames;         /* frames queued over every connection */
	uint64_t sendq_max;            /* the longest single send queue */
	uint64_t sendq_bytes;          /* payload bytes queued over every connection */
	/* Redis mode (broker.h): redis set, broker read, node its id. */
	bool redis;
	struct broker_stats broker;
	const char *node;
	/* presence.c counters (presence_stats_read). */
	uint64_t client_events, client_events_limited, presence_events, disconnects;
	/* presence_cluster.c (Redis mode; all 0 on one node). */
	struct pcluster_stats cluster;
};

/* Zeroes everything and records the start time. Call once, before threads. */
void metrics_init(void);

static inline void metrics_inc(_Atomic uint64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline uint64_t metrics_get(_Atomic uint64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

/* Any thread: adds one observation of us microseconds. */
void metrics_observe(struct metrics_hist *h, int64_t us);

/* Registers a gRPC method path (copied; "other" for calls to unknown
 * methods) before calls arrive and returns its slot, or -1 when full. A
 * path registered again gets its old slot. Only start-up code calls it,
 * one thread at a time. */
int metrics_grpc_method(const char *path);
/* Any thread: one call of slot that ended with code after us. slot < 0 is
 * ignored. */
void metrics_grpc_done(int slot, int code, int64_t us);

/* The label of a close reason ("slow_consumer"). */
const char *metrics_close_name(enum metrics_close why);

/* Maps auth_verify's reason text to a label. */
enum metrics_auth metrics_auth_reason(const char *why);

/* Appends every metric in the Prometheus text exposition format 0.0.4. */
void metrics_render(struct strbuf *sb, const struct metrics_gauges *g);

/* Service thread: replaces the per-tenant connection snapshot. tenants
 * holds n pointers (one per connection, any order; sorted in place). */
void metrics_tenants_snapshot(const char **tenants, size_t n);

#define METRICS_TOP_TENANTS 10
struct metrics_tenant {
	char tenant[65];
	uint64_t connections;
};
/* Any thread: copies the largest tenants of the last snapshot (most
 * connections first) into out; returns how many. */
size_t metrics_top_tenants(struct metrics_tenant *out, size_t max);

/* Microseconds on CLOCK_MONOTONIC. */
int64_t metrics_now_us(void);

#endif
