/*
 * command: a control request (Presence, Disconnect, Subscribe, Unsubscribe,
 * ListChannels) on its way from a gRPC call to the service thread, which
 * alone may read or change the hub. A command rides the publication
 * hand-off (struct publication with cmd set), so it needs no lock and keeps
 * its place in line with publications of the same caller.
 *
 * Ownership: the publisher owns the command and fills its input; the service
 * thread fills the output (presence_command) before the publication's
 * on_done; command_clear() frees the output.
 */
#ifndef LH_COMMAND_H
#define LH_COMMAND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "names.h"

#define LH_CLIENT_ID_MAX   31  /* "c5f1e2a3-17" and room to spare */
#define LH_REASON_MAX      123 /* a WebSocket close reason, bytes */
#define LH_LIST_LIMIT_DEF  100
#define LH_LIST_LIMIT_MAX  10000
#define LH_CLOSE_RECONNECT 4100 /* DISCONNECTED, may reconnect */
#define LH_CLOSE_GOODBYE   4501 /* DISCONNECTED, must not reconnect */

enum command_kind {
	CMD_PRESENCE = 1, /* users and connection counts of a channel (or the tenant) */
	CMD_DISCONNECT,   /* close a connection, a user's or a tenant's */
	CMD_SUBSCRIBE,    /* put every connection of a user on a channel */
	CMD_UNSUBSCRIBE,  /* take every connection of a user off a channel */
	CMD_LIST_CHANNELS /* the tenant's channels with subscribers */
};

/* One line of a result: a user (Presence) or a channel (ListChannels). */
struct command_entry {
	char *name; /* malloc'd */
	uint32_t count;
};

struct command {
	enum command_kind kind;
	/* Input; the tenant is the publication's. */
	char channel[LH_CHANNEL_MAX +
	             1]; /* Presence ("" = whole tenant), (Un)Subscribe; ListChannels: prefix */
	char user[LH_USER_MAX + 1];           /* Disconnect, (Un)Subscribe */
	char client_id[LH_CLIENT_ID_MAX + 1]; /* Disconnect */
	char reason[LH_REASON_MAX + 1];       /* Disconnect: close reason, valid UTF-8 */
	int close_code; /* Disconnect: LH_CLOSE_RECONNECT or LH_CLOSE_GOODBYE */
	uint32_t limit; /* ListChannels */

	/* Output, set on the service thread. */
	uint32_t
	        connections; /* Presence: connections; Disconnect: closed; (Un)Subscribe: changed */
	uint32_t already;    /* Subscribe: already on the channel */
	uint32_t refused;    /* Subscribe: at their subscription limit */
	uint64_t offset;     /* Subscribe: the channel's newest offset */
	char epoch[17];      /* Subscribe: the channel's epoch */
	struct command_entry *entries; /* sorted by name */
	size_t nentries;
	bool truncated; /* ListChannels: more than limit matched */
};

/* Frees the output entries (the command itself is the owner's). */
void command_clear(struct command *cmd);

#endif
