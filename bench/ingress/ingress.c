/*
 * ingress: how many publishes per second, and per server CPU-second, the
 * hub's gRPC front takes. A closed-loop client on gRPC C core: every call
 * that completes is replaced at once, so the hub always has
 * channels x inflight calls in flight.
 *
 *   unary:  PublishJobProgress calls (pre-encoded requests, a few job ids).
 *   stream: one PublishStream per channel and thread; messages are written
 *           back to back (gRPC allows one outstanding write per call) and
 *           the stream is half-closed at the end; the hub's response counts
 *           what it accepted.
 *
 * Prints calls (messages)/s, latency p50/p99 (unary), and with -p PID the
 * hub's CPU-seconds over the measured interval from /proc/PID/stat, hence
 * publishes per server CPU-second. Pin hub and client to different cores
 * with taskset.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "grpcc.h"
#include "livehub/v1/hub.pb-c.h"

#define NREQ   64   /* distinct pre-encoded requests (job ids) */
#define HIST_N 4096 /* latency buckets of 10 us: up to ~41 ms, last one open */

struct opts {
	const char *target;
	bool stream;
	int threads, channels, inflight;
	double duration, warmup;
	int pid;
	int payload;
	int invalid_every; /* stream: every Nth message invalid (0: none) */
};

static struct opts o = {
        .target = "127.0.0.1:50051",
        .threads = 1,
        .channels = 2,
        .inflight = 64,
        .duration = 5,
        .warmup = 1,
        .payload = 32,
};

static gpr_timespec after_s(double s)
{
	return grpcc_after_ns((uint64_t)(s * 1e9));
}

/* ---------------------------------------------------------------------- */

static grpc_slice reqs[NREQ];        /* encoded PublishJobProgressRequest */
static grpc_slice stream_reqs[NREQ]; /* encoded PublishStreamRequest */
static grpc_slice stream_bad;        /* an invalid PublishStreamRequest */

/* Encodes request k: tenant "bench", job "j<k>", a Struct detail padded to
 * about o.payload bytes of JSON. */
static void encode_all(void)
{
	char *pad = calloc(1, (size_t)o.payload + 1);
	memset(pad, 'x', (size_t)o.payload);
	for (int k = 0; k < NREQ; k++) {
		char job[16];
		snprintf(job, sizeof job, "j%d", k);
		Google__Protobuf__Value v = GOOGLE__PROTOBUF__VALUE__INIT;
		v.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
		v.string_value = pad;
		Google__Protobuf__Struct__FieldsEntry e =
		        GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
		e.key = "pad";
		e.value = &v;
		Google__Protobuf__Struct__FieldsEntry *ep = &e;
		Google__Protobuf__Struct s = GOOGLE__PROTOBUF__STRUCT__INIT;
		s.n_fields = 1;
		s.fields = &ep;
		Livehub__V1__JobProgress ev = LIVEHUB__V1__JOB_PROGRESS__INIT;
		ev.job_id = job;
		ev.kind = LIVEHUB__V1__JOB_KIND__JOB_KIND_SLICE;
		ev.progress = k % 101;
		ev.message = "slicing";
		ev.details = &s;
		Livehub__V1__PublishJobProgressRequest r =
		        LIVEHUB__V1__PUBLISH_JOB_PROGRESS_REQUEST__INIT;
		r.tenant_id = "bench";
		r.event = &ev;
		size_t n = livehub__v1__publish_job_progress_request__get_packed_size(&r);
		reqs[k] = grpc_slice_malloc(n);
		livehub__v1__publish_job_progress_request__pack(&r, GRPC_SLICE_START_PTR(reqs[k]));

		Livehub__V1__PublishStreamRequest sr = LIVEHUB__V1__PUBLISH_STREAM_REQUEST__INIT;
		sr.sequence = (uint64_t)k;
		sr.request_case = LIVEHUB__V1__PUBLISH_STREAM_REQUEST__REQUEST_JOB_PROGRESS;
		sr.job_progress = &r;
		n = livehub__v1__publish_stream_request__get_packed_size(&sr);
		stream_reqs[k] = grpc_slice_malloc(n);
		livehub__v1__publish_stream_request__pack(&sr,
		                                          GRPC_SLICE_START_PTR(stream_reqs[k]));
		if (k == 0) {
			ev.progress = 200; /* out of range: rejected */
			n = livehub__v1__publish_stream_request__get_packed_size(&sr);
			stream_bad = grpc_slice_malloc(n);
			livehub__v1__publish_stream_request__pack(&sr,
			                                          GRPC_SLICE_START_PTR(stream_bad));
		}
	}
	free(pad);
}

/* ---------------------------------------------------------------------- */

struct worker;

struct ucall {
	struct worker *w;
	grpc_call *call;
	struct grpcc_unary u; /* md_init, md_trail, recv, status, details */
	grpc_byte_buffer *send;
	uint64_t t0;
	/* stream mode */
	int op; /* 0 writing, 1 finishing */
	uint64_t sent;
	bool closing;
};

struct worker {
	int id;
	pthread_t th;
	grpc_completion_queue *cq;
	grpc_channel **ch;
	int nch;
	void **method; /* per channel */
	uint64_t seq;
	/* counted during the measured interval only */
	uint64_t ok, failed, accepted, rejected;
	uint64_t hist[HIST_N];
	char first_err[200];
};

static _Atomic int measuring; /* 0 warm-up, 1 measuring, 2 stopping */
static _Atomic uint64_t sent_total;
static _Atomic uint64_t done_total; /* unary calls answered, warm-up included */

static void uc_reset(struct ucall *c)
{
	grpcc_unary_destroy(&c->u);
	if (c->send)
		grpc_byte_buffer_destroy(c->send);
	if (c->call)
		grpc_call_unref(c->call);
	c->send = NULL;
	c->call = NULL;
}

static void unary_issue(struct worker *w, struct ucall *c, int k)
{
	grpc_channel *ch = w->ch[k];
	grpc_slice s = reqs[w->seq++ % NREQ];
	c->send = grpc_raw_byte_buffer_create(&s, 1);
	grpcc_unary_init(&c->u);
	c->t0 = grpcc_now_ns();
	c->call = grpc_channel_create_registered_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, w->cq,
	                                              w->method[k], after_s(30), NULL);
	if (grpcc_start_unary(c->call, c->send, &c->u, c) != GRPC_CALL_OK) {
		fprintf(stderr, "ingress: start_batch failed\n");
		exit(1);
	}
}

static void note_error(struct worker *w, struct ucall *c)
{
	if (w->first_err[0])
		return;
	char *d = grpc_slice_to_c_string(c->u.details);
	snprintf(w->first_err, sizeof w->first_err, "status %d: %s", (int)c->u.status, d);
	gpr_free(d);
}

static void *unary_main(void *arg)
{
	struct worker *w = arg;
	int n = w->nch * o.inflight;
	struct ucall *calls = calloc((size_t)n, sizeof *calls);
	for (int i = 0; i < n; i++) {
		calls[i].w = w;
		unary_issue(w, &calls[i], i % w->nch);
	}
	int live = n;
	while (live > 0) {
		grpc_event ev =
		        grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		struct ucall *c = ev.tag;
		int m = atomic_load_explicit(&measuring, memory_order_relaxed);
		atomic_fetch_add_explicit(&done_total, 1, memory_order_relaxed);
		if (m == 1) {
			uint64_t us10 = (grpcc_now_ns() - c->t0) / 10000;
			w->hist[us10 < HIST_N ? us10 : HIST_N - 1]++;
			if (ev.success && c->u.status == GRPC_STATUS_OK) {
				w->ok++;
			} else {
				w->failed++;
				note_error(w, c);
			}
		}
		uc_reset(c);
		if (m == 2) {
			live--;
			continue;
		}
		unary_issue(w, c, (int)(c - calls) % w->nch);
	}
	free(calls);
	return NULL;
}

/* ---------------------------------------------------------------------- */

static void stream_write(struct worker *w, struct ucall *c)
{
	uint64_t i = c->sent++;
	grpc_slice s = o.invalid_every && i % (uint64_t)o.invalid_every == 1
	                       ? stream_bad
	                       : stream_reqs[i % NREQ];
	c->send = grpc_raw_byte_buffer_create(&s, 1);
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_SEND_MESSAGE;
	op.data.send_message.send_message = c->send;
	c->op = 0;
	if (grpc_call_start_batch(c->call, &op, 1, c, NULL) != GRPC_CALL_OK) {
		fprintf(stderr, "ingress: stream write refused\n");
		exit(1);
	}
	atomic_fetch_add_explicit(&sent_total, 1, memory_order_relaxed);
}

static void stream_start(struct worker *w, struct ucall *c, int k)
{
	grpc_channel *ch = w->ch[k];
	grpcc_unary_init(&c->u);
	c->call = grpc_channel_create_registered_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, w->cq,
	                                              w->method[k], after_s(3600), NULL);
	grpc_op ops[4];
	memset(ops, 0, sizeof ops);
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	grpcc_auth_set(&ops[0]);
	ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[1].data.recv_initial_metadata.recv_initial_metadata = &c->u.md_init;
	ops[2].op = GRPC_OP_RECV_MESSAGE;
	ops[2].data.recv_message.recv_message = &c->u.recv;
	ops[3].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[3].data.recv_status_on_client.trailing_metadata = &c->u.md_trail;
	ops[3].data.recv_status_on_client.status = &c->u.status;
	ops[3].data.recv_status_on_client.status_details = &c->u.details;
	/* Tag c+1 (odd address inside c): the end of the call. */
	if (grpc_call_start_batch(c->call, ops, 4, (char *)c + 1, NULL) != GRPC_CALL_OK) {
		fprintf(stderr, "ingress: stream start refused\n");
		exit(1);
	}
	stream_write(w, c);
}

static void stream_result(struct worker *w, struct ucall *c)
{
	if (c->u.status != GRPC_STATUS_OK || !c->u.recv) {
		w->failed++;
		note_error(w, c);
		return;
	}
	grpc_byte_buffer_reader rd;
	grpc_byte_buffer_reader_init(&rd, c->u.recv);
	grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	Livehub__V1__PublishStreamResponse *r = livehub__v1__publish_stream_response__unpack(
	        NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
	grpc_slice_unref(s);
	if (!r) {
		w->failed++;
		return;
	}
	w->ok++;
	w->accepted += r->accepted;
	w->rejected += r->rejected;
	if (r->first_error && !w->first_err[0])
		snprintf(w->first_err, sizeof w->first_err, "first_error seq=%llu code=%d %s",
		         (unsigned long long)r->first_error->sequence, r->first_error->code,
		         r->first_error->message);
	livehub__v1__publish_stream_response__free_unpacked(r, NULL);
}

static void *stream_main(void *arg)
{
	struct worker *w = arg;
	int n = w->nch * o.inflight;
	struct ucall *calls = calloc((size_t)n, sizeof *calls);
	for (int i = 0; i < n; i++)
		stream_start(w, &calls[i], i % w->nch);
	int live = n;
	while (live > 0) {
		grpc_event ev =
		        grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		if ((uintptr_t)ev.tag & 1) {
			struct ucall *c = (void *)((char *)ev.tag - 1);
			stream_result(w, c);
			uc_reset(c);
			live--;
			continue;
		}
		struct ucall *c = ev.tag;
		if (c->send) {
			grpc_byte_buffer_destroy(c->send);
			c->send = NULL;
		}
		if (!ev.success || c->closing)
			continue; /* the end-of-call tag follows */
		if (atomic_load_explicit(&measuring, memory_order_relaxed) == 2) {
			grpc_op op;
			memset(&op, 0, sizeof op);
			op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
			c->closing = true;
			grpc_call_start_batch(c->call, &op, 1, c, NULL);
			continue;
		}
		stream_write(w, c);
	}
	free(calls);
	return NULL;
}

/* ---------------------------------------------------------------------- */

/* utime+stime of pid in seconds, or -1. */
static double proc_cpu_s(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	unsigned long ut = 0, st = 0;
	/* after ")": state ppid pgrp session tty tpgid flags minflt cminflt
	 * majflt cmajflt utime stime */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Context switches (voluntary and not) of all of pid's threads so far; a
 * thread that ends in between takes its count with it. */
static unsigned long long proc_switches(int pid)
{
	char path[96], line[256];
	unsigned long long sum = 0;
	snprintf(path, sizeof path, "/proc/%d/task", pid);
	DIR *d = opendir(path);
	if (!d)
		return 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/proc/%d/task/%.20s/status", pid, e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		while (fgets(line, sizeof line, f)) {
			unsigned long long v;
			if (sscanf(line, "voluntary_ctxt_switches: %llu", &v) == 1 ||
			    sscanf(line, "nonvoluntary_ctxt_switches: %llu", &v) == 1)
				sum += v;
		}
		fclose(f);
	}
	closedir(d);
	return sum;
}

static void wait_ready(grpc_channel *ch, grpc_completion_queue *cq)
{
	if (!grpcc_wait_ready(ch, cq, 5000000000ull)) {
		fprintf(stderr, "ingress: cannot connect to %s\n", o.target);
		exit(1);
	}
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: ingress [-t host:port] [-m unary|stream] [-T threads] [-c channels/thread]\n"
	        "               [-n inflight/channel (streams/channel in stream mode)]\n"
	        "               [-d seconds] [-w warmup-seconds] [-s pad-bytes] [-p hub-pid]\n"
	        "               [-x N: stream mode, every Nth message invalid]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int ch;
	while ((ch = getopt(argc, argv, "t:m:T:c:n:d:w:s:p:x:")) != -1) {
		switch (ch) {
		case 't': o.target = optarg; break;
		case 'm': o.stream = strcmp(optarg, "stream") == 0; break;
		case 'T': o.threads = atoi(optarg); break;
		case 'c': o.channels = atoi(optarg); break;
		case 'n': o.inflight = atoi(optarg); break;
		case 'd': o.duration = atof(optarg); break;
		case 'w': o.warmup = atof(optarg); break;
		case 's': o.payload = atoi(optarg); break;
		case 'p': o.pid = atoi(optarg); break;
		case 'x': o.invalid_every = atoi(optarg); break;
		default: usage();
		}
	}
	if (o.threads < 1 || o.channels < 1 || o.inflight < 1 || o.duration <= 0)
		usage();
	grpc_init();
	grpcc_auth_init();
	encode_all();
	struct worker *ws = calloc((size_t)o.threads, sizeof *ws);
	for (int t = 0; t < o.threads; t++) {
		struct worker *w = &ws[t];
		w->id = t;
		w->cq = grpc_completion_queue_create_for_next(NULL);
		w->nch = o.channels;
		w->ch = calloc((size_t)w->nch, sizeof *w->ch);
		for (int k = 0; k < w->nch; k++) {
			/* A distinct arg keeps gRPC from sharing one subchannel. */
			grpc_arg a = {.type = GRPC_ARG_INTEGER,
			              .key = "grpc.channel_id",
			              .value.integer = t * 1000 + k};
			grpc_channel_args args = {1, &a};
			grpc_channel_credentials *cr = grpc_insecure_credentials_create();
			w->ch[k] = grpc_channel_create(o.target, cr, &args);
			grpc_channel_credentials_release(cr);
			wait_ready(w->ch[k], w->cq);
		}
		const char *m = o.stream ? "/livehub.v1.HubService/PublishStream"
		                         : "/livehub.v1.HubService/PublishJobProgress";
		w->method = calloc((size_t)w->nch, sizeof *w->method);
		for (int k = 0; k < w->nch; k++)
			w->method[k] = grpc_channel_register_call(w->ch[k], m, NULL, NULL);
	}
	for (int t = 0; t < o.threads; t++)
		pthread_create(&ws[t].th, NULL, o.stream ? stream_main : unary_main, &ws[t]);

	struct timespec ts = {(time_t)o.warmup, (long)((o.warmup - (time_t)o.warmup) * 1e9)};
	nanosleep(&ts, NULL);
	double cpu0 = o.pid ? proc_cpu_s(o.pid) : 0;
	unsigned long long sw0 = o.pid ? proc_switches(o.pid) : 0;
	uint64_t sent0 = atomic_load(&sent_total);
	uint64_t t0 = grpcc_now_ns();
	atomic_store(&measuring, 1);
	ts.tv_sec = (time_t)o.duration;
	ts.tv_nsec = (long)((o.duration - (time_t)o.duration) * 1e9);
	nanosleep(&ts, NULL);
	uint64_t sent1 = atomic_load(&sent_total);
	double cpu1 = o.pid ? proc_cpu_s(o.pid) : 0;
	double sw = o.pid ? (double)(proc_switches(o.pid) - sw0) : 0;
	double el = (double)(grpcc_now_ns() - t0) / 1e9;
	atomic_store(&measuring, 2);
	for (int t = 0; t < o.threads; t++)
		pthread_join(ws[t].th, NULL);

	uint64_t ok = 0, failed = 0, acc = 0, rej = 0, hist[HIST_N] = {0};
	const char *err = "";
	for (int t = 0; t < o.threads; t++) {
		ok += ws[t].ok;
		failed += ws[t].failed;
		acc += ws[t].accepted;
		rej += ws[t].rejected;
		for (int i = 0; i < HIST_N; i++)
			hist[i] += ws[t].hist[i];
		if (!err[0])
			err = ws[t].first_err;
	}
	double cpu = cpu1 - cpu0;
	if (o.stream) {
		/* Messages written in the measured interval; the hub's response
		 * counts confirm they were all published. */
		double rate = (double)(sent1 - sent0) / el;
		printf("mode=stream streams=%d msgs_per_s=%.0f accepted=%llu rejected=%llu "
		       "failed_streams=%llu",
		       o.threads * o.channels * o.inflight, rate, (unsigned long long)acc,
		       (unsigned long long)rej, (unsigned long long)failed);
		if (o.pid)
			printf(" hub_cpu_s=%.2f hub_cpu_util=%.2f msgs_per_hub_cpu_s=%.0f "
			       "hub_switches_per_msg=%.3f",
			       cpu, cpu / el, (double)(sent1 - sent0) / cpu,
			       sw / (double)(sent1 - sent0));
	} else {
		uint64_t n = 0, p50 = 0, p99 = 0, c = 0;
		for (int i = 0; i < HIST_N; i++)
			n += hist[i];
		for (int i = 0; i < HIST_N; i++) {
			c += hist[i];
			if (!p50 && c * 2 >= n)
				p50 = (uint64_t)i + 1;
			if (!p99 && c * 100 >= n * 99)
				p99 = (uint64_t)i + 1;
		}
		double rate = (double)ok / el;
		printf("mode=unary inflight=%d calls_per_s=%.0f ok=%llu failed=%llu p50_us=%llu "
		       "p99_us=%llu",
		       o.threads * o.channels * o.inflight, rate, (unsigned long long)ok,
		       (unsigned long long)failed, (unsigned long long)p50 * 10,
		       (unsigned long long)p99 * 10);
		if (o.pid)
			printf(" hub_cpu_s=%.2f hub_cpu_util=%.2f calls_per_hub_cpu_s=%.0f "
			       "hub_switches_per_call=%.3f",
			       cpu, cpu / el, (double)ok / cpu, sw / (double)ok);
	}
	printf(" total=%llu\n", (unsigned long long)(o.stream ? atomic_load(&sent_total)
	                                                      : atomic_load(&done_total)));
	if (err[0])
		printf("first error: %s\n", err);
	return failed ? 1 : 0;
}
