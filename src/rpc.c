/*
 * rpc: the gRPC server on the C core. See rpc.h; the method logic is in
 * rpc_methods.c.
 *
 * Threads: one completion-queue thread (cq_main) receives every call,
 * decodes it, runs the method logic, and frees calls when their last batch
 * completes. A publish call's reply is started on the WebSocket service
 * thread, from the publication's on_done; grpc_call_start_batch is
 * thread-safe and the completion comes back to the queue thread.
 *
 * A call lives in one struct call from the moment a request for it is armed
 * until its last batch has completed. Its references (refs, atomic):
 *   - one "logic" reference from arming on: it is given to the reply batch
 *     when that starts, or dropped when the arrival fails (shutdown);
 *   - one for a PublishStream's RECV_MESSAGE batch while it is outstanding.
 * RECV_CLOSE_ON_SERVER goes in the reply batch (as gRPC core's own tests
 * do) rather than in a batch of its own at arrival: that is one batch, one
 * completion and one outstanding tag less per call, and nothing here acts on
 * a cancellation before the reply anyway (a stream learns of it from its
 * failing read).
 * Whoever drops the last reference frees the call (usually the queue thread;
 * the service thread when starting its reply batch fails).
 */
#include "rpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "apikeys.h"
#include "broker.h"
#include "livehub.h"
#include "livehub/v1/hub.pb-c.h"
#include "log.h"
#include "pbjson.h"
#include "presence.h"
#include "presence_cluster.h"
#include "publication.h"
#include "rpc_extra.h"
#include "rpc_methods.h"

/* The biggest request accepted; larger ones get RESOURCE_EXHAUSTED from
 * gRPC itself. */
#define RPC_MAX_RECV_BYTES (1024 * 1024)
/* Requests kept armed per method, so that a call finds one waiting and a
 * burst does not wait for the queue thread to re-arm one at a time (calls
 * beyond them wait in gRPC's own queue until re-armed). Few: Debian's gRPC
 * is built with its debug checks on, and every completion searches the
 * completion queue's list of outstanding tags linearly, which every armed
 * request is on (16 per method made that search ~1,400 instructions per
 * streamed message). Publish methods get a few, the rest one. */
#ifndef ARMED_HOT
#define ARMED_HOT 4
#endif
#define ARMED_COLD 1
/* Requests armed for calls to methods livehub does not have. */
#define ARMED_UNKNOWN  2
#define MAX_METHODS    32
#define UNKNOWN_METHOD (-1)

_Static_assert((int)GRPC_STATUS_OK == RPC_OK, "status numbers");
_Static_assert((int)GRPC_STATUS_INVALID_ARGUMENT == RPC_INVALID_ARGUMENT, "status numbers");
_Static_assert((int)GRPC_STATUS_RESOURCE_EXHAUSTED == RPC_RESOURCE_EXHAUSTED, "status numbers");
_Static_assert((int)GRPC_STATUS_UNIMPLEMENTED == RPC_UNIMPLEMENTED, "status numbers");
_Static_assert((int)GRPC_STATUS_INTERNAL == RPC_INTERNAL, "status numbers");
_Static_assert((int)GRPC_STATUS_UNAVAILABLE == RPC_UNAVAILABLE, "status numbers");
_Static_assert((int)GRPC_STATUS_PERMISSION_DENIED == RPC_PERMISSION_DENIED, "status numbers");
_Static_assert((int)GRPC_STATUS_UNAUTHENTICATED == RPC_UNAUTHENTICATED, "status numbers");

/* The decode arena: see decode(). */
#define ARENA_BYTES (32 * 1024)

struct spill {
	struct spill *next;
	_Alignas(max_align_t) unsigned char mem[];
};

struct arena {
	size_t used;
	struct spill *spills;
	_Alignas(max_align_t) unsigned char buf[ARENA_BYTES];
};

#if defined(__SANITIZE_ADDRESS__)
#define ARENA_SPILL_ALL 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_SPILL_ALL 1
#endif
#endif
#ifndef ARENA_SPILL_ALL
#define ARENA_SPILL_ALL 0
#endif

/* Publications one PublishStream may have in the hub at once: the next
 * message is read only when one of these is free. */
#define STREAM_WINDOW 64
/* A slot keeps its JSON buffer for the next message up to this size (a
 * malloc, realloc and free less per message); a bigger one is freed. */
#define SLOT_KEEP_BYTES 4096
/* Completions the queue thread handles at most, once it owes the service
 * thread a wake-up, before it pays it even with more ready (next_event). */
#ifndef WAKE_BATCH
#define WAKE_BATCH 64
#endif

enum tag_kind { TAG_ARRIVED, TAG_REPLIED, TAG_READ, TAG_SHUTDOWN };

/* A completion-queue tag: what completed, and for which call. call is
 * atomic only so that ThreadSanitizer sees the hand-over (see
 * call_release_to_grpc). */
struct tag {
	enum tag_kind kind;
	_Atomic(struct call *) call; /* NULL for TAG_SHUTDOWN */
};

enum call_state {
	CALL_ARMED,      /* waiting for gRPC to deliver a call */
	CALL_ACTIVE,     /* arrived; decoding and validating */
	CALL_PUBLISHING, /* its publication is on the hand-off queue or in the hub */
	CALL_REPLYING,   /* the reply batch has been started */
};

struct call {
	struct rpc *r;
	_Atomic int refs;
	enum call_state state;      /* for logs and debugging; see the file comment */
	int method;                 /* index into r->methods, or UNKNOWN_METHOD */
	const struct rpc_method *m; /* NULL for UNKNOWN_METHOD */
	grpc_call *call;
	gpr_timespec deadline;
	grpc_call_details details; /* UNKNOWN_METHOD only */
	grpc_metadata_array req_md;
	grpc_byte_buffer *payload; /* the request, read with the call */
	int cancelled;             /* set by RECV_CLOSE_ON_SERVER (in the reply batch) */
	struct tag t_arrived, t_replied, t_read;
	/* The reply batch's buffers live here until it completes. */
	grpc_byte_buffer *reply;
	grpc_slice status_details;
	bool has_details;
	struct publication pub; /* owns pub.data */
	struct command cmd;     /* control methods: pub.cmd points here; owns its output */
	struct stream *stream;  /* PublishStream only; owned */
	struct call *park_next; /* r->park_mu: link of r->parked */
	/* The API key the call was authorized with; NULL without keys. Points
	 * into a key table that lives until rpc_stop (apikeys_store). */
	const struct apikey *key;
	int64_t start_us; /* arrival, for the latency metric */
};

struct rpc {
	struct hub *hub;
	struct broker *broker; /* Redis mode: unary publishes and stats; else NULL */
	struct handoff *q;
	grpc_server *server;
	grpc_completion_queue *cq;
	pthread_t thread;
	int port;
	int64_t started_ms; /* CLOCK_MONOTONIC */
	_Atomic bool stopping;
	struct tag t_shutdown;
	int nmethods;
	const struct rpc_method *methods[MAX_METHODS];
	void *registered[MAX_METHODS]; /* gRPC's handles of methods[] */
	int mslot[MAX_METHODS];        /* metrics slots of methods[] */
	int mslot_unknown;             /* metrics slot of unknown methods */
	struct rpc_extra *extra;       /* health and reflection */
	struct apikeys_store keys;     /* swapped by rpc_set_keys */

	pthread_mutex_t mu;
	pthread_cond_t cv;  /* signalled when a field below changes */
	bool shutdown_done; /* mu: the shutdown notify tag arrived */
	int ncalls;         /* mu: struct calls alive, armed ones included */

	/* Streams whose next publication found the hand-off queue full; every
	 * on_done retries them (a full queue guarantees on_dones to come). */
	pthread_mutex_t park_mu;
	struct call *parked; /* park_mu */
	_Atomic int nparked; /* raised before a push is tried, see stream_park */

	/* Queue thread only: a push found the hand-off queue empty and the
	 * service thread has not been woken for it yet. */
	bool wake_owed;
	unsigned unwoken; /* queue thread only: completions taken since the wake was owed */
	/* Queue thread only: where requests are decoded (see decode). */
	ProtobufCAllocator alloc;
	struct arena arena;
};

/* One message of a PublishStream on its way through the hub. */
struct slot {
	struct publication pub; /* owner: the stream's struct call; owns pub.data, kept
	                         * between messages (SLOT_KEEP_BYTES) */
	uint64_t sequence;      /* the client's number for the message */
	uint64_t index;         /* position in the stream, from 0 */
	struct slot *next_free;
};

/* The state of a PublishStream call, beside its struct call. The queue
 * thread reads messages; the service thread finishes publications. One
 * RECV_MESSAGE is outstanding at most: it is started by whichever thread
 * finds a free slot and no read running (reading, want_read). */
struct stream {
	pthread_mutex_t mu;
	struct slot *free;            /* mu: slots not in the hub */
	int used;                     /* mu: slots taken (being read, parked or in the hub) */
	bool want_read;               /* mu: reading stopped for want of a free slot */
	bool eof;                     /* mu: no more messages (half-close, cancel, error) */
	bool finished;                /* mu: the response has been started */
	struct slot *parked;          /* mu: waits for room in the hand-off queue */
	uint64_t received;            /* queue thread: messages read */
	grpc_byte_buffer *msg;        /* the RECV_MESSAGE target */
	struct rpc_stream_result res; /* mu */
	struct slot slots[STREAM_WINDOW];
};

static void stream_free(struct stream *s)
{
	if (!s)
		return;
	for (int i = 0; i < STREAM_WINDOW; i++)
		free(s->slots[i].pub.data);
	if (s->msg)
		grpc_byte_buffer_destroy(s->msg);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static void tag_init(struct tag *t, enum tag_kind kind, struct call *c)
{
	t->kind = kind;
	atomic_store_explicit(&t->call, c, memory_order_release);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------
 * Call lifetime.
 * ---------------------------------------------------------------------- */

/* Frees c and everything it owns; any thread. */
static void call_free(struct call *c)
{
	struct rpc *r = c->r;
	if (c->call)
		grpc_call_unref(c->call);
	grpc_metadata_array_destroy(&c->req_md);
	if (c->method == UNKNOWN_METHOD)
		grpc_call_details_destroy(&c->details);
	if (c->payload)
		grpc_byte_buffer_destroy(c->payload);
	if (c->reply)
		grpc_byte_buffer_destroy(c->reply);
	if (c->has_details)
		grpc_slice_unref(c->status_details);
	free(c->pub.data);
	command_clear(&c->cmd);
	stream_free(c->stream);
	free(c);

	pthread_mutex_lock(&r->mu);
	r->ncalls--;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

/* Called before a call is handed to gRPC (arming, a batch started from
 * another thread): a release on refs that the queue thread's acquire in
 * cq_main pairs with. gRPC's own locking already orders these accesses, but
 * ThreadSanitizer cannot see inside the uninstrumented library. */
static void call_release_to_grpc(struct call *c)
{
	atomic_fetch_add_explicit(&c->refs, 0, memory_order_release);
}

static void call_unref(struct call *c)
{
	if (atomic_fetch_sub(&c->refs, 1) == 1)
		call_free(c);
}

/* Arms one request for method index idx (or UNKNOWN_METHOD): gRPC fills a
 * new struct call when a call arrives. Returns 0 or LH_ENOMEM/LH_EIO. */
static int call_arm(struct rpc *r, int idx)
{
	struct call *c = calloc(1, sizeof *c);
	if (!c)
		return LH_ENOMEM;
	c->r = r;
	atomic_init(&c->refs, 1);
	c->state = CALL_ARMED;
	c->method = idx;
	c->m = idx == UNKNOWN_METHOD ? NULL : r->methods[idx];
	tag_init(&c->t_arrived, TAG_ARRIVED, c);
	tag_init(&c->t_replied, TAG_REPLIED, c);
	tag_init(&c->t_read, TAG_READ, c);
	grpc_metadata_array_init(&c->req_md);
	if (idx == UNKNOWN_METHOD)
		grpc_call_details_init(&c->details);
	pthread_mutex_lock(&r->mu);
	r->ncalls++;
	pthread_mutex_unlock(&r->mu);

	grpc_call_error e;
	call_release_to_grpc(c);
	if (idx == UNKNOWN_METHOD) {
		e = grpc_server_request_call(r->server, &c->call, &c->details, &c->req_md, r->cq,
		                             r->cq, &c->t_arrived);
	} else {
		/* A stream's messages are read later (GRPC_SRM_PAYLOAD_NONE). */
		grpc_byte_buffer **payload = c->m->kind == RPC_KIND_STREAM ? NULL : &c->payload;
		e = grpc_server_request_registered_call(r->server, r->registered[idx], &c->call,
		                                        &c->deadline, &c->req_md, payload, r->cq,
		                                        r->cq, &c->t_arrived);
	}
	if (e != GRPC_CALL_OK) {
		log_error("msg=\"grpc request_call failed\" error=%d", (int)e);
		call_free(c);
		return LH_EIO;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * Replies. Each consumes the call's logic reference.
 * ---------------------------------------------------------------------- */

/* Starts the reply batch: initial metadata, c->reply when set, the status
 * (with c->status_details when set) and the wait for the call's close. Any
 * thread. */
static void reply_start(struct call *c, enum rpc_code code)
{
	grpc_op ops[4];
	size_t n = 0;
	memset(ops, 0, sizeof ops);
	ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (c->reply) {
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n++].data.send_message.send_message = c->reply;
	}
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = (grpc_status_code)code;
	ops[n++].data.send_status_from_server.status_details =
	        c->has_details ? &c->status_details : NULL;
	ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;

	c->state = CALL_REPLYING;
	metrics_grpc_done(c->method == UNKNOWN_METHOD ? c->r->mslot_unknown
	                                              : c->r->mslot[c->method],
	                  (int)code, metrics_now_us() - c->start_us);
	grpc_call *call = c->call;
	call_release_to_grpc(c);
	grpc_call_error e = grpc_call_start_batch(call, ops, n, &c->t_replied, NULL);
	if (e != GRPC_CALL_OK) {
		/* No completion will come for this batch. */
		log_warn("msg=\"grpc reply batch refused\" error=%d", (int)e);
		call_unref(c);
	}
}

/* Replies with an error status and message. */
static void reply_error(struct call *c, enum rpc_code code, const char *msg)
{
	c->status_details = grpc_slice_from_copied_string(msg);
	c->has_details = true;
	reply_start(c, code);
}

/* Replies OK with msg serialized. */
static void reply_message(struct call *c, const ProtobufCMessage *msg)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	grpc_slice s = grpc_slice_malloc(len);
	protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
	c->reply = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	reply_start(c, RPC_OK);
}

static void unpark(struct rpc *r);
static void handle_stream(struct call *c);

/* ------------------------------------------------------------------------
 * Service authentication: the API key in the call's metadata (apikeys.c
 * decides), checked before the request is decoded; the tenant a key may
 * act for, checked on the decoded request.
 * ---------------------------------------------------------------------- */

/* The value of the call's authorization metadata: sets *v and *n, or leaves
 * *v NULL when absent. Returns -1 when the header is there more than once
 * (refused: which one counts would be ambiguous). */
static int auth_header(const grpc_metadata_array *md, const char **v, size_t *n)
{
	*v = NULL;
	*n = 0;
	for (size_t i = 0; i < md->count; i++) {
		grpc_slice k = md->metadata[i].key;
		if (GRPC_SLICE_LENGTH(k) != 13 ||
		    memcmp(GRPC_SLICE_START_PTR(k), "authorization", 13) != 0)
			continue;
		if (*v)
			return -1;
		*v = (const char *)GRPC_SLICE_START_PTR(md->metadata[i].value);
		*n = GRPC_SLICE_LENGTH(md->metadata[i].value);
	}
	return 0;
}

/* Logs a refused call by key name and peer, never the key. */
static void log_refused(struct call *c, const char *reason, const struct apikey *k)
{
	char *peer = grpc_call_get_peer(c->call);
	log_info("event=grpc_auth_refused method=%s reason=%s key=%s peer=%s", c->m->name, reason,
	         k ? k->name : "-", peer ? peer : "-");
	gpr_free(peer);
}

/* Checks the caller's API key against the scope c's method needs. Returns
 * true when the call may go on (c->key set); else replies UNAUTHENTICATED
 * or PERMISSION_DENIED and returns false. */
static bool authorize(struct call *c)
{
	const struct apikeys *t = apikeys_store_get(&c->r->keys);
	c->key = NULL;
	if (!t)
		return true; /* development mode */
	const char *v;
	size_t n;
	char msg[RPC_ERRMSG_MAX];
	enum apikey_verdict verdict;
	if (auth_header(&c->req_md, &v, &n)) {
		snprintf(msg, sizeof msg, "authorization metadata sent more than once");
		verdict = APIKEY_MALFORMED;
	} else {
		verdict = apikeys_check(t, v, n, apikeys_method_scope(c->m->name), &c->key, msg,
		                        sizeof msg);
	}
	static const char *const why[] = {"ok", "missing", "malformed", "unknown_key", "scope"};
	if (verdict == APIKEY_OK)
		return true;
	log_refused(c, why[verdict], c->key);
	reply_error(c, verdict == APIKEY_SCOPE ? RPC_PERMISSION_DENIED : RPC_UNAUTHENTICATED, msg);
	return false;
}

/* Checks that c's key may act for the tenant req names (its top-level
 * tenant_id field, found through the descriptor, so methods added later are
 * covered). A tenant-restricted key may not call a method whose request
 * names no tenant (node-wide methods such as GetStats report on every
 * tenant). Returns true, or replies PERMISSION_DENIED and returns false. */
static bool authorize_tenant(struct call *c, const ProtobufCMessage *req)
{
	if (!c->key || c->key->ntenants == 0)
		return true;
	char msg[RPC_ERRMSG_MAX];
	const ProtobufCFieldDescriptor *f =
	        protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "tenant_id");
	if (!f || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED) {
		snprintf(msg, sizeof msg,
		         "API key \"%s\" is restricted to tenants; %s is not a per-tenant method",
		         c->key->name, c->m->name);
	} else {
		const char *tenant = *(const char *const *)((const char *)req + f->offset);
		if (!tenant)
			tenant = "";
		if (apikeys_tenant_ok(c->key, tenant, strlen(tenant), "tenant_id", msg, sizeof msg))
			return true;
	}
	log_refused(c, "tenant", c->key);
	reply_error(c, RPC_PERMISSION_DENIED, msg);
	return false;
}

/* on_done of a publication: runs on the WebSocket service thread once the
 * hub has queued (or refused) it. */
static void on_published(struct publication *p)
{
	struct call *c = p->owner;
	metrics_observe(&lh_metrics.publish_latency, metrics_now_us() - c->start_us);
	if (atomic_load(&c->r->nparked) > 0)
		unpark(c->r);
	struct rpc_error err;
	if (rpc_publication_status(p, &err) != RPC_OK) {
		reply_error(c, err.code, err.msg);
		return;
	}
	struct rpc_publish_reply rep;
	reply_message(c, rpc_publish_reply_init(&rep, c->m, p));
}

/* ------------------------------------------------------------------------
 * Handling an arrived call, on the queue thread.
 * ---------------------------------------------------------------------- */

/* Memory for decoded requests, queue thread only: protobuf-c allocates
 * every submessage, string and map entry of a request separately, which made
 * malloc and free a visible share of a publish. Requests are decoded into a
 * bump arena instead and dropped all at once (arena_reset) when the call has
 * been handled; a request too big for it spills to malloc. Under ASan every
 * allocation spills, so that overflows are still caught. */
static void *arena_alloc(void *data, size_t size)
{
	struct arena *a = data;
	size_t n = (size + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1);
	if (!ARENA_SPILL_ALL && n <= ARENA_BYTES - a->used) {
		void *p = a->buf + a->used;
		a->used += n;
		return p;
	}
	struct spill *sp = malloc(sizeof *sp + size);
	if (!sp)
		return NULL;
	sp->next = a->spills;
	a->spills = sp;
	return sp->mem;
}

/* Memory is given back by arena_reset only. */
static void arena_free(void *data, void *p)
{
}

/* Drops everything decoded since the last reset. */
static void arena_reset(struct arena *a)
{
	while (a->spills) {
		struct spill *sp = a->spills;
		a->spills = sp->next;
		free(sp);
	}
	a->used = 0;
}

/* Decodes the request read with the call into the queue thread's arena.
 * Returns the message, valid until arena_reset(&r->arena), or NULL with err
 * filled. */
static ProtobufCMessage *decode(struct call *c, struct rpc_error *err)
{
	grpc_byte_buffer_reader rd;
	err->code = RPC_INVALID_ARGUMENT;
	if (!c->payload) {
		snprintf(err->msg, sizeof err->msg, "request: no message sent");
		return NULL;
	}
	/* A plain buffer of one slice (the usual small request) is read in
	 * place; anything else is decompressed and/or joined into a copy. */
	const grpc_slice_buffer *sb = &c->payload->data.raw.slice_buffer;
	bool in_place = c->payload->type == GRPC_BB_RAW &&
	                c->payload->data.raw.compression == GRPC_COMPRESS_NONE && sb->count == 1;
	grpc_slice s;
	if (in_place) {
		s = sb->slices[0];
	} else {
		if (!grpc_byte_buffer_reader_init(&rd, c->payload)) {
			snprintf(err->msg, sizeof err->msg,
			         "request: cannot be read (compression?)");
			return NULL;
		}
		s = grpc_byte_buffer_reader_readall(&rd);
		grpc_byte_buffer_reader_destroy(&rd);
	}
	/* protobuf-c recurses once per nesting level with no limit of its own:
	 * a 40 KB request of nested Structs would overflow the stack. Check the
	 * nesting on the wire bytes first, without recursion (not needed for
	 * a request too short to nest that deep; most are). */
	ProtobufCMessage *req = NULL;
	size_t len = GRPC_SLICE_LENGTH(s);
	if (len <= PBJSON_WIRE_SHALLOW_BYTES ||
	    pbjson_check_depth(c->m->input, GRPC_SLICE_START_PTR(s), len) == 0)
		req = protobuf_c_message_unpack(c->m->input, &c->r->alloc, len,
		                                GRPC_SLICE_START_PTR(s));
	if (!in_place)
		grpc_slice_unref(s);
	grpc_byte_buffer_destroy(c->payload);
	c->payload = NULL;
	if (!req)
		snprintf(err->msg, sizeof err->msg,
		         "request: malformed protobuf or nested deeper than %d levels",
		         PBJSON_WIRE_MAX_DEPTH);
	return req;
}

static void handle_stats(struct call *c)
{
	struct hub_stats_snapshot snap;
	Livehub__V1__GetStatsResponse resp;
	hub_stats_read(c->r->hub, &snap);
	rpc_stats_reply_init(&resp, &snap, (uint64_t)(mono_ms() - c->r->started_ms) / 1000);
	struct rpc_extra_stats st;
	rpc_extra_stats(&resp, &st, &snap, handoff_depth(c->r->q));
	struct presence_stats ps;
	presence_stats_read(&ps);
	resp.client_events = ps.client_events;
	resp.client_events_rate_limited = ps.client_events_limited;
	resp.presence_events = ps.presence_events;
	resp.disconnects = ps.disconnects;
	resp.control_commands = ps.commands;
	if (c->r->broker) {
		struct broker_stats bs;
		broker_stats_read(c->r->broker, &bs);
		resp.redis_up = bs.up;
		resp.redis_reconnects = bs.reconnects;
		resp.redis_commands_in_flight = bs.cmds_in_flight;
		resp.redis_publishes = bs.publishes;
		resp.redis_publish_failures = bs.publish_failures;
		resp.redis_messages_received = bs.messages_received;
		resp.redis_channels_followed = bs.channels_followed;
		resp.redis_commands = bs.commands;
		resp.node_id = (char *)broker_node_id(c->r->broker);
	}
	struct pcluster_stats cs;
	pcluster_stats_read(&cs);
	resp.cluster_nodes = cs.nodes;
	resp.cluster_connections = cs.connections;
	resp.presence_writes = cs.ops;
	resp.presence_write_batches = cs.batches;
	resp.presence_expired = cs.expired;
	resp.cluster_commands_sent = cs.ctl_sent;
	resp.cluster_commands_applied = cs.ctl_applied;
	resp.presence_redis_errors = cs.errors;
	reply_message(c, &resp.base);
}

/* Queue thread: pushes p, deferring the service thread's wake-up until
 * this thread runs out of ready completions (see next_event). Returns 0 or
 * LH_EFULL. */
static int push_lazy(struct rpc *r, struct publication *p)
{
	int rc = handoff_push_lazy(r->q, p);
	if (rc == 1)
		r->wake_owed = true;
	return rc < 0 ? rc : 0;
}

/* Redis mode: a unary publish goes straight to the broker thread, which
 * runs the publish script (the service thread only sees its on_done).
 * After a successful broker_publish, c belongs to on_done. */
static void publish_redis(struct call *c)
{
	int rc = broker_publish(c->r->broker, &c->pub);
	if (rc == 0)
		return;
	char msg[200], why[160];
	if (rc == LH_EFULL) {
		reply_error(c, RPC_RESOURCE_EXHAUSTED,
		            "too many publications waiting for Redis; retry with backoff");
	} else if (rc == LH_EUNAVAILABLE) {
		broker_last_error(c->r->broker, why, sizeof why);
		snprintf(msg, sizeof msg, "redis unavailable: %s", why);
		reply_error(c, RPC_UNAVAILABLE, msg);
	} else {
		reply_error(c, RPC_INTERNAL, "out of memory");
	}
}

/* Validates the request and hands its publication to the service thread.
 * After a successful handoff_push, c belongs to the publication's on_done
 * and this thread must not touch it. */
static void handle_publish(struct call *c, const ProtobufCMessage *req)
{
	struct rpc *r = c->r;
	struct rpc_error err;
	char msg[128];

	if (rpc_method_prepare(c->m, req, &c->pub, &err)) {
		reply_error(c, err.code, err.msg);
		return;
	}
	c->pub.t0_us = c->start_us;
	c->pub.on_done = on_published;
	c->pub.owner = c;
	c->state = CALL_PUBLISHING;
	if (r->broker) {
		publish_redis(c);
		return;
	}
	/* While rpc_stop drains, calls that got in are still published: the
	 * service thread keeps taking the queue until gRPC has stopped. */
	if (push_lazy(r, &c->pub) == 0)
		return;
	if (atomic_load(&r->stopping)) {
		reply_error(c, RPC_UNAVAILABLE, "livehub is shutting down");
		return;
	}
	snprintf(msg, sizeof msg, "publish queue full (%zu waiting); retry with backoff",
	         handoff_depth(r->q));
	reply_error(c, RPC_RESOURCE_EXHAUSTED, msg);
}

/* on_done of a History read, on the service thread. */
static void on_history(struct publication *p)
{
	struct call *c = p->owner;
	if (atomic_load(&c->r->nparked) > 0)
		unpark(c->r);
	struct hub_history_result *res = p->history;
	p->history = NULL;
	struct rpc_error err;
	if (rpc_publication_status(p, &err) != RPC_OK) {
		hub_history_free(res);
		reply_error(c, err.code, err.msg);
		return;
	}
	Livehub__V1__HistoryResponse resp;
	void *mem = NULL;
	const ProtobufCMessage *msg = rpc_history_reply_init(&resp, res, &mem);
	if (msg)
		reply_message(c, msg);
	else
		reply_error(c, RPC_INTERNAL, "out of memory");
	free(mem);
	hub_history_free(res);
}

/* Validates a History request and hands it to the service thread, like a
 * publication (the hub is only read there). */
static void handle_history(struct call *c, const ProtobufCMessage *req)
{
	struct rpc_error err;
	if (rpc_history_prepare(req, &c->pub, &err)) {
		reply_error(c, err.code, err.msg);
		return;
	}
	c->pub.on_done = on_history;
	c->pub.owner = c;
	c->state = CALL_PUBLISHING;
	if (push_lazy(c->r, &c->pub) == 0)
		return;
	reply_error(c, atomic_load(&c->r->stopping) ? RPC_UNAVAILABLE : RPC_RESOURCE_EXHAUSTED,
	            atomic_load(&c->r->stopping) ? "livehub is shutting down"
	                                         : "hub queue full; retry with backoff");
}

/* on_done of a control command: runs on the service thread once the hub
 * has run it. */
static void on_command_done(struct publication *p)
{
	struct call *c = p->owner;
	if (atomic_load(&c->r->nparked) > 0)
		unpark(c->r);
	struct rpc_error err;
	if (rpc_publication_status(p, &err) != RPC_OK) {
		reply_error(c, err.code, err.msg);
		return;
	}
	struct rpc_command_reply rep;
	const ProtobufCMessage *msg = rpc_command_reply_init(&rep, c->m, &c->cmd);
	if (msg)
		reply_message(c, msg);
	else
		reply_error(c, RPC_INTERNAL, "out of memory");
	rpc_command_reply_free(&rep);
}

/* Validates a control request and hands its command to the service thread,
 * which alone may read the hub (same path and ownership as a publish). */
static void handle_command(struct call *c, const ProtobufCMessage *req)
{
	struct rpc *r = c->r;
	struct rpc_error err;
	if (rpc_command_prepare(c->m, req, &c->pub, &c->cmd, &err)) {
		reply_error(c, err.code, err.msg);
		return;
	}
	c->pub.on_done = on_command_done;
	c->pub.owner = c;
	c->state = CALL_PUBLISHING;
	if (push_lazy(r, &c->pub) == 0)
		return;
	if (atomic_load(&r->stopping))
		reply_error(c, RPC_UNAVAILABLE, "livehub is shutting down");
	else
		reply_error(c, RPC_RESOURCE_EXHAUSTED, "hand-off queue full; retry with backoff");
}

static void handle_unknown(struct call *c)
{
	char msg[300];
	grpc_slice m = c->details.method;
	int n = (int)GRPC_SLICE_LENGTH(m);
	snprintf(msg, sizeof msg, "method %.*s is not implemented by livehub", n > 200 ? 200 : n,
	         (const char *)GRPC_SLICE_START_PTR(m));
	reply_error(c, RPC_UNIMPLEMENTED, msg);
}

/* A requested call arrived (ok) or the request was cancelled by shutdown
 * (!ok). Re-arms first so the next call does not wait for this one. */
static void on_arrived(struct call *c, bool ok)
{
	struct rpc *r = c->r;
	if (!ok) {
		call_unref(c);
		return;
	}
	c->state = CALL_ACTIVE;
	c->start_us = metrics_now_us();
	if (!atomic_load(&r->stopping) && call_arm(r, c->method))
		log_warn("msg=\"cannot re-arm a gRPC request; fewer calls will be taken at once\"");

	if (!c->m) {
		handle_unknown(c);
		return;
	}
	if (!authorize(c))
		return;
	if (c->m->kind == RPC_KIND_STREAM) {
		handle_stream(c);
		return;
	}
	struct rpc_error err;
	ProtobufCMessage *req = decode(c, &err);
	if (!req) {
		reply_error(c, err.code, err.msg);
		return;
	}
	if (authorize_tenant(c, req)) {
		if (c->m->kind == RPC_KIND_STATS)
			handle_stats(c);
		else if (c->m->kind == RPC_KIND_HISTORY)
			handle_history(c, req);
		else if (c->m->kind == RPC_KIND_COMMAND)
			handle_command(c, req);
		else
			handle_publish(c, req);
	}
	arena_reset(&r->arena);
}

/* ------------------------------------------------------------------------
 * PublishStream. The call's logic reference is given to the response batch,
 * started once the client has half-closed (or the call failed) and every
 * publication of the stream is done.
 * ---------------------------------------------------------------------- */

/* Starts a RECV_MESSAGE batch for the next message; any thread. */
static void stream_read(struct call *c)
{
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_RECV_MESSAGE;
	op.data.recv_message.recv_message = &c->stream->msg;
	atomic_fetch_add(&c->refs, 1);
	call_release_to_grpc(c);
	if (grpc_call_start_batch(c->call, &op, 1, &c->t_read, NULL) == GRPC_CALL_OK)
		return;
	/* No completion will come: the stream ends here. */
	pthread_mutex_lock(&c->stream->mu);
	c->stream->eof = true;
	pthread_mutex_unlock(&c->stream->mu);
	call_unref(c);
}

/* With s->mu held: whether the response is due now (then it is marked
 * started and the caller sends it after unlocking). */
static bool stream_due(struct stream *s)
{
	if (s->finished || !s->eof || s->used > 0)
		return false;
	s->finished = true;
	return true;
}

/* With s->mu held: whether a read may start now (then it is marked
 * started). */
static bool stream_can_read(struct stream *s)
{
	if (s->eof || s->parked || !s->free) {
		s->want_read = !s->eof;
		return false;
	}
	s->want_read = false;
	return true;
}

/* Sends the PublishStreamResponse; consumes the logic reference. */
static void stream_respond(struct call *c)
{
	struct stream *s = c->stream;
	pthread_mutex_lock(&s->mu);
	struct rpc_stream_result res = s->res;
	pthread_mutex_unlock(&s->mu);
	struct rpc_stream_reply rep;
	reply_message(c, rpc_stream_reply_init(&rep, &res));
}

/* Returns slot to the free list and, after a rejection, records err; then
 * starts the next read and/or the response as the state allows. reader:
 * the caller is the queue thread handling the last read, so no read is
 * running and continuing is its job. */
static void stream_slot_done(struct call *c, struct slot *sl, const struct rpc_error *err,
                             bool reader)
{
	struct stream *s = c->stream;
	if (sl->pub.data_cap > SLOT_KEEP_BYTES) {
		free(sl->pub.data);
		sl->pub.data = NULL;
		sl->pub.data_cap = 0;
	}
	pthread_mutex_lock(&s->mu);
	if (err)
		rpc_stream_reject(&s->res, sl->sequence, sl->index, err);
	else
		s->res.accepted++;
	sl->next_free = s->free;
	s->free = sl;
	s->used--;
	bool read = (reader || s->want_read) && stream_can_read(s);
	bool due = stream_due(s);
	pthread_mutex_unlock(&s->mu);
	if (read)
		stream_read(c);
	if (due)
		stream_respond(c);
}

/* on_done of a stream's publication, on the service thread. */
static void on_stream_published(struct publication *p)
{
	struct slot *sl = (struct slot *)p;
	struct call *c = p->owner;
	struct rpc_error err;
	if (atomic_load(&c->r->nparked) > 0)
		unpark(c->r);
	stream_slot_done(c, sl, rpc_publication_status(p, &err) == RPC_OK ? NULL : &err, false);
}

/* Pushes sl (lazily from the queue thread). Returns 0 or LH_EFULL. */
static int stream_push(struct call *c, struct slot *sl, bool queue_thread)
{
	if (queue_thread)
		return push_lazy(c->r, &sl->pub);
	return handoff_push(c->r->q, &sl->pub);
}

/* After sl went into the hub (s->parked is clear): reads on if a slot is
 * free. */
static void stream_pushed(struct call *c)
{
	pthread_mutex_lock(&c->stream->mu);
	bool read = stream_can_read(c->stream);
	pthread_mutex_unlock(&c->stream->mu);
	if (read)
		stream_read(c);
}

/* Pushes sl, or parks the stream until the hand-off queue has room: the
 * stream stops reading, so the client is held back by HTTP/2 flow control.
 * After a failed first try, nparked is raised before the push is tried
 * again, so if that fails too, the on_dones of the publications filling the
 * queue come after it, see it and retry. */
static void stream_park(struct call *c, struct slot *sl)
{
	struct rpc *r = c->r;
	if (stream_push(c, sl, true) == 0) {
		stream_pushed(c);
		return;
	}
	atomic_fetch_add(&r->nparked, 1);
	pthread_mutex_lock(&r->park_mu);
	if (stream_push(c, sl, true) == 0) {
		atomic_fetch_sub(&r->nparked, 1);
		pthread_mutex_unlock(&r->park_mu);
		stream_pushed(c);
		return;
	}
	pthread_mutex_lock(&c->stream->mu);
	c->stream->parked = sl;
	pthread_mutex_unlock(&c->stream->mu);
	c->park_next = r->parked;
	r->parked = c;
	pthread_mutex_unlock(&r->park_mu);
}

/* Retries the parked streams' pushes; any thread (on_done). Streams that
 * still find the queue full stay parked. */
static void unpark(struct rpc *r)
{
	struct call *done = NULL;
	pthread_mutex_lock(&r->park_mu);
	struct call **pp = &r->parked;
	while (*pp) {
		struct call *c = *pp;
		if (stream_push(c, c->stream->parked, false)) {
			pp = &c->park_next;
			continue;
		}
		*pp = c->park_next;
		atomic_fetch_sub(&r->nparked, 1);
		pthread_mutex_lock(&c->stream->mu);
		c->stream->parked = NULL;
		pthread_mutex_unlock(&c->stream->mu);
		c->park_next = done;
		done = c;
	}
	pthread_mutex_unlock(&r->park_mu);
	while (done) {
		struct call *c = done;
		done = c->park_next;
		stream_pushed(c);
	}
}

/* Whether the stream's key may publish for sl's tenant; else fills err
 * (the message's rejection, naming the field as "broadcast_tenant.tenant_id"
 * like the other rejections). req is the decoded
 * PublishStreamRequest. */
static bool stream_tenant_ok(struct call *c, const ProtobufCMessage *req, struct slot *sl,
                             struct rpc_error *err)
{
	const char *t = sl->pub.tenant;
	if (!c->key || c->key->ntenants == 0)
		return true;
	const Livehub__V1__PublishStreamRequest *r = (const void *)req;
	const ProtobufCFieldDescriptor *f =
	        protobuf_c_message_descriptor_get_field(req->descriptor, (unsigned)r->request_case);
	char field[80];
	snprintf(field, sizeof field, "%s.tenant_id", f ? f->name : "request");
	if (apikeys_tenant_ok(c->key, t, strlen(t), field, err->msg, sizeof err->msg))
		return true;
	err->code = RPC_PERMISSION_DENIED;
	/* Per message, so at debug: the stream's response reports it. */
	log_debug("event=grpc_auth_refused method=%s reason=tenant key=%s", c->m->name,
	          c->key->name);
	return false;
}

/* Turns one received message into a publication and pushes it. */
static void stream_message(struct call *c)
{
	struct stream *s = c->stream;
	struct rpc_error err;
	pthread_mutex_lock(&s->mu);
	struct slot *sl = s->free; /* a read only starts with a slot free */
	s->free = sl->next_free;
	s->used++;
	pthread_mutex_unlock(&s->mu);
	sl->index = s->received++;
	sl->sequence = 0;

	c->payload = s->msg;
	s->msg = NULL;
	ProtobufCMessage *req = decode(c, &err);
	int rc = req ? rpc_stream_prepare(req, &sl->pub, &sl->sequence, &err) : -1;
	if (rc == 0 && !stream_tenant_ok(c, req, sl, &err))
		rc = -1;
	sl->pub.t0_us = metrics_now_us();
	arena_reset(&c->r->arena);
	if (rc) {
		stream_slot_done(c, sl, &err, true);
		return;
	}
	sl->pub.on_done = on_stream_published;
	sl->pub.owner = c;
	stream_park(c, sl);
}

/* A RECV_MESSAGE completed, on the queue thread: a message, or the end of
 * the stream (half-close: ok with no message; cancelled or broken: !ok). */
static void on_read(struct call *c, bool ok)
{
	struct stream *s = c->stream;
	if (ok && s->msg) {
		stream_message(c);
	} else {
		pthread_mutex_lock(&s->mu);
		s->eof = true;
		bool due = stream_due(s);
		pthread_mutex_unlock(&s->mu);
		if (due)
			stream_respond(c);
	}
	call_unref(c); /* the read's reference */
}

/* A PublishStream call arrived: set up its slots and read the first
 * message. */
static void handle_stream(struct call *c)
{
	struct stream *s = calloc(1, sizeof *s);
	if (!s) {
		reply_error(c, RPC_INTERNAL, "out of memory");
		return;
	}
	pthread_mutex_init(&s->mu, NULL);
	for (int i = STREAM_WINDOW - 1; i >= 0; i--) {
		s->slots[i].next_free = s->free;
		s->free = &s->slots[i];
	}
	c->stream = s;
	stream_read(c);
	/* A read that could not start ended the stream: answer it. */
	pthread_mutex_lock(&s->mu);
	bool due = stream_due(s);
	pthread_mutex_unlock(&s->mu);
	if (due)
		stream_respond(c);
}

static void on_shutdown_done(struct rpc *r)
{
	pthread_mutex_lock(&r->mu);
	r->shutdown_done = true;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

/* The next completion, paying the service thread's wake-up when it is owed
 * and due. After a push that found the hand-off queue empty the wake is
 * owed; it is paid only once this thread has nothing ready (a non-blocking
 * look at the queue comes back empty) or has taken WAKE_BATCH more
 * completions (so a publication never waits behind more than that).
 * With both threads on one core, waking at once meant a switch to the
 * service thread for each few publications (it preempts this thread, takes
 * the one or two queued, sleeps again): 28 % of the core in context switches
 * on a PublishStream. The non-blocking look costs an epoll_wait only when
 * the queue is empty, and then the thread was about to block anyway. */
static grpc_event next_event(struct rpc *r)
{
	if (r->wake_owed && r->unwoken++ < WAKE_BATCH) {
		grpc_event ev =
		        grpc_completion_queue_next(r->cq, gpr_inf_past(GPR_CLOCK_MONOTONIC), NULL);
		if (ev.type != GRPC_QUEUE_TIMEOUT)
			return ev;
	}
	if (r->wake_owed) {
		r->wake_owed = false;
		r->unwoken = 0;
		handoff_wake(r->q);
	}
	return grpc_completion_queue_next(r->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
}

/* The completion-queue thread: dispatches completions until the queue is
 * shut down and drained. */
static void *cq_main(void *arg)
{
	struct rpc *r = arg;
	for (;;) {
		grpc_event ev = next_event(r);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		struct tag *t = ev.tag;
		struct call *c = atomic_load_explicit(&t->call, memory_order_acquire);
		if (c)
			atomic_load_explicit(&c->refs, memory_order_acquire);
		switch (t->kind) {
		case TAG_ARRIVED: on_arrived(c, ev.success); break;
		case TAG_REPLIED:
			if (c->cancelled)
				log_debug("msg=\"grpc call cancelled\"");
			call_unref(c);
			break;
		case TAG_READ: on_read(c, ev.success); break;
		case TAG_SHUTDOWN: on_shutdown_done(r); break;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------------------
 * Start and stop.
 * ---------------------------------------------------------------------- */

/* absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore), by
 * its mangled name in Debian's abseil (inline namespace debian3), weak so
 * that another abseil build simply skips it. Debian builds abseil without
 * NDEBUG, which leaves deadlock detection on: every lock gRPC takes then
 * updates a global lock graph under a global lock, about 4% of the CPU of
 * a unary publish (perf). The enum is an int in the C++ ABI. */
extern void _ZN4absl7debian329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE(int mode)
        __attribute__((weak));

static void absl_deadlock_detection_off(void)
{
	if (_ZN4absl7debian329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE)
		_ZN4absl7debian329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE(0);
}

/* How many requests to keep armed for m (see ARMED_HOT). */
static int armed_for(const struct rpc_method *m)
{
	return m->kind == RPC_KIND_PUBLISH || m->kind == RPC_KIND_STREAM ? ARMED_HOT : ARMED_COLD;
}

/* Registers every method of the service that livehub implements. */
static int register_methods(struct rpc *r)
{
	const ProtobufCServiceDescriptor *svc = &livehub__v1__hub_service__descriptor;
	if (rpc_methods_check(svc))
		return LH_EINVAL;
	for (unsigned i = 0; i < svc->n_methods && r->nmethods < MAX_METHODS; i++) {
		const struct rpc_method *m = rpc_method_find(svc->methods[i].name);
		if (!m)
			continue;
		char path[256];
		snprintf(path, sizeof path, "/%s/%s", svc->name, m->name);
		/* A stream's messages are read one by one with RECV_MESSAGE. */
		grpc_server_register_method_payload_handling payload =
		        m->kind == RPC_KIND_STREAM ? GRPC_SRM_PAYLOAD_NONE
		                                   : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;
		void *h = grpc_server_register_method(r->server, path, NULL, payload, 0);
		if (!h) {
			log_error("msg=\"grpc cannot register method\" method=%s", path);
			return LH_EIO;
		}
		r->methods[r->nmethods] = m;
		r->mslot[r->nmethods] = metrics_grpc_method(path);
		r->registered[r->nmethods++] = h;
	}
	return 0;
}

/* Reads the whole file at path into a malloc'd NUL-terminated string the
 * caller frees; NULL after logging (setting names the configuration). */
static char *read_pem(const char *path, const char *setting)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0;
	if (!f)
		goto fail;
	for (;;) {
		if (cap - len < 4096) {
			char *nb = cap < (1u << 20) ? realloc(buf, cap + 4096 + 1) : NULL;
			if (!nb)
				goto fail;
			buf = nb;
			cap += 4096;
		}
		size_t got = fread(buf + len, 1, cap - len, f);
		len += got;
		if (got == 0)
			break;
	}
	if (ferror(f) || len == 0)
		goto fail;
	fclose(f);
	buf[len] = '\0';
	return buf;
fail:
	log_error("msg=\"cannot read a TLS file\" setting=%s file=%s", setting, path);
	if (f)
		fclose(f);
	free(buf);
	return NULL;
}

/* The server credentials cfg asks for: TLS with the gRPC certificate and
 * key, requiring and verifying a client certificate when a client CA is
 * set; plaintext otherwise. NULL after logging why. */
static grpc_server_credentials *server_creds(const struct lh_config *cfg)
{
	if (!cfg->grpc_tls_cert[0])
		return grpc_insecure_server_credentials_create();
	grpc_server_credentials *creds = NULL;
	char *ca = NULL;
	char *cert = read_pem(cfg->grpc_tls_cert, "LIVEHUB_GRPC_TLS_CERT");
	char *key = read_pem(cfg->grpc_tls_key, "LIVEHUB_GRPC_TLS_KEY");
	if (cfg->grpc_tls_client_ca[0])
		ca = read_pem(cfg->grpc_tls_client_ca, "LIVEHUB_GRPC_TLS_CLIENT_CA");
	if (cert && key && (ca || !cfg->grpc_tls_client_ca[0])) {
		grpc_ssl_pem_key_cert_pair pair = {key, cert};
		/* gRPC copies the PEM text. */
		creds = grpc_ssl_server_credentials_create_ex(
		        ca, &pair, 1,
		        ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
		           : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
		        NULL);
		if (!creds)
			log_error("msg=\"gRPC refused the TLS certificate, key or client CA\"");
	}
	if (key)
		explicit_bzero(key, strlen(key));
	free(cert);
	free(key);
	free(ca);
	return creds;
}

/* Binds host:port; returns the bound port or 0. */
static int bind_port(struct rpc *r, const struct lh_config *cfg)
{
	const char *host = cfg->grpc_host;
	char addr[96];
	/* An IPv6 literal needs brackets before the port. */
	if (strchr(host, ':') && host[0] != '[')
		snprintf(addr, sizeof addr, "[%s]:%d", host, cfg->grpc_port);
	else
		snprintf(addr, sizeof addr, "%s:%d", host, cfg->grpc_port);
	grpc_server_credentials *creds = server_creds(cfg);
	if (!creds)
		return 0;
	int bound = grpc_server_add_http2_port(r->server, addr, creds);
	grpc_server_credentials_release(creds);
	if (bound == 0)
		log_error("msg=\"cannot listen for gRPC\" addr=%s", addr);
	return bound;
}

/* Tears down what rpc_start built before the server started (nothing bound,
 * nothing armed); thread tells whether the queue thread runs. */
static void abort_start(struct rpc *r, bool thread)
{
	grpc_server_destroy(r->server);
	rpc_extra_free(r->extra);
	grpc_completion_queue_shutdown(r->cq);
	if (thread)
		pthread_join(r->thread, NULL);
	else
		while (grpc_completion_queue_next(r->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
		               .type != GRPC_QUEUE_SHUTDOWN)
			;
	grpc_completion_queue_destroy(r->cq);
	grpc_shutdown();
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	pthread_mutex_destroy(&r->park_mu);
	apikeys_store_free(&r->keys);
	free(r);
}

struct rpc *rpc_start(const struct lh_config *cfg, struct hub *hub, struct broker *broker,
                      struct handoff *q, struct apikeys *keys)
{
	struct rpc *r = calloc(1, sizeof *r);
	if (!r) {
		log_error("msg=\"out of memory starting gRPC\"");
		apikeys_free(keys);
		return NULL;
	}
	apikeys_store_init(&r->keys, keys);
	r->hub = hub;
	r->broker = broker;
	r->q = q;
	r->started_ms = mono_ms();
	tag_init(&r->t_shutdown, TAG_SHUTDOWN, NULL);
	atomic_init(&r->stopping, false);
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	pthread_mutex_init(&r->park_mu, NULL);
	atomic_init(&r->nparked, 0);

	r->alloc = (ProtobufCAllocator){
	        .alloc = arena_alloc, .free = arena_free, .allocator_data = &r->arena};
	absl_deadlock_detection_off();
	grpc_init();
	grpc_arg args[] = {
	        {.type = GRPC_ARG_INTEGER,
	         .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
	         .value.integer = RPC_MAX_RECV_BYTES},
	        /* A second livehub on the same port must fail, not share it. */
	        {.type = GRPC_ARG_INTEGER,
	         .key = (char *)GRPC_ARG_ALLOW_REUSEPORT,
	         .value.integer = 0},
	};
	grpc_channel_args cargs = {sizeof args / sizeof args[0], args};
	r->server = grpc_server_create(&cargs, NULL);
	r->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(r->server, r->cq, NULL);
	/* The queue thread may wait on the queue before the server starts. */
	if (pthread_create(&r->thread, NULL, cq_main, r) != 0) {
		log_error("msg=\"cannot start the gRPC thread\"");
		abort_start(r, false);
		return NULL;
	}
	/* Binding comes last: a server with a listener cannot be destroyed
	 * without a shutdown. */
	r->mslot_unknown = metrics_grpc_method("other");
	if (register_methods(r) || !(r->extra = rpc_extra_attach(r->server)) ||
	    (r->port = bind_port(r, cfg)) == 0) {
		abort_start(r, true);
		return NULL;
	}
	grpc_server_start(r->server);
	rpc_extra_start(r->extra);
	for (int i = 0; i < r->nmethods; i++)
		for (int k = 0; k < armed_for(r->methods[i]); k++)
			call_arm(r, i);
	/* Without a plain request outstanding, gRPC parks calls to unknown
	 * methods until their deadline: answer them UNIMPLEMENTED instead. */
	for (int k = 0; k < ARMED_UNKNOWN; k++)
		call_arm(r, UNKNOWN_METHOD);
	const struct apikeys *t = apikeys_store_get(&r->keys);
	log_info("msg=\"gRPC listening\" host=%s port=%d max_recv_bytes=%d tls=%s api_keys=%zu",
	         cfg->grpc_host, r->port, RPC_MAX_RECV_BYTES,
	         cfg->grpc_tls_client_ca[0] ? "mutual"
	         : cfg->grpc_tls_cert[0]    ? "on"
	                                    : "off",
	         t ? t->n : 0);
	return r;
}

void rpc_set_keys(struct rpc *r, struct apikeys *keys)
{
	apikeys_store_swap(&r->keys, keys);
}

int rpc_port(const struct rpc *r)
{
	return r->port;
}

/* Waits until done(r) holds (under r->mu), or timeout_ms passes (< 0: no
 * limit; a warning every 5 s then). Returns true when done. */
static bool wait_for(struct rpc *r, bool (*done)(const struct rpc *), int timeout_ms,
                     const char *what)
{
	int64_t start = mono_ms(), warned = start;
	bool ok;
	pthread_mutex_lock(&r->mu);
	while (!(ok = done(r))) {
		int64_t now = mono_ms();
		if (timeout_ms >= 0 && now - start >= timeout_ms)
			break;
		if (timeout_ms < 0 && now - warned >= 5000) {
			log_warn("msg=\"gRPC shutdown still waiting\" for=\"%s\" calls=%d", what,
			         r->ncalls);
			warned = now;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	pthread_mutex_unlock(&r->mu);
	return ok;
}

/* Drained: the notify tag came, or no call is left to finish (Watch calls
 * included: their last message must go out before cancel_all_calls). */
static bool drained(const struct rpc *r)
{
	return r->shutdown_done || (r->ncalls == 0 && rpc_extra_idle(r->extra));
}

/* Finished: the notify tag came and every call struct is freed. */
static bool finished(const struct rpc *r)
{
	return r->shutdown_done && r->ncalls == 0;
}

void rpc_stop(struct rpc *r, int drain_ms)
{
	if (!r)
		return;
	atomic_store(&r->stopping, true);
	rpc_extra_stopping(r->extra);
	/* New calls are refused from here; armed requests fail and are freed. */
	grpc_server_shutdown_and_notify(r->server, r->cq, &r->t_shutdown);
	if (!wait_for(r, drained, drain_ms < 0 ? 0 : drain_ms, "drain"))
		log_warn("msg=\"gRPC calls still running after the drain time; cancelling them\"");
	grpc_server_cancel_all_calls(r->server);
	/* Publications still queued hold their calls until the service thread
	 * has passed them to on_done. */
	wait_for(r, finished, -1, "calls");
	grpc_server_destroy(r->server);
	rpc_extra_free(r->extra);
	grpc_completion_queue_shutdown(r->cq);
	pthread_join(r->thread, NULL);
	grpc_completion_queue_destroy(r->cq);
	grpc_shutdown();
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	pthread_mutex_destroy(&r->park_mu);
	apikeys_store_free(&r->keys);
	free(r);
	log_info("msg=\"gRPC stopped\"");
}
