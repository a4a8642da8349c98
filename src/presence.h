/*
 * presence: who is on a channel, join/leave and online/offline events,
 * client-originated events (typing indicators) and the control commands
 * (Presence, Disconnect, Subscribe, Unsubscribe, ListChannels). Plain C over
 * the hub's walking functions (hub.h): no I/O library, unit-tested alone.
 *
 * Nothing is stored per channel or per user: a presence answer is counted
 * from the channel's subscriber list when asked (O(subscribers)), and
 * whether a join or leave is a user's first or last connection is found
 * the same way, at a cost of the same order as sending the event to the
 * channel. Join and leave are per user: a second device of a user already
 * on the channel sends no join; the leave comes when the user's last
 * connection leaves the channel. Each event names the connection that
 * caused it (clientId). The connection that causes an event does not get
 * it; every other connection on the channel does.
 *
 * Threads: everything here runs on the service thread, except
 * presence_config_check() and presence_stats_read().
 */
#ifndef LH_PRESENCE_H
#define LH_PRESENCE_H

#include <stdbool.h>
#include <stdint.h>

#include "frame.h"
#include "hub.h"
#include "publication.h"
#include "ws_protocol.h"

/* The settings, as configuration gives them. Patterns are comma-separated
 * channel names, a name ending in '*' matching every channel that starts
 * with what comes before it ("board:*"), "*" matching every channel. */
struct presence_config {
	const char *presence_channels; /* where join/leave events are sent; "" = nowhere */
	const char *client_events;     /* where clients may publish; "" = nowhere */
	int event_rate;                /* client events per second per connection */
	int event_burst;               /* ... and how many may come at once */
	bool tenant_presence;          /* "$tenant" gets user:online / user:offline */
};

struct presence;
struct pcluster;
struct command;

/* Per-connection client-event rate limit state (a token bucket). Zero it
 * when the connection opens. */
struct presence_bucket {
	int64_t last_ms;
	int64_t milli_tokens;
};

/* Counters, written by the service thread, read by any thread. */
struct presence_stats {
	uint64_t client_events;         /* client events accepted */
	uint64_t client_events_limited; /* refused with RATE_LIMITED */
	uint64_t presence_events;       /* join/leave/online/offline frames queued */
	uint64_t disconnects;           /* connections closed by Disconnect */
	uint64_t commands;              /* control commands run */
};

/* Checks a pattern list. Returns 0, or -1 with *why set to a static reason. */
int presence_config_check(const char *patterns, const char **why);
/* Returns the presence state for cfg (patterns copied), or NULL when out of
 * memory or a pattern list is invalid. */
struct presence *presence_new(const struct presence_config *cfg);
void presence_free(struct presence *pr);

/* Redis mode: memberships go to (and announcements, the presence request
 * and the control commands come from) the cluster (presence_cluster.h).
 * cl is borrowed; NULL (the default) is one node. */
void presence_set_cluster(struct presence *pr, struct pcluster *cl);
/* Redis mode: fn subscribes a connection for a Subscribe call instead of
 * hub_subscribe, and queues its `subscribed` frame (with Redis's position)
 * and the presence join itself. Returns 0, LH_EEXIST (nothing sent),
 * LH_ELIMIT or another LH_E*. */
void presence_set_subscriber(struct presence *pr,
                             int (*fn)(void *arg, struct hub_conn *c, const char *channel),
                             void *arg);
/* Whether "$tenant" gets user:online / user:offline. */
bool presence_tenant_on(const struct presence *pr);
/* Redis mode: fn(arg, tenant, channel, frame) is called with every client
 * event accepted here, before it is queued locally, so that the other
 * nodes get it too. */
void presence_set_relay(struct presence *pr,
                        void (*fn)(void *arg, const char *tenant, const char *name,
                                   const struct frame *f),
                        void *arg);

/* Whether channel name sends join/leave events. */
bool presence_events_on(const struct presence *pr, const char *name);

/* Connection hooks; the transport calls them around the hub's own calls.
 * presence_on_open: after hub_conn_open (user:online). presence_on_subscribed
 * / presence_on_unsubscribed: after a subscription really changed (not for
 * an idempotent repeat). presence_on_close: before hub_conn_close (leaves,
 * user:offline). */
void presence_on_open(struct presence *pr, struct hub *h, struct hub_conn *c);
void presence_on_subscribed(struct presence *pr, struct hub *h, struct hub_conn *c,
                            const char *name);
void presence_on_unsubscribed(struct presence *pr, struct hub *h, struct hub_conn *c,
                              const char *name);
void presence_on_close(struct presence *pr, struct hub *h, struct hub_conn *c);

/* The reply to a client's `presence` request (a presence frame or an error
 * frame), or NULL when out of memory. The caller owns the reference. */
struct frame *presence_request(struct presence *pr, struct hub *h, struct hub_conn *c,
                               const struct wsp_request *req);
/* Redis mode: hands a client's presence request to the cluster, which
 * queues the reply later. Returns false when it did not take it (one node,
 * access refused, Redis down): presence_request answers then. */
bool presence_request_cluster(struct presence *pr, struct hub *h, struct hub_conn *c,
                              const struct wsp_request *req);
/* The presence frame for cmd's output; partial adds "partial":true (this
 * node's connections only). id: the request's id JSON text (id_len 0:
 * none). NULL when out of memory. */
struct frame *presence_frame_build(const char *channel, const char *id, size_t id_len,
                                   const struct command *cmd, bool partial);
/* This node's presence frame for tenant's channel. */
struct frame *presence_local_frame(struct hub *h, const char *tenant, const char *channel,
                                   const char *id, size_t id_len, bool partial);
/* A SERVER_ERROR error frame echoing id. */
struct frame *presence_frame_error(const char *id, size_t id_len, const char *why);
/* Queues {"type":type,"channel":name,"user":…,"clientId":…} on every
 * connection of tenant's channel name but client_id's, and returns how
 * many got it; *out is the frame (the caller's reference), NULL when out
 * of memory. */
uint32_t presence_announce(struct hub *h, const char *tenant, const char *type, const char *name,
                           const char *user, const char *client_id, struct frame **out);

/* Handles a client's `publish` request: checks it is allowed and within the
 * rate, queues the client event on every other connection on the channel,
 * and returns the reply (published, or an error), or NULL when out of
 * memory. now_ms is a monotonic clock in milliseconds. */
struct frame *presence_publish(struct presence *pr, struct hub *h, struct hub_conn *c,
                               struct presence_bucket *b, int64_t now_ms,
                               const struct wsp_request *req);

/* THE client-event permission check, the one place to extend with the token's
 * rights (auth_allows(id, AUTH_PUBLISH, channel) once sec-auth exports it).
 * Today: the channel matches LIVEHUB_CLIENT_EVENTS and c is subscribed to
 * it. Returns 0 or the protocol error code to refuse with (*why set). */
int presence_may_publish(const struct presence *pr, struct hub *h, struct hub_conn *c,
                         const char *channel, enum wsp_code *code, const char **why);

/* Runs cmd for tenant on this node only: fills its output. Returns 0 or
 * LH_E*. */
int presence_run(struct presence *pr, struct hub *h, const char *tenant, struct command *cmd);
/* Runs the control command p->cmd for tenant p->tenant: fills its output,
 * sets p->status (0 or LH_E*) and calls p->on_done(p) if set (in Redis
 * mode later, when the cluster has answered). */
void presence_command(struct presence *pr, struct hub *h, struct publication *p);

/* Any thread: a copy of the counters. */
void presence_stats_read(struct presence_stats *out);

#endif
