/* metrics: counters, histograms and their Prometheus rendering. See metrics.h. */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "livehub.h"

struct metrics lh_metrics;

/* Upper bounds of the histogram buckets, in microseconds. */
static const int64_t bounds_us[METRICS_NBUCKETS] = {
        50,    100,   250,    500,    1000,   2500,    5000,    10000,
        25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 10000000,
};

static const char *const close_names[MC_NCLOSE] = {
        "client", "shutdown",     "slow_consumer", "protocol_error",
        "auth",   "server_error", "rate_limited",  "disconnected",
};
static const char *const refusal_names[MR_NREFUSAL] = {
        "not_websocket", "not_found", "shutting_down", "auth",         "origin",
        "limit_global",  "limit_ip",  "limit_user",    "limit_tenant",
};
static const char *const auth_names[MA_NAUTH] = {
        "no_token",      "malformed", "algorithm",   "signature",    "expired",
        "not_yet_valid", "claims",    "unknown_key", "auth_timeout",
};
static const char *const in_names[MI_NIN] = {
        "subscribe", "unsubscribe", "ping", "other", "invalid",
};
static const char *const out_names[MO_NOUT] = {"event", "connected", "reply", "error"};
static const char *const write_names[2] = {"writable", "direct"};
static const char *const code_names[METRICS_NCODES] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
};

/* The per-tenant snapshot: written by the service thread every few
 * seconds, read by GetStats. */
static pthread_mutex_t tenants_mu = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_tenant top[METRICS_TOP_TENANTS];
static size_t ntop;

int64_t metrics_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void metrics_init(void)
{
	memset(&lh_metrics, 0, sizeof lh_metrics);
	lh_metrics.started_ms = metrics_now_us() / 1000;
	pthread_mutex_lock(&tenants_mu);
	ntop = 0;
	pthread_mutex_unlock(&tenants_mu);
}

void metrics_observe(struct metrics_hist *h, int64_t us)
{
	if (us < 0)
		us = 0;
	int i = 0;
	while (i < METRICS_NBUCKETS && us > bounds_us[i])
		i++;
	metrics_inc(&h->bucket[i], 1);
	metrics_inc(&h->sum_us, (uint64_t)us);
	metrics_inc(&h->count, 1);
}

int metrics_grpc_method(const char *path)
{
	int n = atomic_load(&lh_metrics.nmethods);
	for (int i = 0; i < n; i++)
		if (strcmp(lh_metrics.method[i], path) == 0)
			return i;
	if (n >= METRICS_MAX_METHODS || strlen(path) >= sizeof lh_metrics.method[0])
		return -1;
	strcpy(lh_metrics.method[n], path);
	atomic_store(&lh_metrics.nmethods, n + 1);
	return n;
}

void metrics_grpc_done(int slot, int code, int64_t us)
{
	if (slot < 0 || slot >= METRICS_MAX_METHODS)
		return;
	if (code < 0 || code >= METRICS_NCODES)
		code = 2; /* UNKNOWN */
	metrics_inc(&lh_metrics.grpc_calls[slot][code], 1);
	metrics_observe(&lh_metrics.grpc_latency[slot], us);
}

const char *metrics_close_name(enum metrics_close why)
{
	return (unsigned)why < MC_NCLOSE ? close_names[why] : "unknown";
}

enum metrics_auth metrics_auth_reason(const char *why)
{
	if (!why || strstr(why, "no token"))
		return MA_NO_TOKEN;
	if (strstr(why, "auth timeout"))
		return MA_AUTH_TIMEOUT;
	if (strstr(why, "unknown key id"))
		return MA_UNKNOWN_KEY;
	if (strstr(why, "expired"))
		return MA_EXPIRED;
	if (strstr(why, "not valid yet"))
		return MA_NOT_YET_VALID;
	if (strstr(why, "algorithm"))
		return MA_ALGORITHM;
	if (strstr(why, "signature"))
		return MA_SIGNATURE;
	if (strstr(why, "claim") || strstr(why, "must be"))
		return MA_CLAIMS;
	return MA_MALFORMED;
}

/* ------------------------------------------------------------------------
 * Rendering
 * ---------------------------------------------------------------------- */

static void head(struct strbuf *sb, const char *name, const char *type, const char *help)
{
	sb_addf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(struct strbuf *sb, const char *name, const char *type, const char *help, uint64_t v)
{
	head(sb, name, type, help);
	sb_addf(sb, "%s %llu\n", name, (unsigned long long)v);
}

/* A counter family with one label over a fixed set of values. */
static void labelled(struct strbuf *sb, const char *name, const char *help, const char *label,
                     const char *const *names, _Atomic uint64_t *v, int n)
{
	head(sb, name, "counter", help);
	for (int i = 0; i < n; i++)
		sb_addf(sb, "%s{%s=\"%s\"} %llu\n", name, label, names[i],
		        (unsigned long long)metrics_get(&v[i]));
}

/* The series of one histogram; labels is "" or `method="..."`. */
static void hist(struct strbuf *sb, const char *name, const char *labels, struct metrics_hist *h)
{
	uint64_t cum = 0;
	const char *sep = labels[0] ? "," : "";
	for (int i = 0; i <= METRICS_NBUCKETS; i++) {
		cum += metrics_get(&h->bucket[i]);
		if (i < METRICS_NBUCKETS)
			sb_addf(sb, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep,
			        (double)bounds_us[i] / 1e6, (unsigned long long)cum);
		else
			sb_addf(sb, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
			        (unsigned long long)cum);
	}
	const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
	sb_addf(sb, "%s_sum%s%s%s %.6f\n", name, open, labels, close,
	        (double)metrics_get(&h->sum_us) / 1e6);
	sb_addf(sb, "%s_count%s%s%s %llu\n", name, open, labels, close, (unsigned long long)cum);
}

static void render_grpc(struct strbuf *sb)
{
	struct metrics *m = &lh_metrics;
	int n = atomic_load(&m->nmethods);
	head(sb, "livehub_grpc_calls_total", "counter",
	     "gRPC calls finished, by method and status code");
	for (int i = 0; i < n; i++)
		for (int c = 0; c < METRICS_NCODES; c++) {
			uint64_t v = metrics_get(&m->grpc_calls[i][c]);
			/* OK always shows, so every method has a series from the start. */
			if (v || c == 0)
				sb_addf(sb,
				        "livehub_grpc_calls_total{method=\"%s\",code=\"%s\"} %llu\n",
				        m->method[i], code_names[c], (unsigned long long)v);
		}
	head(sb, "livehub_grpc_call_duration_seconds", "histogram",
	     "gRPC call latency, arrival to status sent (streams: whole stream), by method");
	for (int i = 0; i < n; i++) {
		char labels[160];
		snprintf(labels, sizeof labels, "method=\"%s\"", m->method[i]);
		hist(sb, "livehub_grpc_call_duration_seconds", labels, &m->grpc_latency[i]);
	}
}

/* Redis mode only: the broker's counters (docs/SCALING.md). */
static void render_redis(struct strbuf *sb, const struct metrics_gauges *g)
{
	const struct broker_stats *b = &g->broker;
	head(sb, "livehub_node_info", "gauge", "Always 1; this node's id is a label (Redis mode)");
	sb_add_key_str(sb, "livehub_node_info{node=", g->node ? g->node : "");
	sb_adds(sb, "} 1\n");
	one(sb, "livehub_redis_up", "gauge", "1 while Redis is connected and usable",
	    b->up ? 1 : 0);
	one(sb, "livehub_redis_reconnects_total", "counter",
	    "Connections to Redis made again after a loss", b->reconnects);
	one(sb, "livehub_redis_commands_in_flight", "gauge",
	    "Commands sent to Redis whose reply has not come yet", b->cmds_in_flight);
	one(sb, "livehub_redis_commands_total", "counter", "Commands sent to Redis", b->commands);
	one(sb, "livehub_redis_publishes_total", "counter",
	    "Publications stored and published by Redis", b->publishes);
	one(sb, "livehub_redis_publish_failures_total", "counter",
	    "Publications that failed because Redis was down or answered an error",
	    b->publish_failures);
	one(sb, "livehub_redis_messages_received_total", "counter",
	    "Messages read from Redis pub/sub", b->messages_received);
	one(sb, "livehub_redis_channels_followed", "gauge",
	    "Channels this node follows in Redis (those with a local subscriber)",
	    b->channels_followed);
	/* Presence across nodes (presence_cluster.c). */
	one(sb, "livehub_cluster_nodes", "gauge",
	    "Redis mode: nodes alive, as of this node's last heartbeat", g->cluster.nodes);
	one(sb, "livehub_cluster_connections", "gauge",
	    "Redis mode: connections of the nodes alive, as each last reported",
	    g->cluster.connections);
	one(sb, "livehub_presence_writes_total", "counter",
	    "Redis mode: presence changes written (joins, leaves, refreshes)", g->cluster.ops);
	one(sb, "livehub_presence_expired_total", "counter",
	    "Redis mode: presence entries of silent nodes removed as expired by this node",
	    g->cluster.expired);
	one(sb, "livehub_cluster_commands_sent_total", "counter",
	    "Redis mode: Disconnect/Subscribe/Unsubscribe calls sent to the other nodes",
	    g->cluster.ctl_sent);
	one(sb, "livehub_cluster_commands_applied_total", "counter",
	    "Redis mode: such calls of other nodes applied here", g->cluster.ctl_applied);
	one(sb, "livehub_presence_redis_errors_total", "counter",
	    "Redis mode: presence reads and writes that failed", g->cluster.errors);
}

static void render_gauges(struct strbuf *sb, const struct metrics_gauges *g)
{
	one(sb, "livehub_connections", "gauge", "Open WebSocket connections", g->hub.connections);
	one(sb, "livehub_users", "gauge", "Distinct users with an open connection", g->hub.users);
	one(sb, "livehub_tenants", "gauge", "Distinct tenants with an open connection",
	    g->hub.tenants);
	one(sb, "livehub_channels", "gauge", "Channels that exist", g->hub.channels);
	one(sb, "livehub_subscriptions", "gauge", "Explicit channel subscriptions",
	    g->hub.subscriptions);
	one(sb, "livehub_handoff_queue_depth", "gauge",
	    "Publications waiting to be handed from gRPC to the service thread", g->handoff_depth);
	one(sb, "livehub_send_queue_frames", "gauge",
	    "Frames queued for clients, over all connections", g->sendq_frames);
	one(sb, "livehub_send_queue_frames_max", "gauge",
	    "The longest send queue of a single connection", g->sendq_max);
}

void metrics_render(struct strbuf *sb, const struct metrics_gauges *g)
{
	struct metrics *m = &lh_metrics;
	head(sb, "livehub_build_info", "gauge", "Always 1; the version is a label");
	sb_addf(sb, "livehub_build_info{version=\"%s\"} 1\n", LH_VERSION);
	one(sb, "livehub_up_seconds", "gauge", "Seconds since the process started",
	    (uint64_t)(metrics_now_us() / 1000 - m->started_ms) / 1000);
	one(sb, "livehub_ready", "gauge", "1 while accepting clients and calls, 0 while stopping",
	    atomic_load(&m->ready) ? 1 : 0);
	render_gauges(sb, g);
	one(sb, "livehub_connections_opened_total", "counter", "WebSocket connections accepted",
	    metrics_get(&m->conn_opened));
	labelled(sb, "livehub_connections_closed_total", "WebSocket connections ended, by reason",
	         "reason", close_names, m->conn_closed, MC_NCLOSE);
	labelled(sb, "livehub_handshake_refusals_total",
	         "WebSocket upgrades refused with an HTTP status, by reason", "reason",
	         refusal_names, m->refused, MR_NREFUSAL);
	labelled(sb, "livehub_auth_failures_total", "Tokens refused, by reason", "reason",
	         auth_names, m->auth_failed, MA_NAUTH);
	labelled(sb, "livehub_messages_in_total", "Client messages received, by type", "type",
	         in_names, m->msg_in, MI_NIN);
	head(sb, "livehub_messages_out_total", "counter", "Frames queued for clients, by type");
	for (int i = 0; i < MO_NOUT; i++)
		sb_addf(sb, "livehub_messages_out_total{type=\"%s\"} %llu\n", out_names[i],
		        (unsigned long long)(i == MO_EVENT ? g->hub.messages_delivered
		                                           : metrics_get(&m->msg_out[i])));
	one(sb, "livehub_bytes_out_total", "counter", "WebSocket payload bytes written",
	    metrics_get(&m->bytes_out));
	labelled(sb, "livehub_writes_total",
	         "Writes of queued frames (one or several per write), by what started them", "how",
	         write_names, m->writes, 2);
	one(sb, "livehub_publications_total", "counter",
	    "Publications accepted by the hub (one per channel written)",
	    g->hub.messages_published);
	one(sb, "livehub_slow_consumer_disconnects_total", "counter",
	    "Connections closed because their send queue overflowed", g->hub.slow_consumers);
	one(sb, "livehub_client_events_total", "counter",
	    "Client events (publish messages) forwarded to their channel", g->client_events);
	one(sb, "livehub_client_events_rate_limited_total", "counter",
	    "Client events refused with RATE_LIMITED", g->client_events_limited);
	one(sb, "livehub_presence_events_total", "counter",
	    "presence:join/leave and user:online/offline frames queued", g->presence_events);
	one(sb, "livehub_disconnects_total", "counter", "Connections closed by Disconnect calls",
	    g->disconnects);
	if (g->redis)
		render_redis(sb, g);
	one(sb, "livehub_messages_dropped_total", "counter",
	    "Frames discarded with the send queue of a connection closed as a slow consumer",
	    g->hub.dropped);
	one(sb, "livehub_messages_conflated_total", "counter",
	    "Queued frames replaced by a newer one with the same key (job:progress)",
	    g->hub.conflated);
	one(sb, "livehub_history_bytes", "gauge",
	    "Memory held by channel histories (entries and their frames)", g->hub.history_bytes);
	one(sb, "livehub_history_publications", "gauge", "Publications held in channel histories",
	    g->hub.history_entries);
	one(sb, "livehub_recoveries_total", "counter",
	    "Subscriptions with since answered recovered:true", g->hub.recoveries);
	one(sb, "livehub_recovery_misses_total", "counter",
	    "Subscriptions with since answered recovered:false", g->hub.recovery_misses);
	one(sb, "livehub_publishes_deduplicated_total", "counter",
	    "Publish calls answered from the idempotency table", g->hub.deduplicated);
	one(sb, "livehub_idempotency_keys", "gauge", "Idempotency keys remembered",
	    g->hub.idempotency_keys);
	one(sb, "livehub_handoff_bytes", "gauge",
	    "Bytes of publications waiting to be handed to the service thread", g->handoff_bytes);
	one(sb, "livehub_sendq_bytes", "gauge", "Payload bytes queued over every connection",
	    g->sendq_bytes);
	one(sb, "livehub_rate_limited_total", "counter",
	    "Client messages refused with RATE_LIMITED (per-connection token bucket)",
	    metrics_get(&m->rate_limited));
	one(sb, "livehub_token_refreshes_total", "counter",
	    "Token refreshes accepted on open connections", metrics_get(&m->token_refreshes));
	one(sb, "livehub_token_expirations_total", "counter",
	    "Connections closed (4001) because their token expired unrefreshed",
	    metrics_get(&m->token_expirations));
	one(sb, "livehub_connections_awaiting_auth", "gauge",
	    "Sockets that connected without a token and have not sent auth yet",
	    metrics_get(&m->awaiting_auth));
	one(sb, "livehub_channel_access_denied_total", "counter",
	    "Subscribes refused because the token's rights do not allow the channel",
	    metrics_get(&m->channel_denied));
	one(sb, "livehub_messages_refused_shape_total", "counter",
	    "Client messages refused for their JSON nesting depth or element count",
	    metrics_get(&m->shape_refused));
	one(sb, "livehub_config_reloads_total", "counter", "Successful SIGHUP reloads",
	    metrics_get(&m->reloads));
	one(sb, "livehub_config_reload_failures_total", "counter",
	    "SIGHUP reloads refused (invalid configuration; the old one stays)",
	    metrics_get(&m->reload_failures));
	head(sb, "livehub_publish_latency_seconds", "histogram",
	     "gRPC arrival of a publication to its frame queued on every subscriber");
	hist(sb, "livehub_publish_latency_seconds", "", &m->publish_latency);
	head(sb, "livehub_publish_to_write_seconds", "histogram",
	     "gRPC arrival of a publication to the write of its frame to a client socket "
	     "(observed once per send, for the oldest event in it)");
	hist(sb, "livehub_publish_to_write_seconds", "", &m->write_latency);
	render_grpc(sb);
}

/* ------------------------------------------------------------------------
 * Per-tenant snapshot
 * ---------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Inserts (t, n) into the top list if it belongs there (largest first). */
static void top_insert(struct metrics_tenant *list, size_t *len, const char *t, uint64_t n)
{
	size_t i = *len;
	if (i == METRICS_TOP_TENANTS) {
		if (list[i - 1].connections >= n)
			return;
		i--;
	} else {
		(*len)++;
	}
	while (i > 0 && list[i - 1].connections < n) {
		list[i] = list[i - 1];
		i--;
	}
	snprintf(list[i].tenant, sizeof list[i].tenant, "%s", t);
	list[i].connections = n;
}

void metrics_tenants_snapshot(const char **tenants, size_t n)
{
	struct metrics_tenant fresh[METRICS_TOP_TENANTS];
	size_t len = 0;
	qsort(tenants, n, sizeof *tenants, cmp_str);
	for (size_t i = 0; i < n;) {
		size_t j = i + 1;
		while (j < n && strcmp(tenants[j], tenants[i]) == 0)
			j++;
		top_insert(fresh, &len, tenants[i], j - i);
		i = j;
	}
	pthread_mutex_lock(&tenants_mu);
	memcpy(top, fresh, len * sizeof fresh[0]);
	ntop = len;
	pthread_mutex_unlock(&tenants_mu);
}

size_t metrics_top_tenants(struct metrics_tenant *out, size_t max)
{
	pthread_mutex_lock(&tenants_mu);
	size_t n = ntop < max ? ntop : max;
	memcpy(out, top, n * sizeof top[0]);
	pthread_mutex_unlock(&tenants_mu);
	return n;
}
