/*
 * rpc_methods: what each HubService method does, without gRPC.
 *
 * rpc.c decodes a request with its method's input descriptor and hands it
 * here: a publishing method validates the request and fills a publication
 * (tenant, type, channels, timestamp, JSON data); when the hub has published
 * it, the response message is built from the finished publication. GetStats
 * is answered from the hub's counters. No grpc header is included here, so
 * all of this is unit-tested alone.
 *
 * Threads: every function here is pure (no shared state) and may run on any
 * thread.
 */
#ifndef LH_RPC_METHODS_H
#define LH_RPC_METHODS_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

#include "hub.h"
#include "livehub/v1/hub.pb-c.h"
#include "command.h"
#include "publication.h"

/* gRPC status codes, with the numbers of the gRPC specification (rpc.c
 * checks they match grpc_status_code). */
enum rpc_code {
	RPC_OK = 0,
	RPC_INVALID_ARGUMENT = 3,
	RPC_PERMISSION_DENIED = 7,
	RPC_RESOURCE_EXHAUSTED = 8,
	RPC_UNIMPLEMENTED = 12,
	RPC_INTERNAL = 13,
	RPC_UNAVAILABLE = 14,
	RPC_UNAUTHENTICATED = 16,
};

#define RPC_ERRMSG_MAX 256

/* Why a call failed: a status code and a message naming the bad field
 * ("event.progress: must be between 0 and 100"). */
struct rpc_error {
	enum rpc_code code;
	char msg[RPC_ERRMSG_MAX];
};

enum rpc_kind {
	RPC_KIND_PUBLISH, /* turns the request into a publication */
	RPC_KIND_STATS,   /* answered at once from hub_stats_read */
	RPC_KIND_STREAM,  /* PublishStream: a client stream of publish requests */
	RPC_KIND_HISTORY, /* History: a read of the hub, through the hand-off */
	RPC_KIND_COMMAND, /* a control command (command.h) run on the service thread */
};

struct rpc_method {
	const char *name; /* as in the service descriptor, "PublishJobProgress" */
	enum rpc_kind kind;
	const ProtobufCMessageDescriptor *input;
	const ProtobufCMessageDescriptor *output;
	/* RPC_KIND_PUBLISH only: validates req and fills p; see rpc_method_prepare. */
	int (*prepare)(const ProtobufCMessage *req, struct publication *p, struct rpc_error *err);
	/* RPC_KIND_COMMAND only: validates req and fills cmd; see rpc_command_prepare. */
	int (*command)(const ProtobufCMessage *req, struct publication *p, struct command *cmd,
	               struct rpc_error *err);
};

/* The method called name, or NULL when livehub does not implement it. */
const struct rpc_method *rpc_method_find(const char *name);

/* Checks that the method table matches the service descriptor (same input
 * and output types, publish responses shaped { PublishResult result = 1; }).
 * Returns 0, or LH_EINVAL after logging the mismatch. */
int rpc_methods_check(const ProtobufCServiceDescriptor *svc);

/* Validates req (a message of m->input) and fills p's input fields: zeroes
 * p first, all but p->data and p->data_cap, which must be NULL and 0 or a
 * buffer left by an earlier call (it is written into: a caller may keep one
 * across publications); then sets tenant, type, channels, ts_ms,
 * conflate_key and data. Returns 0 with p->data a malloc'd NUL-terminated JSON object
 * (p->data_cap bytes) that the caller frees with free(); or -1 with err
 * filled and p->data NULL. */
int rpc_method_prepare(const struct rpc_method *m, const ProtobufCMessage *req,
                       struct publication *p, struct rpc_error *err);

/* The response of a publishing method, built in place: every pointer in it
 * points into the storage itself or into the publication it was built from,
 * so it must not outlive that publication and is never freed. */
struct rpc_publish_reply {
	/* Every publish response is { PublishResult result = 1; }: one struct
	 * type serves them all, with the method's own descriptor. */
	Livehub__V1__PublishResponse msg;
	Livehub__V1__PublishResult result;
	Livehub__V1__ChannelPosition pos[LH_PUB_MAX_CHANNELS];
	Livehub__V1__ChannelPosition *pos_ptr[LH_PUB_MAX_CHANNELS];
};

/* Turns a publication the hub has finished into a status: RPC_OK, or an
 * error code with a message (p->status != 0). */
enum rpc_code rpc_publication_status(const struct publication *p, struct rpc_error *err);

/* Fills out with m's response for the successful publication p; returns the
 * message to serialize (&out->msg.base). */
const ProtobufCMessage *rpc_publish_reply_init(struct rpc_publish_reply *out,
                                               const struct rpc_method *m, struct publication *p);

/* ------------------------------------------------------------------------
 * PublishStream: each message is one publish, validated and converted as
 * the unary method its oneof names would; a rejected message is counted and
 * the stream goes on.
 * ---------------------------------------------------------------------- */

/* Validates req (a PublishStreamRequest) and fills p exactly as
 * rpc_method_prepare does for the unary method named by the oneof; error
 * messages start with the oneof field's name
 * ("job_progress.event.progress: must be between 0 and 100"). *sequence is
 * set to the client's sequence number even when validation fails. Same
 * return and ownership as rpc_method_prepare. */
int rpc_stream_prepare(const ProtobufCMessage *req, struct publication *p, uint64_t *sequence,
                       struct rpc_error *err);

/* What one PublishStream has done so far. Zero-initialise. */
struct rpc_stream_result {
	uint64_t accepted;
	uint64_t rejected;
	bool has_error;         /* the first rejection is below */
	uint64_t err_sequence;  /* its client sequence number */
	uint64_t err_index;     /* its position in the stream, from 0 */
	struct rpc_error error; /* its status and message */
};

/* Counts message number index (client sequence `sequence`) as rejected
 * with err; the first rejection is kept for the response. */
void rpc_stream_reject(struct rpc_stream_result *res, uint64_t sequence, uint64_t index,
                       const struct rpc_error *err);

/* The PublishStreamResponse, built in place; points into res, which must
 * outlive it. Never freed. */
struct rpc_stream_reply {
	Livehub__V1__PublishStreamResponse msg;
	Livehub__V1__PublishStreamError error;
};

/* Fills out from res; returns the message to serialize (&out->msg.base). */
const ProtobufCMessage *rpc_stream_reply_init(struct rpc_stream_reply *out,
                                              const struct rpc_stream_result *res);

/* ------------------------------------------------------------------------
 * History: the request becomes a publication of kind PUB_HISTORY, which
 * the service thread answers with hub_history().
 * ---------------------------------------------------------------------- */

#define RPC_HISTORY_LIMIT_DEFAULT 100
#define RPC_HISTORY_LIMIT_MAX     1000

/* Validates req (a HistoryRequest) and fills p (zeroed first). Returns 0,
 * or -1 with err filled. p holds no heap memory either way. */
int rpc_history_prepare(const ProtobufCMessage *req, struct publication *p, struct rpc_error *err);

/* The HistoryResponse for r. Returns the message to serialize, pointing
 * into r and into *mem (malloc'd; the caller frees it after packing), or
 * NULL when out of memory. */
const ProtobufCMessage *rpc_history_reply_init(Livehub__V1__HistoryResponse *out,
                                               const struct hub_history_result *r, void **mem);

/* ------------------------------------------------------------------------
 * Control commands (Presence, Disconnect, Subscribe, Unsubscribe,
 * ListChannels): validated here, run on the service thread by
 * presence_command, answered from the command's output.
 * ---------------------------------------------------------------------- */

/* Validates req (a message of m->input) and fills p (zeroed; tenant set,
 * p->cmd = cmd) and cmd (zeroed; its input). Returns 0, or -1 with err
 * filled. Nothing is allocated. */
int rpc_command_prepare(const struct rpc_method *m, const ProtobufCMessage *req,
                        struct publication *p, struct command *cmd, struct rpc_error *err);

/* A command's response, built in place; its strings point into the
 * command, which must outlive it. Free with rpc_command_reply_free. */
struct rpc_command_reply {
	union {
		ProtobufCMessage base;
		Livehub__V1__PresenceResponse presence;
		Livehub__V1__DisconnectResponse disconnect;
		Livehub__V1__SubscribeResponse subscribe;
		Livehub__V1__UnsubscribeResponse unsubscribe;
		Livehub__V1__ListChannelsResponse list;
	} u;
	void *items; /* malloc'd: the repeated field's messages */
	void **ptrs; /* malloc'd: pointers to them */
};

/* Fills out with m's response to the finished cmd; returns the message to
 * serialize, or NULL when out of memory. */
const ProtobufCMessage *rpc_command_reply_init(struct rpc_command_reply *out,
                                               const struct rpc_method *m,
                                               const struct command *cmd);
void rpc_command_reply_free(struct rpc_command_reply *out);

/* Fills out (a GetStatsResponse) from the hub's counters. out->version
 * points to a static string. */
void rpc_stats_reply_init(Livehub__V1__GetStatsResponse *out, const struct hub_stats_snapshot *s,
                          uint64_t uptime_s);

#endif
