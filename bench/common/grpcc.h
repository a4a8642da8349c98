/*
 * bench/common: what the benchmark's gRPC clients (lg's publisher and
 * ingress) share, so that both speak to livehub the same way: the API key,
 * deadlines, and bringing a channel up before the clock starts.
 */
#ifndef BENCH_GRPCC_H
#define BENCH_GRPCC_H

#include <stdbool.h>
#include <stdint.h>

#include <grpc/grpc.h>
#include <grpc/support/time.h>

/* Reads livehub's API key from LIVEHUB_API_KEY (docs/SECURITY.md), once,
 * before any call; without it calls carry no key (development mode). */
void grpcc_auth_init(void);
/* Sets op, a GRPC_OP_SEND_INITIAL_METADATA, to carry the key if there is one. */
void grpcc_auth_set(grpc_op *op);

/* The results of a unary call, filled when its batch completes. */
struct grpcc_unary {
	grpc_metadata_array md_init, md_trail;
	grpc_byte_buffer *recv;
	grpc_status_code status;
	grpc_slice details;
};

/* Readies u for a call. */
void grpcc_unary_init(struct grpcc_unary *u);
/* Frees what a finished call left in u (after grpcc_unary_init). */
void grpcc_unary_destroy(struct grpcc_unary *u);

/* Starts a unary call's one batch on call: the API key, send (not taken),
 * half-close, and receiving everything into u. tag comes back on the
 * call's completion queue. */
grpc_call_error grpcc_start_unary(grpc_call *call, grpc_byte_buffer *send, struct grpcc_unary *u,
                                  void *tag);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t grpcc_now_ns(void);
/* A gRPC deadline ns nanoseconds from now. */
gpr_timespec grpcc_after_ns(uint64_t ns);

/* Waits up to timeout_ns for ch to be READY, using cq for the watch (tag
 * NULL). Returns true when it is. */
bool grpcc_wait_ready(grpc_channel *ch, grpc_completion_queue *cq, uint64_t timeout_ns);

#endif
