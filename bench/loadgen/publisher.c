/*
 * publisher: open-loop gRPC publishing on gRPC C core. Calls go out at a
 * fixed rate whatever the replies do (up to max_inflight unanswered calls),
 * each a unary call on one HTTP/2 channel with a protobuf-c encoded request.
 * The payload carries the *scheduled* send time (CLOCK_MONOTONIC ns), so a
 * publisher that falls behind shows up as latency instead of hiding it
 * (coordinated omission); how far behind it fell is reported separately.
 */
#include "lg.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "grpcc.h"
#include "livehub/v1/hub.pb-c.h"

struct pcall {
	grpc_call *call;
	struct grpcc_unary u; /* md_init, md_trail, recv, status, details */
	grpc_byte_buffer *send;
	uint64_t t0;
	struct pcall *next_free;
};

struct pub {
	const struct lg_opts *o;
	grpc_channel *ch;
	grpc_completion_queue *cq;
	void *method;
	struct pcall *pool, *free_list;
	int inflight;
	char *pad;
	struct pstats st;
	bool told_error;
	pthread_mutex_t mu; /* guards the pool, inflight and st */
};

/* The Struct {t, tn, pad} every request carries. Points into the caller's
 * storage. */
struct payload {
	Google__Protobuf__Struct s;
	Google__Protobuf__Struct__FieldsEntry e[3], *ep[3];
	Google__Protobuf__Value v[3];
	char t[24];
};

static void payload_init(struct payload *p, const char *tenant, uint64_t t, const char *pad)
{
	static const char *keys[3] = {"t", "tn", "pad"};
	google__protobuf__struct__init(&p->s);
	snprintf(p->t, sizeof(p->t), "%llu", (unsigned long long)t);
	const char *vals[3] = {p->t, tenant, pad};
	size_t n = pad[0] ? 3 : 2;
	for (size_t i = 0; i < n; i++) {
		google__protobuf__struct__fields_entry__init(&p->e[i]);
		google__protobuf__value__init(&p->v[i]);
		p->v[i].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
		p->v[i].string_value = (char *)vals[i];
		p->e[i].key = (char *)keys[i];
		p->e[i].value = &p->v[i];
		p->ep[i] = &p->e[i];
	}
	p->s.n_fields = n;
	p->s.fields = p->ep;
}

/* Encodes request number i (scheduled at t) into buf; returns its length. */
/* Packs m into buf, or wraps it as member `which` of a PublishStreamRequest
 * (sequence i) first when publishing over the stream. 0 when it does not
 * fit. */
static size_t pack(struct pub *p, const ProtobufCMessage *m, int which, uint64_t i, uint8_t *buf,
                   size_t cap)
{
	if (!p->o->stream) {
		if (protobuf_c_message_get_packed_size(m) > cap)
			return 0;
		return protobuf_c_message_pack(m, buf);
	}
	Livehub__V1__PublishStreamRequest r = LIVEHUB__V1__PUBLISH_STREAM_REQUEST__INIT;
	r.sequence = i;
	r.request_case = (Livehub__V1__PublishStreamRequest__RequestCase)which;
	if (which == LIVEHUB__V1__PUBLISH_STREAM_REQUEST__REQUEST_BROADCAST_TENANT)
		r.broadcast_tenant = (Livehub__V1__BroadcastTenantRequest *)m;
	else
		r.job_progress = (Livehub__V1__PublishJobProgressRequest *)m;
	if (livehub__v1__publish_stream_request__get_packed_size(&r) > cap)
		return 0;
	return livehub__v1__publish_stream_request__pack(&r, buf);
}

/* Encodes request number i (stamped t) into buf; returns its length. */
static size_t encode(struct pub *p, uint64_t i, uint64_t t, uint8_t *buf, size_t cap)
{
	const struct lg_opts *o = p->o;
	char tenant[32], job[32];
	struct payload pl;

	if (o->scenario == SC_BROADCAST) {
		snprintf(tenant, sizeof(tenant), "bt%d", (int)(i % (uint64_t)o->tenants));
		payload_init(&pl, tenant, t, p->pad);
		Livehub__V1__BroadcastTenantRequest r = LIVEHUB__V1__BROADCAST_TENANT_REQUEST__INIT;
		r.tenant_id = tenant;
		r.type = "bench";
		r.data = &pl.s;
		return pack(p, &r.base,
		            LIVEHUB__V1__PUBLISH_STREAM_REQUEST__REQUEST_BROADCAST_TENANT, i, buf,
		            cap);
	}
	int g = (int)(i % (uint64_t)o->conns);
	snprintf(tenant, sizeof(tenant), "bt%d", g % o->tenants);
	snprintf(job, sizeof(job), "%d", g);
	payload_init(&pl, tenant, t, p->pad);
	Livehub__V1__JobProgress ev = LIVEHUB__V1__JOB_PROGRESS__INIT;
	ev.job_id = job;
	ev.kind = LIVEHUB__V1__JOB_KIND__JOB_KIND_SLICE;
	ev.progress = (double)(i % 101);
	ev.message = "slicing";
	ev.details = &pl.s;
	Livehub__V1__PublishJobProgressRequest r = LIVEHUB__V1__PUBLISH_JOB_PROGRESS_REQUEST__INIT;
	r.tenant_id = tenant;
	r.event = &ev;
	return pack(p, &r.base, LIVEHUB__V1__PUBLISH_STREAM_REQUEST__REQUEST_JOB_PROGRESS, i, buf,
	            cap);
}

static void call_release(struct pub *p, struct pcall *c)
{
	grpcc_unary_destroy(&c->u);
	if (c->send)
		grpc_byte_buffer_destroy(c->send);
	if (c->call)
		grpc_call_unref(c->call);
	memset(c, 0, sizeof(*c));
	c->next_free = p->free_list;
	p->free_list = c;
	p->inflight--;
}

/* Starts call i on c (taken from the free list, p->mu not held); false
 * when it could not be started (counted as failed). */
static bool issue(struct pub *p, struct pcall *c, uint64_t i, uint64_t due)
{
	uint8_t buf[8192];
	size_t n = encode(p, i, due, buf, sizeof(buf));

	grpcc_unary_init(&c->u);
	grpc_slice s = grpc_slice_from_copied_buffer((const char *)buf, n);
	c->send = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	c->t0 = now_ns();
	c->call = grpc_channel_create_registered_call(p->ch, NULL, GRPC_PROPAGATE_DEFAULTS, p->cq,
	                                              p->method, grpcc_after_ns(30000000000ull), NULL);
	if (!n || grpcc_start_unary(c->call, c->send, &c->u, c) != GRPC_CALL_OK) {
		pthread_mutex_lock(&p->mu);
		p->st.failed++;
		call_release(p, c);
		pthread_mutex_unlock(&p->mu);
		return false;
	}
	return true;
}

static void complete(struct pub *p, grpc_event ev)
{
	struct pcall *c = ev.tag;
	hist_add(&p->st.rpc, now_ns() - c->t0);
	if (ev.success && c->u.status == GRPC_STATUS_OK) {
		p->st.ok++;
	} else {
		p->st.failed++;
		if (!p->told_error) {
			char *d = grpc_slice_to_c_string(c->u.details);
			fprintf(stderr, "lg: publish failed: status %d %s\n", (int)c->u.status, d);
			gpr_free(d);
			p->told_error = true;
		}
	}
	call_release(p, c);
}

/* The completion thread: replies are counted here while the pacing thread
 * sleeps precisely until each call's scheduled time (a deadline on
 * grpc_completion_queue_next oversleeps by milliseconds). */
static void *completer(void *arg)
{
	struct pub *p = arg;

	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
		        p->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			return NULL;
		if (ev.type != GRPC_OP_COMPLETE || !ev.tag)
			continue;
		pthread_mutex_lock(&p->mu);
		complete(p, ev);
		pthread_mutex_unlock(&p->mu);
	}
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void run(struct pub *p)
{
	const struct lg_opts *o = p->o;
	uint64_t start = now_ns();
	uint64_t interval = (uint64_t)(1e9 / o->rate);
	uint64_t total = (uint64_t)(o->rate * o->duration);
	pthread_t th;

	pthread_create(&th, NULL, completer, p);
	uint64_t slack = (uint64_t)o->burst_us * 1000u;
	for (uint64_t i = 0; i < total; i++) {
		uint64_t due = start + i * interval;
		/* With --burst-us, calls due within the next slack go out now,
		 * together; fewer wake-ups, same average rate. */
		if (due > now_ns() + slack)
			sleep_until(due - slack);
		pthread_mutex_lock(&p->mu);
		while (!p->free_list) { /* max_inflight reached: wait for replies */
			pthread_mutex_unlock(&p->mu);
			sleep_until(now_ns() + 100000);
			pthread_mutex_lock(&p->mu);
		}
		uint64_t now = now_ns();
		if (now > due && now - due > 1000000)
			p->st.late++;
		if (now > due && now - due > p->st.max_lag_ns)
			p->st.max_lag_ns = now - due;
		struct pcall *c = p->free_list;
		p->free_list = c->next_free;
		p->inflight++;
		p->st.issued++;
		pthread_mutex_unlock(&p->mu);
		/* The stamp is the scheduled time, or the send time when the call
		 * goes out early, so latency is never understated. */
		issue(p, c, i, now < due ? now : due);
	}
	uint64_t end_wait = now_ns() + 30000000000ull;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		int left = p->inflight;
		pthread_mutex_unlock(&p->mu);
		if (!left || now_ns() > end_wait)
			break;
		sleep_until(now_ns() + 1000000);
	}
	pthread_mutex_lock(&p->mu);
	p->st.elapsed_s = (double)(now_ns() - start) / 1e9;
	p->st.failed += (uint64_t)p->inflight; /* never answered */
	pthread_mutex_unlock(&p->mu);
}

/* Waits for the completion with tag `want` (other tags are stream
 * bookkeeping too); false on timeout or failure. */
static bool stream_wait(struct pub *p, void *want, uint64_t timeout_ns)
{
	uint64_t end = now_ns() + timeout_ns;
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
		        p->cq, grpcc_after_ns(end > now_ns() ? end - now_ns() : 0), NULL);
		if (ev.type == GRPC_QUEUE_TIMEOUT)
			return false;
		if (ev.type == GRPC_OP_COMPLETE && ev.tag == want)
			return ev.success;
	}
}

/* Starts one message of the stream; the previous one must be done. */
static bool stream_send(struct pub *p, grpc_call *call, uint64_t i, uint64_t stamp, void *tag,
                        grpc_byte_buffer **bb)
{
	uint8_t buf[8192];
	size_t n = encode(p, i, stamp, buf, sizeof(buf));
	if (*bb)
		grpc_byte_buffer_destroy(*bb);
	grpc_slice s = grpc_slice_from_copied_buffer((const char *)buf, n);
	*bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	grpc_op op;
	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_SEND_MESSAGE;
	op.data.send_message.send_message = *bb;
	return n && grpc_call_start_batch(call, &op, 1, tag, NULL) == GRPC_CALL_OK;
}

/* Closes the stream and reads PublishStreamResponse into p->st. */
static void stream_finish(struct pub *p, grpc_call *call, grpc_metadata_array *md_init)
{
	static int t_end;
	grpc_metadata_array md_trail;
	grpc_byte_buffer *recv = NULL;
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_op ops[3];

	grpc_metadata_array_init(&md_trail);
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[1].op = GRPC_OP_RECV_MESSAGE;
	ops[1].data.recv_message.recv_message = &recv;
	ops[2].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[2].data.recv_status_on_client.trailing_metadata = &md_trail;
	ops[2].data.recv_status_on_client.status = &status;
	ops[2].data.recv_status_on_client.status_details = &details;
	uint64_t accepted = 0;
	if (grpc_call_start_batch(call, ops, 3, &t_end, NULL) == GRPC_CALL_OK &&
	    stream_wait(p, &t_end, 30000000000ull) && status == GRPC_STATUS_OK && recv) {
		grpc_byte_buffer_reader rd;
		grpc_byte_buffer_reader_init(&rd, recv);
		grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
		Livehub__V1__PublishStreamResponse *r =
		        livehub__v1__publish_stream_response__unpack(NULL, GRPC_SLICE_LENGTH(all),
		                                                     GRPC_SLICE_START_PTR(all));
		if (r) {
			accepted = r->accepted;
			livehub__v1__publish_stream_response__free_unpacked(r, NULL);
		}
		grpc_slice_unref(all);
		grpc_byte_buffer_reader_destroy(&rd);
	} else {
		char *d = grpc_slice_to_c_string(details);
		fprintf(stderr, "lg: PublishStream ended with status %d %s\n", (int)status, d);
		gpr_free(d);
	}
	p->st.ok = accepted < p->st.issued ? accepted : p->st.issued;
	p->st.failed = p->st.issued - p->st.ok;
	if (recv)
		grpc_byte_buffer_destroy(recv);
	grpc_slice_unref(details);
	grpc_metadata_array_destroy(&md_trail);
	grpc_metadata_array_destroy(md_init);
}

/* --stream: one PublishStream call, one message per scheduled publish. A
 * message can only be sent once the previous send completed; waiting for
 * that counts as lag, as a held-back unary call does. */
static void run_stream(struct pub *p)
{
	static int t_start, t_send;
	const struct lg_opts *o = p->o;
	uint64_t interval = (uint64_t)(1e9 / o->rate), total = (uint64_t)(o->rate * o->duration);
	grpc_metadata_array md_init;
	grpc_byte_buffer *bb = NULL;
	grpc_op ops[2];

	grpc_metadata_array_init(&md_init);
	grpc_call *call = grpc_channel_create_call(
	        p->ch, NULL, GRPC_PROPAGATE_DEFAULTS, p->cq,
	        grpc_slice_from_static_string("/livehub.v1.HubService/PublishStream"), NULL,
	        grpcc_after_ns(600000000000ull), NULL);
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	grpcc_auth_set(&ops[0]);
	ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[1].data.recv_initial_metadata.recv_initial_metadata = &md_init;
	grpc_call_start_batch(call, ops, 2, &t_start, NULL);
	uint64_t start = now_ns(), slack = (uint64_t)o->burst_us * 1000u;
	bool pending = false;
	for (uint64_t i = 0; i < total; i++) {
		uint64_t due = start + i * interval;
		if (due > now_ns() + slack)
			sleep_until(due - slack);
		if (pending && !stream_wait(p, &t_send, 30000000000ull))
			break;
		uint64_t now = now_ns();
		if (now > due && now - due > 1000000)
			p->st.late++;
		if (now > due && now - due > p->st.max_lag_ns)
			p->st.max_lag_ns = now - due;
		p->st.issued++;
		pending = stream_send(p, call, i, now < due ? now : due, &t_send, &bb);
		if (!pending)
			break;
	}
	if (pending)
		stream_wait(p, &t_send, 30000000000ull);
	stream_finish(p, call, &md_init);
	p->st.elapsed_s = (double)(now_ns() - start) / 1e9;
	if (bb)
		grpc_byte_buffer_destroy(bb);
	grpc_call_unref(call);
}

/* Brings the channel to READY before the clock starts, so connection setup
 * is not counted as publish latency. */
static void connect_first(struct pub *p)
{
	grpcc_wait_ready(p->ch, p->cq, 5000000000ull);
}

void publisher_main(const struct lg_opts *o, int to_parent)
{
	struct pub *p = calloc(1, sizeof(*p));
	grpc_init();
	grpcc_auth_init();
	p->o = o;
	pthread_mutex_init(&p->mu, NULL);
	grpc_channel_credentials *cred = grpc_insecure_credentials_create();
	p->ch = grpc_channel_create(o->grpc_target, cred, NULL);
	grpc_channel_credentials_release(cred);
	p->cq = grpc_completion_queue_create_for_next(NULL);
	p->method = o->stream ? NULL
	                      : grpc_channel_register_call(
	                                p->ch,
	                                o->scenario == SC_BROADCAST
	                                        ? "/livehub.v1.HubService/BroadcastTenant"
	                                        : "/livehub.v1.HubService/PublishJobProgress",
	                                NULL, NULL);
	p->pool = calloc((size_t)o->max_inflight, sizeof(*p->pool));
	for (int k = 0; k < o->max_inflight; k++) {
		p->pool[k].next_free = p->free_list;
		p->free_list = &p->pool[k];
	}
	int padlen = o->payload - 44; /* {"t":"<15 digits>","tn":"bt0","pad":""} */
	if (padlen < 0)
		padlen = 0;
	p->pad = calloc(1, (size_t)padlen + 1);
	memset(p->pad, 'x', (size_t)padlen);
	connect_first(p);
	if (o->stream)
		run_stream(p);
	else
		run(p);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	p->st.cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	              (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
	write_all(to_parent, &p->st, sizeof(p->st));
	_exit(0);
}
