/*
 * ws: the WebSocket and HTTP front on libwebsockets. The only module that
 * includes libwebsockets.h.
 *
 * Serves /ws (JWT checked before the upgrade: HTTP 401 without a valid
 * token) and /healthz on one port, runs the lws service thread that owns
 * every connection and the hub, and drains the hand-off queue there.
 */
#ifndef LH_WS_H
#define LH_WS_H

#include "auth.h"
#include "config.h"
#include "handoff.h"
#include "hub.h"

struct presence;

struct ws;

/* Creates the lws context and binds the port. The hub is created inside,
 * owned by the service thread. Returns NULL after logging why. */
struct ws *ws_new(const struct lh_config *cfg, struct auth *auth, struct handoff *q);
/* The bound WebSocket/HTTP port. */
int ws_port(const struct ws *w);
/* The hub, for hub_stats_read() from other threads. */
struct hub *ws_hub(struct ws *w);
/* The Redis broker (Redis mode), or NULL (memory mode). */
struct broker *ws_broker(struct ws *w);
/* Runs the service loop on the calling thread until ws_stop(); then closes
 * every client (1001) and returns. */
int ws_run(struct ws *w);
/* Any thread: asks the service loop to finish; closing the clients (1001,
 * after their queued frames) may then take up to grace_ms before the rest
 * are dropped. */
void ws_stop(struct ws *w, int grace_ms);
/* Any thread (SIGHUP): new handshakes verify with auth (ownership passes
 * to w) and the hub takes lim, applied on the service thread at its next
 * wake-up; open connections stay. */
void ws_reload(struct ws *w, struct auth *auth, const struct hub_limits *lim);
/* Presence settings from cfg (presence.h), or NULL when out of memory. */
struct presence *ws_presence_new(const struct lh_config *cfg);
/* Any thread (SIGHUP): the service thread takes pr (ownership passes to w)
 * at its next wake-up; open connections keep their rate-limit state. */
void ws_reload_presence(struct ws *w, struct presence *pr);
/* Any thread (SIGHUP): the origin allow-list, connection limits, rate
 * limit and message size and shape limits of cfg apply from the service
 * thread's next wake-up: to new handshakes and to the next message of
 * every connection (open connections over a lowered limit stay). */
void ws_reload_edge(struct ws *w, const struct lh_config *cfg);
/* Any thread: wakes the service thread (the hand-off queue's wake hook). */
void ws_wake(void *w);
void ws_free(struct ws *w);

#endif
