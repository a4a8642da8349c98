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
 *   - one for the RECV_CLOSE_ON_SERVER batch while it is outstanding.
 * Whoever drops the last reference frees the call (usually the queue thread;
 * the service thread when starting its reply batch fails).
 */
#include "rpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "livehub.h"
#include "livehub/v1/hub.pb-c.h"
#include "log.h"
#include "pbjson.h"
#include "publication.h"
#include "rpc_methods.h"

/* The biggest request accepted; larger ones get RESOURCE_EXHAUSTED from
 * gRPC itself. */
#define RPC_MAX_RECV_BYTES (1024 * 1024)
/* Requests kept armed per method, so a burst of calls does not wait for the
 * queue thread to re-arm one at a time. */
#define ARMED_PER_METHOD 16
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

enum tag_kind { TAG_ARRIVED, TAG_CLOSED, TAG_REPLIED, TAG_SHUTDOWN };

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
	int cancelled;             /* set by RECV_CLOSE_ON_SERVER */
	struct tag t_arrived, t_closed, t_replied;
	/* The reply batch's buffers live here until it completes. */
	grpc_byte_buffer *reply;
	grpc_slice status_details;
	bool has_details;
	struct publication pub; /* owns pub.data */
};

struct rpc {
	struct hub *hub;
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

	pthread_mutex_t mu;
	pthread_cond_t cv;  /* signalled when a field below changes */
	bool shutdown_done; /* mu: the shutdown notify tag arrived */
	int ncalls;         /* mu: struct calls alive, armed ones included */
};

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
	tag_init(&c->t_closed, TAG_CLOSED, c);
	tag_init(&c->t_replied, TAG_REPLIED, c);
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
		e = grpc_server_request_registered_call(r->server, r->registered[idx], &c->call,
		                                        &c->deadline, &c->req_md, &c->payload,
		                                        r->cq, r->cq, &c->t_arrived);
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

/* Starts the reply batch: initial metadata, c->reply when set, and the
 * status (with c->status_details when set). Any thread. */
static void reply_start(struct call *c, enum rpc_code code)
{
	grpc_op ops[3];
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

	c->state = CALL_REPLYING;
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

/* on_done of a publication: runs on the WebSocket service thread once the
 * hub has queued (or refused) it. */
static void on_published(struct publication *p)
{
	struct call *c = p->owner;
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

/* Decodes the request read with the call. Returns the message (free with
 * protobuf_c_message_free_unpacked) or NULL with err filled. */
static ProtobufCMessage *decode(struct call *c, struct rpc_error *err)
{
	grpc_byte_buffer_reader rd;
	err->code = RPC_INVALID_ARGUMENT;
	if (!c->payload) {
		snprintf(err->msg, sizeof err->msg, "request: no message sent");
		return NULL;
	}
	if (!grpc_byte_buffer_reader_init(&rd, c->payload)) {
		snprintf(err->msg, sizeof err->msg, "request: cannot be read (compression?)");
		return NULL;
	}
	grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	/* protobuf-c recurses once per nesting level with no limit of its own:
	 * a 40 KB request of nested Structs would overflow the stack. Check the
	 * nesting on the wire bytes first, without recursion. */
	ProtobufCMessage *req = NULL;
	snprintf(err->msg, sizeof err->msg,
	         "request: malformed protobuf or nested deeper than %d levels",
	         PBJSON_WIRE_MAX_DEPTH);
	if (pbjson_check_depth(c->m->input, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s)) == 0)
		req = protobuf_c_message_unpack(c->m->input, NULL, GRPC_SLICE_LENGTH(s),
		                                GRPC_SLICE_START_PTR(s));
	grpc_slice_unref(s);
	grpc_byte_buffer_destroy(c->payload);
	c->payload = NULL;
	return req;
}

static void handle_stats(struct call *c)
{
	struct hub_stats_snapshot snap;
	Livehub__V1__GetStatsResponse resp;
	hub_stats_read(c->r->hub, &snap);
	rpc_stats_reply_init(&resp, &snap, (uint64_t)(mono_ms() - c->r->started_ms) / 1000);
	reply_message(c, &resp.base);
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
	c->pub.on_done = on_published;
	c->pub.owner = c;
	c->state = CALL_PUBLISHING;
	/* While rpc_stop drains, calls that got in are still published: the
	 * service thread keeps taking the queue until gRPC has stopped. */
	if (handoff_push(r->q, &c->pub) == 0)
		return;
	if (atomic_load(&r->stopping)) {
		reply_error(c, RPC_UNAVAILABLE, "livehub is shutting down");
		return;
	}
	snprintf(msg, sizeof msg, "publish queue full (%zu waiting); retry with backoff",
	         handoff_depth(r->q));
	reply_error(c, RPC_RESOURCE_EXHAUSTED, msg);
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
	if (!atomic_load(&r->stopping) && call_arm(r, c->method))
		log_warn("msg=\"cannot re-arm a gRPC request; fewer calls will be taken at once\"");

	/* Watch for cancellation; its completion also tells that the call is over. */
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	op.data.recv_close_on_server.cancelled = &c->cancelled;
	atomic_fetch_add(&c->refs, 1);
	if (grpc_call_start_batch(c->call, &op, 1, &c->t_closed, NULL) != GRPC_CALL_OK)
		atomic_fetch_sub(&c->refs, 1);

	if (!c->m) {
		handle_unknown(c);
		return;
	}
	struct rpc_error err;
	ProtobufCMessage *req = decode(c, &err);
	if (!req) {
		reply_error(c, err.code, err.msg);
		return;
	}
	if (c->m->kind == RPC_KIND_STATS)
		handle_stats(c);
	else
		handle_publish(c, req);
	protobuf_c_message_free_unpacked(req, NULL);
}

static void on_shutdown_done(struct rpc *r)
{
	pthread_mutex_lock(&r->mu);
	r->shutdown_done = true;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

/* The completion-queue thread: dispatches completions until the queue is
 * shut down and drained. */
static void *cq_main(void *arg)
{
	struct rpc *r = arg;
	for (;;) {
		grpc_event ev =
		        grpc_completion_queue_next(r->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
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
		case TAG_CLOSED:
			if (c->cancelled)
				log_debug("msg=\"grpc call cancelled\"");
			call_unref(c);
			break;
		case TAG_REPLIED: call_unref(c); break;
		case TAG_SHUTDOWN: on_shutdown_done(r); break;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------------------
 * Start and stop.
 * ---------------------------------------------------------------------- */

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
		void *h = grpc_server_register_method(r->server, path, NULL,
		                                      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
		if (!h) {
			log_error("msg=\"grpc cannot register method\" method=%s", path);
			return LH_EIO;
		}
		r->methods[r->nmethods] = m;
		r->registered[r->nmethods++] = h;
	}
	return 0;
}

/* Binds host:port; returns the bound port or 0. */
static int bind_port(struct rpc *r, const char *host, int port)
{
	char addr[96];
	/* An IPv6 literal needs brackets before the port. */
	if (strchr(host, ':') && host[0] != '[')
		snprintf(addr, sizeof addr, "[%s]:%d", host, port);
	else
		snprintf(addr, sizeof addr, "%s:%d", host, port);
	grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
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
	free(r);
}

struct rpc *rpc_start(const struct lh_config *cfg, struct hub *hub, struct handoff *q)
{
	struct rpc *r = calloc(1, sizeof *r);
	if (!r) {
		log_error("msg=\"out of memory starting gRPC\"");
		return NULL;
	}
	r->hub = hub;
	r->q = q;
	r->started_ms = mono_ms();
	tag_init(&r->t_shutdown, TAG_SHUTDOWN, NULL);
	atomic_init(&r->stopping, false);
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);

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
	if (register_methods(r) || (r->port = bind_port(r, cfg->grpc_host, cfg->grpc_port)) == 0) {
		abort_start(r, true);
		return NULL;
	}
	grpc_server_start(r->server);
	for (int i = 0; i < r->nmethods; i++)
		for (int k = 0; k < ARMED_PER_METHOD; k++)
			call_arm(r, i);
	/* Without a plain request outstanding, gRPC parks calls to unknown
	 * methods until their deadline: answer them UNIMPLEMENTED instead. */
	for (int k = 0; k < ARMED_UNKNOWN; k++)
		call_arm(r, UNKNOWN_METHOD);
	log_info("msg=\"gRPC listening\" host=%s port=%d max_recv_bytes=%d", cfg->grpc_host,
	         r->port, RPC_MAX_RECV_BYTES);
	return r;
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

/* Drained: the notify tag came, or no call is left to finish. */
static bool drained(const struct rpc *r)
{
	return r->shutdown_done || r->ncalls == 0;
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
	/* New calls are refused from here; armed requests fail and are freed. */
	grpc_server_shutdown_and_notify(r->server, r->cq, &r->t_shutdown);
	if (!wait_for(r, drained, drain_ms < 0 ? 0 : drain_ms, "drain"))
		log_warn("msg=\"gRPC calls still running after the drain time; cancelling them\"");
	grpc_server_cancel_all_calls(r->server);
	/* Publications still queued hold their calls until the service thread
	 * has passed them to on_done. */
	wait_for(r, finished, -1, "calls");
	grpc_server_destroy(r->server);
	grpc_completion_queue_shutdown(r->cq);
	pthread_join(r->thread, NULL);
	grpc_completion_queue_destroy(r->cq);
	grpc_shutdown();
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	free(r);
	log_info("msg=\"gRPC stopped\"");
}
