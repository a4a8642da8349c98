/*
 * A publication: one event on its way from a publisher (a gRPC call) to the
 * hub's service thread, where it gets its offset and is queued on every
 * subscriber of its channels.
 *
 * Ownership: the publisher allocates it and fills the input fields. After a
 * successful handoff_push() the service thread owns it until it calls
 * p->on_done(p) exactly once; from then on the publisher owns it again and
 * frees it. The hub never frees a publication.
 */
#ifndef LH_PUBLICATION_H
#define LH_PUBLICATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "names.h"

#define LH_PUB_MAX_CHANNELS 2
#define LH_IDEM_KEY_MAX     128 /* bytes of an idempotency key, printable ASCII */

/* What the service thread is asked to do with a publication. */
enum pub_kind {
	PUB_PUBLISH = 0, /* publish it (hub_publish) */
	PUB_HISTORY,     /* read a channel's history (hub_history) */
};

struct hub_history_result;

struct pub_position {
	uint64_t offset;
	char epoch[17];
	uint32_t subscribers;
};

struct command;

struct publication {
	struct publication *next; /* hand-off queue link */

	/* Input, set by the publisher. */
	char tenant[LH_TENANT_MAX + 1];
	char type[LH_TYPE_MAX + 1]; /* event type, e.g. "job:progress" */
	int nchannels;              /* 1..LH_PUB_MAX_CHANNELS */
	char channels[LH_PUB_MAX_CHANNELS][LH_CHANNEL_MAX + 1]; /* as clients name them */
	char *data; /* JSON object text of the payload; publisher-owned */
	size_t data_len;
	/* Bytes allocated at data. A publisher may keep the buffer for its next
	 * publication: rpc_method_prepare writes into it (see rpc_methods.h). */
	size_t data_cap;
	int64_t ts_ms;         /* publish time, ms since the Unix epoch */
	int64_t t0_us;         /* CLOCK_MONOTONIC µs the call arrived; 0 = unknown */
	uint64_t conflate_key; /* 0, or a key under which queued frames conflate (per channel) */
	enum pub_kind kind;    /* PUB_PUBLISH unless the publisher says otherwise */
	/* "" or the publish call's idempotency key: a retry with the same
	 * (tenant, key) inside the window gets the first result back. */
	char idem_key[LH_IDEM_KEY_MAX + 1];
	/* PUB_HISTORY input: the channel is channels[0]. */
	uint32_t hist_limit; /* entries at most; 0 = all */
	bool hist_has_since; /* only entries after hist_since_offset */
	uint64_t hist_since_offset;
	char hist_since_epoch[33];
	/* Not NULL: a control command (command.h) rather than an event; the
	 * service thread runs it instead of publishing. Publisher-owned. */
	struct command *cmd;

	/* Output, set by the service thread before on_done. */
	int status;           /* 0 or LH_E* */
	uint32_t subscribers; /* total frames queued */
	struct pub_position pos[LH_PUB_MAX_CHANNELS];
	bool duplicate; /* an idempotent retry: pos[] is the first call's result */
	/* PUB_HISTORY output, malloc'd by the hub; the publisher frees it with
	 * hub_history_free(). */
	struct hub_history_result *history;

	/* Called once on the service thread when the publication is done. */
	void (*on_done)(struct publication *p);
	void *owner; /* the publisher's context */
};

#endif
