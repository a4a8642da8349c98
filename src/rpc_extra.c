/*
 * rpc_extra: health and reflection on their own completion queue. See
 * rpc_extra.h.
 *
 * Threads: the extra queue thread (xq_main) handles every completion; only
 * rpc_extra_stopping runs elsewhere (the signal thread), and it touches
 * Watch calls under x->mu, the lock that guards every Watch call's state.
 *
 * A call (struct xcall) is freed when its references are gone: one "logic"
 * reference from arming until the call's last batch of ours completes (or
 * the call turns out to be over), one while RECV_CLOSE_ON_SERVER is
 * outstanding. At most one batch of ours besides that one is outstanding
 * per call, so a message is never sent while another is in flight.
 *
 * Streams:
 *   - Check: one reply batch (metadata, message, status).
 *   - Watch: metadata and the current status, then nothing until the
 *     client goes away or livehub stops (NOT_SERVING, then UNAVAILABLE).
 *   - ServerReflectionInfo: {metadata, receive}, then per request {send
 *     answer, receive next} until the client half-closes (status OK).
 */
#include "rpc_extra.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "livehub.h"
#include "log.h"
#include "reflection.h"

#define ARMED_PER_KIND 4

#define ST_OK               0
#define ST_INVALID_ARGUMENT 3
#define ST_NOT_FOUND        5
#define ST_INTERNAL         13
#define ST_UNAVAILABLE      14

enum xkind { X_CHECK, X_WATCH, X_REFL_V1, X_REFL_V1A, X_NKINDS };

static const struct {
	const char *path;
	bool payload; /* the request message is read with the call (unary request) */
} kinds[X_NKINDS] = {
        {"/grpc.health.v1.Health/Check", true},
        {"/grpc.health.v1.Health/Watch", true},
        {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", false},
        {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", false},
};

struct xcall;
/* A completion-queue tag. c is atomic so that the acquire in xq_main
 * pairs with the release in tag_set (see release_to_grpc). */
struct xtag {
	void (*fn)(struct xcall *c, bool ok);
	_Atomic(struct xcall *) c;
};

struct xcall {
	struct rpc_extra *x;
	enum xkind kind;
	_Atomic int refs;
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array md;
	grpc_byte_buffer *recv; /* the request read with the call, or the last message */
	grpc_byte_buffer *send; /* the message of the outstanding batch */
	grpc_slice details;     /* status text of the final batch */
	bool has_details;
	int cancelled;
	int64_t start_us;
	int code;   /* status sent by the final batch */
	bool final; /* the outstanding batch sends the status */
	struct xtag t_arrived, t_closed, t_op;
	/* Watch only, under x->mu. */
	struct xcall *wprev, *wnext;
	bool linked, busy, closed, done;
};

struct rpc_extra {
	grpc_server *server;
	grpc_completion_queue *cq;
	pthread_t thread;
	struct reflection *refl;
	void *registered[X_NKINDS];
	int slot[X_NKINDS]; /* metrics method slots */
	_Atomic bool stopping;
	pthread_mutex_t mu;
	struct xcall *watchers; /* mu */
};

static void on_arrived(struct xcall *c, bool ok);
static void on_closed(struct xcall *c, bool ok);

static void tag_set(struct xtag *t, void (*fn)(struct xcall *, bool), struct xcall *c)
{
	t->fn = fn;
	atomic_store_explicit(&t->c, c, memory_order_release);
}

/* ------------------------------------------------------------------------
 * Call lifetime and batches
 * ---------------------------------------------------------------------- */

static void xcall_free(struct xcall *c)
{
	if (c->call)
		grpc_call_unref(c->call);
	grpc_metadata_array_destroy(&c->md);
	if (c->recv)
		grpc_byte_buffer_destroy(c->recv);
	if (c->send)
		grpc_byte_buffer_destroy(c->send);
	if (c->has_details)
		grpc_slice_unref(c->details);
	free(c);
}

/* Before a call is handed to gRPC (arming, any batch): a release that the
 * queue thread's acquire in xq_main pairs with, so ThreadSanitizer sees
 * the hand-over that gRPC's own (uninstrumented) locking provides. */
static void release_to_grpc(struct xcall *c)
{
	atomic_fetch_add_explicit(&c->refs, 0, memory_order_release);
}

static void unref(struct xcall *c)
{
	if (atomic_fetch_sub(&c->refs, 1) == 1)
		xcall_free(c);
}

/* Drops the logic reference of a call that is over, counting it. */
static void finish(struct xcall *c, int code)
{
	metrics_grpc_done(c->x->slot[c->kind], code, metrics_now_us() - c->start_us);
	unref(c);
}

/* Arms one request for kind. Returns 0 or LH_ENOMEM/LH_EIO. */
static int arm(struct rpc_extra *x, enum xkind kind)
{
	struct xcall *c = calloc(1, sizeof *c);
	if (!c)
		return LH_ENOMEM;
	c->x = x;
	c->kind = kind;
	atomic_init(&c->refs, 1);
	tag_set(&c->t_arrived, on_arrived, c);
	tag_set(&c->t_closed, on_closed, c);
	grpc_metadata_array_init(&c->md);
	release_to_grpc(c);
	grpc_call_error e = grpc_server_request_registered_call(
	        x->server, x->registered[kind], &c->call, &c->deadline, &c->md,
	        kinds[kind].payload ? &c->recv : NULL, x->cq, x->cq, &c->t_arrived);
	if (e != GRPC_CALL_OK) {
		xcall_free(c);
		return LH_EIO;
	}
	return 0;
}

/* Starts a batch of ops whose completion goes to fn. When gRPC refuses it
 * no completion will come, so the call is finished here. Returns 0 or -1. */
static int start(struct xcall *c, const grpc_op *ops, size_t n, void (*fn)(struct xcall *, bool))
{
	tag_set(&c->t_op, fn, c);
	release_to_grpc(c);
	if (grpc_call_start_batch(c->call, ops, n, &c->t_op, NULL) == GRPC_CALL_OK)
		return 0;
	log_warn("msg=\"grpc batch refused\" method=%s", kinds[c->kind].path);
	return -1;
}

/* Wraps len bytes at p (malloc'd; ownership passes to gRPC) as c->send. */
static void set_send(struct xcall *c, uint8_t *p, size_t len)
{
	grpc_slice s = grpc_slice_new(p, len, free);
	c->send = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
}

/* Serializes a message into c->send. Returns 0 or LH_ENOMEM. */
static int pack_send(struct xcall *c, const ProtobufCMessage *m)
{
	size_t len = protobuf_c_message_get_packed_size(m);
	uint8_t *p = malloc(len ? len : 1);
	if (!p)
		return LH_ENOMEM;
	protobuf_c_message_pack(m, p);
	set_send(c, p, len);
	return 0;
}

/* Reads the whole of buf into a slice the caller unrefs. */
static grpc_slice read_all(grpc_byte_buffer *buf, bool *ok)
{
	grpc_byte_buffer_reader rd;
	*ok = grpc_byte_buffer_reader_init(&rd, buf);
	if (!*ok)
		return grpc_empty_slice();
	grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	return s;
}

static void on_final_done(struct xcall *c, bool ok)
{
	finish(c, c->code);
}

/* Fills ops (room for 3, zeroed here) with [initial metadata] and [c->send];
 * returns how many were set, so the caller can add its last op. */
static size_t send_ops(struct xcall *c, grpc_op *ops, bool with_md)
{
	size_t n = 0;
	memset(ops, 0, 3 * sizeof *ops);
	if (with_md)
		ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (c->send) {
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n++].data.send_message.send_message = c->send;
	}
	return n;
}

/* Sends [metadata], [c->send], status code/msg as the call's last batch. */
static void send_final(struct xcall *c, bool with_md, int code, const char *msg)
{
	grpc_op ops[3];
	size_t n = send_ops(c, ops, with_md);
	if (msg) {
		c->details = grpc_slice_from_copied_string(msg);
		c->has_details = true;
	}
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = (grpc_status_code)code;
	ops[n++].data.send_status_from_server.status_details = msg ? &c->details : NULL;
	c->code = code;
	c->final = true;
	if (start(c, ops, n, on_final_done))
		finish(c, code);
}

/* ------------------------------------------------------------------------
 * Health
 * ---------------------------------------------------------------------- */

/* The status of service ("" is the whole server): SERVING or NOT_SERVING
 * for the services livehub has, SERVICE_UNKNOWN otherwise. */
static Grpc__Health__V1__HealthCheckResponse__ServingStatus health_of(struct rpc_extra *x,
                                                                      const char *service)
{
	bool known = service[0] == '\0';
	for (size_t i = 0; !known && i < reflection_nservices(x->refl); i++)
		known = strcmp(service, reflection_service(x->refl, i)) == 0;
	if (!known)
		return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
	bool up = atomic_load(&lh_metrics.ready) && !atomic_load(&x->stopping) &&
	          !atomic_load(&lh_metrics.redis_down);
	return up ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
	          : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

/* Decodes the HealthCheckRequest read with the call; NULL when malformed. */
static Grpc__Health__V1__HealthCheckRequest *health_request(struct xcall *c)
{
	bool ok = c->recv != NULL;
	grpc_slice s = ok ? read_all(c->recv, &ok) : grpc_empty_slice();
	Grpc__Health__V1__HealthCheckRequest *req = NULL;
	if (ok)
		req = grpc__health__v1__health_check_request__unpack(NULL, GRPC_SLICE_LENGTH(s),
		                                                     GRPC_SLICE_START_PTR(s));
	grpc_slice_unref(s);
	return req;
}

static int pack_status(struct xcall *c, Grpc__Health__V1__HealthCheckResponse__ServingStatus st)
{
	Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
	resp.status = st;
	return pack_send(c, &resp.base);
}

static void do_check(struct xcall *c)
{
	Grpc__Health__V1__HealthCheckRequest *req = health_request(c);
	if (!req) {
		send_final(c, true, ST_INVALID_ARGUMENT, "request: malformed HealthCheckRequest");
		return;
	}
	Grpc__Health__V1__HealthCheckResponse__ServingStatus st = health_of(c->x, req->service);
	grpc__health__v1__health_check_request__free_unpacked(req, NULL);
	if (st == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN) {
		send_final(c, true, ST_NOT_FOUND, "unknown service");
		return;
	}
	if (pack_status(c, st)) {
		send_final(c, true, ST_INTERNAL, "out of memory");
		return;
	}
	send_final(c, true, ST_OK, NULL);
}

/* Under x->mu. */
static void watch_unlink(struct xcall *c)
{
	if (!c->linked)
		return;
	if (c->wprev)
		c->wprev->wnext = c->wnext;
	else
		c->x->watchers = c->wnext;
	if (c->wnext)
		c->wnext->wprev = c->wprev;
	c->linked = false;
}

static int watch_send_last(struct xcall *c);

/* A Watch batch completed: the first status, or the last one. */
static void on_watch_sent(struct xcall *c, bool ok)
{
	struct rpc_extra *x = c->x;
	bool over = false;
	pthread_mutex_lock(&x->mu);
	c->busy = false;
	if (c->send) {
		grpc_byte_buffer_destroy(c->send);
		c->send = NULL;
	}
	if (c->final || !ok || c->closed) {
		over = !c->done;
		c->done = true;
		watch_unlink(c);
	} else if (atomic_load(&x->stopping) && watch_send_last(c)) {
		over = true;
	}
	pthread_mutex_unlock(&x->mu);
	if (over)
		finish(c, c->final ? c->code : 1 /* CANCELLED */);
}

/* Under x->mu, with no batch outstanding: NOT_SERVING, then UNAVAILABLE.
 * Returns 0, or -1 when gRPC refused the batch: the call is then over and
 * the caller finishes it once the lock is released. */
static int watch_send_last(struct xcall *c)
{
	grpc_op ops[2];
	memset(ops, 0, sizeof ops);
	if (pack_status(c, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING) ==
	    0) {
		ops[0].op = GRPC_OP_SEND_MESSAGE;
		ops[0].data.send_message.send_message = c->send;
	}
	c->details = grpc_slice_from_static_string("livehub is shutting down");
	c->has_details = true;
	size_t n = c->send ? 1 : 0;
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = GRPC_STATUS_UNAVAILABLE;
	ops[n++].data.send_status_from_server.status_details = &c->details;
	c->final = true;
	c->code = ST_UNAVAILABLE;
	c->busy = true;
	if (start(c, ops, n, on_watch_sent) == 0)
		return 0;
	c->busy = false;
	c->done = true;
	watch_unlink(c);
	return -1;
}

static void do_watch(struct xcall *c)
{
	struct rpc_extra *x = c->x;
	Grpc__Health__V1__HealthCheckRequest *req = health_request(c);
	if (!req) {
		send_final(c, true, ST_INVALID_ARGUMENT, "request: malformed HealthCheckRequest");
		return;
	}
	Grpc__Health__V1__HealthCheckResponse__ServingStatus st = health_of(x, req->service);
	grpc__health__v1__health_check_request__free_unpacked(req, NULL);
	if (pack_status(c, st)) {
		send_final(c, true, ST_INTERNAL, "out of memory");
		return;
	}
	grpc_op ops[2];
	memset(ops, 0, sizeof ops);
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = c->send;
	pthread_mutex_lock(&x->mu);
	c->wnext = x->watchers;
	c->wprev = NULL;
	if (x->watchers)
		x->watchers->wprev = c;
	x->watchers = c;
	c->linked = true;
	c->busy = true;
	bool failed = start(c, ops, 2, on_watch_sent) != 0;
	if (failed) {
		c->busy = false;
		c->done = true;
		watch_unlink(c);
	}
	pthread_mutex_unlock(&x->mu);
	if (failed)
		finish(c, ST_INTERNAL);
}

/* A Watch call's client went away (or the call was cancelled). */
static void watch_closed(struct xcall *c)
{
	struct rpc_extra *x = c->x;
	bool over = false;
	pthread_mutex_lock(&x->mu);
	c->closed = true;
	if (!c->busy && !c->done) {
		c->done = true;
		over = true;
		watch_unlink(c);
	}
	pthread_mutex_unlock(&x->mu);
	if (over)
		finish(c, 1 /* CANCELLED */);
}

/* ------------------------------------------------------------------------
 * Reflection
 * ---------------------------------------------------------------------- */

static void on_refl_step(struct xcall *c, bool ok);

/* Starts {[metadata], [c->send], receive the next request}. */
static void refl_next(struct xcall *c, bool with_md)
{
	grpc_op ops[3];
	size_t n = send_ops(c, ops, with_md);
	ops[n].op = GRPC_OP_RECV_MESSAGE;
	ops[n++].data.recv_message.recv_message = &c->recv;
	if (start(c, ops, n, on_refl_step))
		finish(c, ST_INTERNAL);
}

/* A request arrived (or the client half-closed: c->recv is NULL). */
static void on_refl_step(struct xcall *c, bool ok)
{
	if (c->send) {
		grpc_byte_buffer_destroy(c->send);
		c->send = NULL;
	}
	if (!ok) { /* cancelled, or the connection went away */
		finish(c, 1 /* CANCELLED */);
		return;
	}
	if (!c->recv) {
		send_final(c, false, ST_OK, NULL);
		return;
	}
	bool read_ok;
	grpc_slice s = read_all(c->recv, &read_ok);
	grpc_byte_buffer_destroy(c->recv);
	c->recv = NULL;
	uint8_t *out = NULL;
	size_t len = 0;
	int rc = read_ok ? reflection_answer(c->x->refl, GRPC_SLICE_START_PTR(s),
	                                     GRPC_SLICE_LENGTH(s), &out, &len)
	                 : LH_EINVAL;
	grpc_slice_unref(s);
	if (rc == LH_EINVAL) {
		send_final(c, false, ST_INVALID_ARGUMENT,
		           "request: malformed ServerReflectionRequest");
		return;
	}
	if (rc) {
		send_final(c, false, ST_INTERNAL, "out of memory");
		return;
	}
	set_send(c, out, len);
	refl_next(c, false);
}

/* ------------------------------------------------------------------------
 * The queue thread
 * ---------------------------------------------------------------------- */

static void on_arrived(struct xcall *c, bool ok)
{
	struct rpc_extra *x = c->x;
	if (!ok) { /* the request was cancelled by shutdown */
		unref(c);
		return;
	}
	c->start_us = metrics_now_us();
	if (!atomic_load(&x->stopping) && arm(x, c->kind))
		log_warn("msg=\"cannot re-arm a gRPC request\" method=%s", kinds[c->kind].path);
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	op.data.recv_close_on_server.cancelled = &c->cancelled;
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_acq_rel);
	if (grpc_call_start_batch(c->call, &op, 1, &c->t_closed, NULL) != GRPC_CALL_OK)
		atomic_fetch_sub(&c->refs, 1);
	switch (c->kind) {
	case X_CHECK: do_check(c); break;
	case X_WATCH: do_watch(c); break;
	default: refl_next(c, true); break;
	}
}

static void on_closed(struct xcall *c, bool ok)
{
	if (c->kind == X_WATCH)
		watch_closed(c);
	unref(c);
}

static void *xq_main(void *arg)
{
	struct rpc_extra *x = arg;
	for (;;) {
		grpc_event ev =
		        grpc_completion_queue_next(x->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		struct xtag *t = ev.tag;
		struct xcall *c = atomic_load_explicit(&t->c, memory_order_acquire);
		atomic_load_explicit(&c->refs, memory_order_acquire);
		t->fn(c, ev.success != 0);
	}
	return NULL;
}

/* ------------------------------------------------------------------------
 * Hooks
 * ---------------------------------------------------------------------- */

struct rpc_extra *rpc_extra_attach(grpc_server *server)
{
	struct rpc_extra *x = calloc(1, sizeof *x);
	if (!x)
		return NULL;
	x->server = server;
	atomic_init(&x->stopping, false);
	pthread_mutex_init(&x->mu, NULL);
	x->refl = reflection_new(lh_descriptor_set, lh_descriptor_set_len);
	if (!x->refl) {
		log_error("msg=\"cannot index the embedded descriptor set\"");
		goto fail;
	}
	for (int k = 0; k < X_NKINDS; k++) {
		x->registered[k] = grpc_server_register_method(
		        server, kinds[k].path, NULL,
		        kinds[k].payload ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER
		                         : GRPC_SRM_PAYLOAD_NONE,
		        0);
		if (!x->registered[k]) {
			log_error("msg=\"grpc cannot register method\" method=%s", kinds[k].path);
			goto fail;
		}
		x->slot[k] = metrics_grpc_method(kinds[k].path);
	}
	/* Non-polling: this queue only receives the (rare) health and
	 * reflection events. A polling one would also poll the server's
	 * connections from this thread, competing with rpc.c's thread for the
	 * same core on every publish (measured: -25% unary calls per CPU-s). */
	grpc_completion_queue_attributes attr = {GRPC_CQ_CURRENT_VERSION, GRPC_CQ_NEXT,
	                                         GRPC_CQ_NON_POLLING, NULL};
	x->cq = grpc_completion_queue_create(grpc_completion_queue_factory_lookup(&attr), &attr,
	                                     NULL);
	grpc_server_register_completion_queue(server, x->cq, NULL);
	if (pthread_create(&x->thread, NULL, xq_main, x) != 0) {
		log_error("msg=\"cannot start the gRPC health/reflection thread\"");
		grpc_completion_queue_shutdown(x->cq);
		while (grpc_completion_queue_next(x->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
		               .type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(x->cq);
		x->cq = NULL;
		goto fail;
	}
	return x;
fail:
	reflection_free(x->refl);
	pthread_mutex_destroy(&x->mu);
	free(x);
	return NULL;
}

void rpc_extra_start(struct rpc_extra *x)
{
	for (int k = 0; k < X_NKINDS; k++)
		for (int i = 0; i < ARMED_PER_KIND; i++)
			if (arm(x, (enum xkind)k))
				log_warn("msg=\"cannot arm a gRPC request\" method=%s",
				         kinds[k].path);
}

void rpc_extra_stopping(struct rpc_extra *x)
{
	struct xcall *over = NULL;
	atomic_store(&x->stopping, true);
	pthread_mutex_lock(&x->mu);
	struct xcall *c = x->watchers;
	while (c) {
		struct xcall *next = c->wnext;
		/* A busy call sends its last status when its batch completes. */
		if (!c->busy && !c->done && watch_send_last(c)) {
			c->wnext = over; /* unlinked: the field is free again */
			over = c;
		}
		c = next;
	}
	pthread_mutex_unlock(&x->mu);
	while (over) {
		struct xcall *next = over->wnext;
		finish(over, ST_UNAVAILABLE);
		over = next;
	}
}

bool rpc_extra_idle(struct rpc_extra *x)
{
	if (!x)
		return true;
	pthread_mutex_lock(&x->mu);
	bool idle = x->watchers == NULL;
	pthread_mutex_unlock(&x->mu);
	return idle;
}

void rpc_extra_free(struct rpc_extra *x)
{
	if (!x)
		return;
	grpc_completion_queue_shutdown(x->cq);
	pthread_join(x->thread, NULL);
	grpc_completion_queue_destroy(x->cq);
	reflection_free(x->refl);
	pthread_mutex_destroy(&x->mu);
	free(x);
}

/* ------------------------------------------------------------------------
 * GetStats
 * ---------------------------------------------------------------------- */

void rpc_extra_stats(Livehub__V1__GetStatsResponse *out, struct rpc_extra_stats *st,
                     const struct hub_stats_snapshot *s, uint64_t handoff_depth)
{
	struct metrics *m = &lh_metrics;
	uint64_t sum = 0;
	for (int i = 0; i < MC_NCLOSE; i++)
		sum += metrics_get(&m->conn_closed[i]);
	out->connections_closed = sum;
	out->slow_consumers = s->slow_consumers;
	sum = 0;
	for (int i = 0; i < MR_NREFUSAL; i++)
		sum += metrics_get(&m->refused[i]);
	out->handshake_refusals = sum;
	sum = 0;
	for (int i = 0; i < MA_NAUTH; i++)
		sum += metrics_get(&m->auth_failed[i]);
	out->auth_failures = sum;
	out->token_refreshes = metrics_get(&m->token_refreshes);
	out->token_expirations = metrics_get(&m->token_expirations);
	out->awaiting_auth = metrics_get(&m->awaiting_auth);
	out->channel_access_denied = metrics_get(&m->channel_denied);
	sum = s->messages_delivered;
	for (int i = 0; i < MO_NOUT; i++)
		sum += metrics_get(&m->msg_out[i]);
	out->messages_out = sum;
	out->bytes_out = metrics_get(&m->bytes_out);
	out->messages_dropped = s->dropped;
	out->messages_conflated = s->conflated;
	out->rate_limited = metrics_get(&m->rate_limited);
	out->origin_refusals = metrics_get(&m->refused[MR_ORIGIN]);
	out->connection_limit_refusals =
	        metrics_get(&m->refused[MR_LIMIT_GLOBAL]) + metrics_get(&m->refused[MR_LIMIT_IP]) +
	        metrics_get(&m->refused[MR_LIMIT_USER]) + metrics_get(&m->refused[MR_LIMIT_TENANT]);
	out->rate_limit_disconnects = metrics_get(&m->conn_closed[MC_RATE_LIMITED]);
	out->messages_refused_shape = metrics_get(&m->shape_refused);
	out->protocol_error_disconnects = metrics_get(&m->conn_closed[MC_PROTOCOL_ERROR]);
	out->handoff_depth = handoff_depth;
	sum = 0;
	int n = atomic_load(&m->nmethods);
	for (int i = 0; i < n; i++)
		for (int c = 0; c < METRICS_NCODES; c++)
			sum += metrics_get(&m->grpc_calls[i][c]);
	out->grpc_calls = sum;
	uint64_t unauth = 0, denied = 0;
	for (int i = 0; i < n; i++) {
		unauth += metrics_get(&m->grpc_calls[i][16]); /* UNAUTHENTICATED */
		denied += metrics_get(&m->grpc_calls[i][7]);  /* PERMISSION_DENIED */
	}
	out->grpc_unauthenticated = unauth;
	out->grpc_permission_denied = denied;
	size_t nt = metrics_top_tenants(st->top, METRICS_TOP_TENANTS);
	for (size_t i = 0; i < nt; i++) {
		livehub__v1__tenant_connections__init(&st->tenants[i]);
		st->tenants[i].tenant_id = st->top[i].tenant;
		st->tenants[i].connections = st->top[i].connections;
		st->tenant_ptr[i] = &st->tenants[i];
	}
	out->n_top_tenants = nt;
	out->top_tenants = nt ? st->tenant_ptr : NULL;
}
