/*
 * cluster: the service thread's side of Redis mode, between the hub, the
 * WebSocket front and the broker (broker.h). Not used in memory mode.
 *
 * - Follows (SSUBSCRIBE) exactly the channels that have a local subscriber,
 *   implicit ones ($tenant, $user:u) included, through the hub's
 *   first/last-subscriber hooks.
 * - Delivers what arrives on a followed channel to its local subscribers
 *   (hub_deliver), with the offset and epoch Redis gave it, once, in order:
 *   an event at or below the channel's top is a duplicate and is dropped.
 * - Answers `subscribe` with Redis's offset and epoch. When the node does
 *   not follow the channel yet, or the client's `since` needs the stream,
 *   the reply is asynchronous: the channel's live messages are held back
 *   meanwhile, the reply and the missed events (read with XRANGE) are
 *   queued, then the held messages. The connection is looked up by its id
 *   when the answer comes; a connection closed meanwhile gets nothing.
 * - Reads History from the stream.
 *
 * Threads: service thread only (broker callbacks run there).
 */
#ifndef LH_CLUSTER_H
#define LH_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>

struct broker;
struct hub;
struct hub_conn;
struct presence;
struct wsp_request;
struct frame;

struct cluster;

/* Returns the glue for hub h and broker b (both borrowed; installs the
 * hub's cluster hooks and the broker's channel and state callbacks), or
 * NULL when out of memory. hist (copied) gives the TTL of a channel's meta
 * key created by a subscribe. */
struct hist_limits;
struct cluster *cluster_new(struct hub *h, struct broker *b, const struct hist_limits *hist);
/* Clears the hooks and frees. Call after every connection is closed. */
void cluster_free(struct cluster *cl);
/* New history limits (SIGHUP): the TTL of meta keys a subscribe creates. */
void cluster_set_limits(struct cluster *cl, const struct hist_limits *hist);
/* Presence glue for subscribe replies (may change on SIGHUP). */
void cluster_set_presence(struct cluster *cl, struct presence *pr);

/* A connection opened / is about to close (the id lookup of async
 * replies). */
void cluster_conn_open(struct cluster *cl, struct hub_conn *c);
void cluster_conn_close(struct cluster *cl, struct hub_conn *c);

/* Subscribes c as ws.c's do_subscribe does (same errors, same reply), but
 * with Redis's positions. Returns an error frame to queue, or NULL with
 * *replied set when the reply was queued (or will be, asynchronously);
 * NULL without it when out of memory. The channel's rights were checked
 * by the caller. */
struct frame *cluster_subscribe(struct cluster *cl, struct hub_conn *c,
                                const struct wsp_request *req, bool *replied);

/* A server-side Subscribe (the Subscribe RPC, presence.c): subscribes c to
 * channel (explicit, already validated) and queues the server-initiated
 * {"type":"subscribed","channel":…,"offset":…,"epoch":…} (no id) with
 * Redis's position, now or once the channel is followed; announces the
 * presence join. Returns 0, LH_EEXIST (already on it: nothing sent), or
 * hub_subscribe's errors (LH_ELIMIT, LH_EINVAL, LH_ENOMEM). */
int cluster_subscribe_server(struct cluster *cl, struct hub_conn *c, const char *channel);

/* Publishes a frame of a channel without offset or history (a client event
 * or a presence join/leave already delivered locally) to the other nodes. */
void cluster_publish_raw(struct cluster *cl, const char *tenant, const char *name,
                         const struct frame *f);

#endif
