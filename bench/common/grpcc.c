#include "grpcc.h"

#include <grpc/byte_buffer.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static grpc_metadata auth_md[1];
static size_t auth_md_n;

void grpcc_auth_init(void)
{
	const char *key = getenv("LIVEHUB_API_KEY");
	if (!key || !*key || auth_md_n)
		return;
	size_t n = strlen(key) + sizeof "Bearer ";
	char *v = malloc(n);
	if (!v)
		return;
	snprintf(v, n, "Bearer %s", key);
	auth_md[0].key = grpc_slice_from_static_string("authorization");
	auth_md[0].value = grpc_slice_from_copied_string(v);
	auth_md_n = 1;
	free(v);
}

void grpcc_auth_set(grpc_op *op)
{
	op->data.send_initial_metadata.count = auth_md_n;
	op->data.send_initial_metadata.metadata = auth_md_n ? auth_md : NULL;
}

void grpcc_unary_init(struct grpcc_unary *u)
{
	memset(u, 0, sizeof *u);
	u->details = grpc_empty_slice();
	grpc_metadata_array_init(&u->md_init);
	grpc_metadata_array_init(&u->md_trail);
}

void grpcc_unary_destroy(struct grpcc_unary *u)
{
	grpc_metadata_array_destroy(&u->md_init);
	grpc_metadata_array_destroy(&u->md_trail);
	if (u->recv)
		grpc_byte_buffer_destroy(u->recv);
	grpc_slice_unref(u->details);
	u->recv = NULL;
}

grpc_call_error grpcc_start_unary(grpc_call *call, grpc_byte_buffer *send, struct grpcc_unary *u,
                                  void *tag)
{
	grpc_op ops[6];
	memset(ops, 0, sizeof ops);
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	grpcc_auth_set(&ops[0]);
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = send;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &u->md_init;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &u->recv;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &u->md_trail;
	ops[5].data.recv_status_on_client.status = &u->status;
	ops[5].data.recv_status_on_client.status_details = &u->details;
	return grpc_call_start_batch(call, ops, 6, tag, NULL);
}

uint64_t grpcc_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

gpr_timespec grpcc_after_ns(uint64_t ns)
{
	return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
	                    gpr_time_from_nanos((int64_t)ns, GPR_TIMESPAN));
}

bool grpcc_wait_ready(grpc_channel *ch, grpc_completion_queue *cq, uint64_t timeout_ns)
{
	uint64_t deadline = grpcc_now_ns() + timeout_ns;
	for (;;) {
		grpc_connectivity_state s = grpc_channel_check_connectivity_state(ch, 1);
		if (s == GRPC_CHANNEL_READY)
			return true;
		if (grpcc_now_ns() > deadline)
			return false;
		grpc_channel_watch_connectivity_state(ch, s, grpcc_after_ns(1000000000ull), cq, NULL);
		grpc_completion_queue_next(cq, grpcc_after_ns(2000000000ull), NULL);
	}
}
