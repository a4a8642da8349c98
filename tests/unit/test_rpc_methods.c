/* Unit tests of rpc_methods.c: validation of HubService requests, the
 * publications they become, and the responses built from them. No gRPC:
 * requests are built as protobuf-c structs, responses are packed and
 * unpacked again. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "livehub.h"
#include "livehub/v1/events.pb-c.h"
#include "livehub/v1/hub.pb-c.h"
#include "rpc_methods.h"

/* Runs method name on req into a fresh p (the tests free p->data between
 * calls); returns 0 or -1 like rpc_method_prepare. */
static int prepare(const char *name, const void *req, struct publication *p, struct rpc_error *err)
{
	const struct rpc_method *m = rpc_method_find(name);
	assert_non_null(m);
	memset(p, 0, sizeof *p);
	return rpc_method_prepare(m, req, p, err);
}

/* Asserts that req fails with INVALID_ARGUMENT and exactly msg. */
static void expect_invalid(const char *name, const void *req, const char *msg)
{
	struct publication p = {0};
	struct rpc_error err;
	assert_int_equal(prepare(name, req, &p, &err), -1);
	assert_int_equal(err.code, RPC_INVALID_ARGUMENT);
	assert_string_equal(err.msg, msg);
	assert_null(p.data);
}

/* Parses p->data as a JSON object. */
static json_t *data_json(const struct publication *p)
{
	assert_non_null(p->data);
	assert_int_equal(strlen(p->data), p->data_len);
	json_error_t jerr;
	json_t *j = json_loadb(p->data, p->data_len, 0, &jerr);
	assert_non_null(j);
	assert_true(json_is_object(j));
	return j;
}

static void test_table_matches_service(void **state)
{
	const ProtobufCServiceDescriptor *svc = &livehub__v1__hub_service__descriptor;
	assert_int_equal(rpc_methods_check(svc), 0);
	for (unsigned i = 0; i < svc->n_methods; i++) {
		const struct rpc_method *m = rpc_method_find(svc->methods[i].name);
		assert_non_null(m);
		assert_ptr_equal(m->input, svc->methods[i].input);
		assert_ptr_equal(m->output, svc->methods[i].output);
	}
	assert_null(rpc_method_find("Nope"));
}

static void test_job_progress(void **state)
{
	Livehub__V1__JobProgress ev = LIVEHUB__V1__JOB_PROGRESS__INIT;
	Livehub__V1__PublishJobProgressRequest req =
	        LIVEHUB__V1__PUBLISH_JOB_PROGRESS_REQUEST__INIT;
	req.tenant_id = "acme";
	req.event = &ev;
	ev.job_id = "42";
	ev.project_id = "p1";
	ev.progress = 40;
	ev.kind = LIVEHUB__V1__JOB_KIND__JOB_KIND_SLICE;
	ev.message = "layer 32/80";

	struct publication p = {0};
	struct rpc_error err;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	assert_int_equal(prepare("PublishJobProgress", &req, &p, &err), 0);
	assert_string_equal(p.tenant, "acme");
	assert_string_equal(p.type, "job:progress");
	assert_int_equal(p.nchannels, 2);
	assert_string_equal(p.channels[0], "job:42");
	assert_string_equal(p.channels[1], "project:p1");
	assert_true(p.conflate_key != 0);
	assert_true(llabs(p.ts_ms - ((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000)) < 5000);

	json_t *j = data_json(&p);
	assert_string_equal(json_string_value(json_object_get(j, "jobId")), "42");
	assert_string_equal(json_string_value(json_object_get(j, "kind")), "JOB_KIND_SLICE");
	assert_true(json_number_value(json_object_get(j, "progress")) == 40);
	assert_string_equal(json_string_value(json_object_get(j, "message")), "layer 32/80");
	json_decref(j);
	uint64_t key = p.conflate_key;
	free(p.data);

	/* No project: one channel; another item of the job conflates apart. */
	ev.project_id = "";
	ev.item_id = "s1";
	assert_int_equal(prepare("PublishJobProgress", &req, &p, &err), 0);
	assert_int_equal(p.nchannels, 1);
	assert_true(p.conflate_key != key);
	free(p.data);
}

static void test_job_progress_errors(void **state)
{
	Livehub__V1__JobProgress ev = LIVEHUB__V1__JOB_PROGRESS__INIT;
	Livehub__V1__PublishJobProgressRequest req =
	        LIVEHUB__V1__PUBLISH_JOB_PROGRESS_REQUEST__INIT;
	const char *m = "PublishJobProgress";
	ev.job_id = "42";

	expect_invalid(m, &req, "tenant_id: required");
	req.tenant_id = "ac me";
	expect_invalid(m, &req, "tenant_id: must be 1-64 characters of [A-Za-z0-9_.-]");
	req.tenant_id = "acme";
	expect_invalid(m, &req, "event: required");
	req.event = &ev;
	ev.job_id = "";
	expect_invalid(m, &req, "event.job_id: required");
	ev.job_id = "4 2";
	expect_invalid(m, &req, "event.job_id: must be 1-156 characters of [A-Za-z0-9_.:@+=/-]");
	char longid[158];
	memset(longid, 'j', 157);
	longid[157] = '\0';
	ev.job_id = longid;
	expect_invalid(m, &req, "event.job_id: must be 1-156 characters of [A-Za-z0-9_.:@+=/-]");
	ev.job_id = "42";
	ev.project_id = "p\"1";
	expect_invalid(m, &req,
	               "event.project_id: must be 1-152 characters of [A-Za-z0-9_.:@+=/-]");
	ev.project_id = "";
	double bad[] = {-0.5, 100.01, NAN, INFINITY};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		ev.progress = bad[i];
		expect_invalid(m, &req, "event.progress: must be between 0 and 100");
	}
	ev.progress = 100;
	ev.message = "bad \xff utf-8";
	expect_invalid(m, &req, "event.message: invalid UTF-8");
}

static void test_other_events(void **state)
{
	struct publication p = {0};
	struct rpc_error err;

	Livehub__V1__JobFailed jf = LIVEHUB__V1__JOB_FAILED__INIT;
	Livehub__V1__PublishJobFailedRequest fr = LIVEHUB__V1__PUBLISH_JOB_FAILED_REQUEST__INIT;
	fr.tenant_id = "acme";
	fr.event = &jf;
	jf.job_id = "7";
	assert_int_equal(prepare("PublishJobFailed", &fr, &p, &err), 0);
	assert_string_equal(p.type, "job:failed");
	assert_string_equal(p.channels[0], "job:7");
	assert_int_equal(p.conflate_key, 0);
	free(p.data);

	Livehub__V1__JobCompleted jc = LIVEHUB__V1__JOB_COMPLETED__INIT;
	Livehub__V1__PublishJobCompletedRequest cr =
	        LIVEHUB__V1__PUBLISH_JOB_COMPLETED_REQUEST__INIT;
	cr.tenant_id = "acme";
	cr.event = &jc;
	jc.job_id = "7";
	jc.duration_ms = 1234;
	assert_int_equal(prepare("PublishJobCompleted", &cr, &p, &err), 0);
	assert_string_equal(p.type, "job:completed");
	json_t *j = data_json(&p);
	assert_string_equal(json_string_value(json_object_get(j, "durationMs")), "1234");
	json_decref(j);
	free(p.data);
	/* Errors name fields as the .proto does, not as the JSON does. */
	jc.result_url = "https://x/\xe2\x82";
	expect_invalid("PublishJobCompleted", &cr, "event.result_url: invalid UTF-8");

	Livehub__V1__PriceUpdated pu = LIVEHUB__V1__PRICE_UPDATED__INIT;
	Livehub__V1__PublishPriceUpdatedRequest pr =
	        LIVEHUB__V1__PUBLISH_PRICE_UPDATED_REQUEST__INIT;
	pr.tenant_id = "acme";
	pr.event = &pu;
	expect_invalid("PublishPriceUpdated", &pr, "event.item_id: required");
	pu.item_id = "sku-1";
	assert_int_equal(prepare("PublishPriceUpdated", &pr, &p, &err), 0);
	assert_string_equal(p.type, "price:updated");
	assert_int_equal(p.nchannels, 1);
	assert_string_equal(p.channels[0], "$tenant");
	free(p.data);

	Livehub__V1__OrderStatus os = LIVEHUB__V1__ORDER_STATUS__INIT;
	Livehub__V1__PublishOrderStatusRequest orq =
	        LIVEHUB__V1__PUBLISH_ORDER_STATUS_REQUEST__INIT;
	orq.tenant_id = "acme";
	orq.event = &os;
	expect_invalid("PublishOrderStatus", &orq, "event.order_id: required");
	os.order_id = "o-9";
	os.state = LIVEHUB__V1__ORDER_STATE__ORDER_STATE_SHIPPED;
	assert_int_equal(prepare("PublishOrderStatus", &orq, &p, &err), 0);
	assert_string_equal(p.type, "order:status");
	assert_string_equal(p.channels[0], "order:o-9");
	j = data_json(&p);
	assert_string_equal(json_string_value(json_object_get(j, "state")), "ORDER_STATE_SHIPPED");
	json_decref(j);
	free(p.data);
}

static void test_custom_types(void **state)
{
	struct publication p = {0};
	struct rpc_error err;

	Livehub__V1__BroadcastTenantRequest br = LIVEHUB__V1__BROADCAST_TENANT_REQUEST__INIT;
	br.tenant_id = "acme";
	expect_invalid("BroadcastTenant", &br, "type: required");
	br.type = "a/b";
	expect_invalid("BroadcastTenant", &br, "type: must be 1-64 characters of [A-Za-z0-9_.:-]");
	br.type = "subscribed";
	expect_invalid("BroadcastTenant", &br,
	               "type: \"subscribed\" is reserved for the client protocol");
	br.type = "presence:join";
	expect_invalid("BroadcastTenant", &br,
	               "type: \"presence:join\" is reserved for the client protocol");
	br.type = "client:typing";
	expect_invalid("BroadcastTenant", &br,
	               "type: \"client:\" types are reserved for client events");
	br.type = "announcement";
	assert_int_equal(prepare("BroadcastTenant", &br, &p, &err), 0);
	assert_string_equal(p.type, "announcement");
	assert_string_equal(p.channels[0], "$tenant");
	assert_string_equal(p.data, "{}"); /* unset Struct */
	free(p.data);

	Livehub__V1__SendToUserRequest su = LIVEHUB__V1__SEND_TO_USER_REQUEST__INIT;
	su.tenant_id = "acme";
	su.type = "sync";
	expect_invalid("SendToUser", &su, "user_id: required");
	su.user_id = "al ice";
	expect_invalid("SendToUser", &su, "user_id: must be 1-128 characters of [A-Za-z0-9_.:@+-]");
	su.user_id = "alice@example.com";
	assert_int_equal(prepare("SendToUser", &su, &p, &err), 0);
	assert_string_equal(p.channels[0], "$user:alice@example.com");
	free(p.data);

	Livehub__V1__PublishRequest pr = LIVEHUB__V1__PUBLISH_REQUEST__INIT;
	pr.tenant_id = "acme";
	pr.type = "card:moved";
	expect_invalid("Publish", &pr, "channel: required");
	pr.channel = "$tenant";
	expect_invalid(
	        "Publish", &pr,
	        "channel: names starting with $ are reserved; use BroadcastTenant or SendToUser");
	pr.channel = "board 7";
	expect_invalid("Publish", &pr, "channel: must be 1-160 characters of [A-Za-z0-9_.:@+=/-]");
	pr.channel = "board:7";

	/* A Struct payload becomes a plain object. */
	Google__Protobuf__Value v = GOOGLE__PROTOBUF__VALUE__INIT;
	v.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
	v.string_value = "todo";
	Google__Protobuf__Struct__FieldsEntry e = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
	e.key = "column";
	e.value = &v;
	Google__Protobuf__Struct__FieldsEntry *ep = &e;
	Google__Protobuf__Struct s = GOOGLE__PROTOBUF__STRUCT__INIT;
	s.n_fields = 1;
	s.fields = &ep;
	pr.data = &s;
	assert_int_equal(prepare("Publish", &pr, &p, &err), 0);
	assert_string_equal(p.channels[0], "board:7");
	json_t *j = data_json(&p);
	assert_string_equal(json_string_value(json_object_get(j, "column")), "todo");
	json_decref(j);
	free(p.data);

	v.string_value = "\xc3";
	expect_invalid("Publish", &pr, "data.fields.column: invalid UTF-8");
}

static void test_reply(void **state)
{
	struct publication p = {0};
	memset(&p, 0, sizeof p);
	p.nchannels = 2;
	strcpy(p.channels[0], "job:42");
	strcpy(p.channels[1], "project:p1");
	p.subscribers = 5;
	p.pos[0] = (struct pub_position){7, "9f2c41d07a3b5e68", 3};
	p.pos[1] = (struct pub_position){2, "0123456789abcdef", 2};

	const struct rpc_method *m = rpc_method_find("PublishJobFailed");
	struct rpc_publish_reply rep;
	const ProtobufCMessage *msg = rpc_publish_reply_init(&rep, m, &p);
	assert_ptr_equal(msg->descriptor, &livehub__v1__publish_job_failed_response__descriptor);
	uint8_t buf[512];
	size_t len = protobuf_c_message_pack(msg, buf);
	assert_true(len > 0 && len < sizeof buf);

	Livehub__V1__PublishJobFailedResponse *r =
	        livehub__v1__publish_job_failed_response__unpack(NULL, len, buf);
	assert_non_null(r);
	assert_non_null(r->result);
	assert_int_equal(r->result->offset, 7);
	assert_string_equal(r->result->epoch, "9f2c41d07a3b5e68");
	assert_int_equal(r->result->subscribers, 5);
	assert_int_equal(r->result->n_channels, 2);
	assert_string_equal(r->result->channels[1]->channel, "project:p1");
	assert_int_equal(r->result->channels[1]->offset, 2);
	assert_string_equal(r->result->channels[1]->epoch, "0123456789abcdef");
	assert_int_equal(r->result->channels[1]->subscribers, 2);
	livehub__v1__publish_job_failed_response__free_unpacked(r, NULL);
}

static void test_status(void **state)
{
	struct publication p = {0};
	struct rpc_error err;
	memset(&p, 0, sizeof p);
	assert_int_equal(rpc_publication_status(&p, &err), RPC_OK);
	p.status = LH_ENOMEM;
	assert_int_equal(rpc_publication_status(&p, &err), RPC_INTERNAL);
	assert_string_equal(err.msg, "out of memory");
	p.status = LH_ECLOSED;
	assert_int_equal(rpc_publication_status(&p, &err), RPC_UNAVAILABLE);
	/* Redis mode, Redis down: a control command says what was done. */
	struct command cmd = {.kind = CMD_DISCONNECT, .connections = 2};
	p.cmd = &cmd;
	p.status = LH_EUNAVAILABLE;
	assert_int_equal(rpc_publication_status(&p, &err), RPC_UNAVAILABLE);
	assert_string_equal(err.msg,
	                    "redis unavailable: applied on this node only (2 connections); "
	                    "the other nodes were not reached");
	cmd.kind = CMD_PRESENCE;
	assert_int_equal(rpc_publication_status(&p, &err), RPC_UNAVAILABLE);
	assert_string_equal(err.msg, "redis unavailable: cluster presence cannot be read; retry");
}

static void test_stats(void **state)
{
	struct hub_stats_snapshot s = {
	        .connections = 3, .users = 2, .tenants = 1, .messages_delivered = 99};
	Livehub__V1__GetStatsResponse r;
	rpc_stats_reply_init(&r, &s, 12);
	assert_int_equal(r.connections, 3);
	assert_int_equal(r.users, 2);
	assert_int_equal(r.messages_delivered, 99);
	assert_int_equal(r.uptime_seconds, 12);
	assert_string_equal(r.version, LH_VERSION);
}

/* A PublishStreamRequest is prepared as the unary request its oneof holds,
 * and errors carry the oneof field's name. */
static void test_stream_prepare(void **state)
{
	Livehub__V1__JobProgress ev = LIVEHUB__V1__JOB_PROGRESS__INIT;
	ev.job_id = "42";
	ev.progress = 50;
	Livehub__V1__PublishJobProgressRequest jp = LIVEHUB__V1__PUBLISH_JOB_PROGRESS_REQUEST__INIT;
	jp.tenant_id = "acme";
	jp.event = &ev;
	Livehub__V1__PublishStreamRequest req = LIVEHUB__V1__PUBLISH_STREAM_REQUEST__INIT;
	req.sequence = 77;
	req.request_case = LIVEHUB__V1__PUBLISH_STREAM_REQUEST__REQUEST_JOB_PROGRESS;
	req.job_progress = &jp;

	struct publication p = {0}, u = {0};
	struct rpc_error err;
	uint64_t seq = 0;
	assert_int_equal(rpc_stream_prepare(&req.base, &p, &seq, &err), 0);
	assert_int_equal(seq, 77);
	assert_int_equal(prepare("PublishJobProgress", &jp, &u, &err), 0);
	assert_string_equal(p.type, u.type);
	assert_string_equal(p.tenant, "acme");
	assert_int_equal(p.nchannels, 1);
	assert_string_equal(p.channels[0], "job:42");
	assert_string_equal(p.data, u.data);
	assert_true(p.conflate_key == u.conflate_key && p.conflate_key != 0);
	free(u.data);

	/* The next message is written into the buffer the last one left, which
	 * a rejection frees. */
	char *buf = p.data;
	size_t cap = p.data_cap;
	assert_true(cap > strlen(buf));
	ev.progress = 60;
	assert_int_equal(rpc_stream_prepare(&req.base, &p, &seq, &err), 0);
	assert_ptr_equal(p.data, buf);
	assert_int_equal(p.data_cap, cap);
	assert_non_null(strstr(p.data, "\"progress\":60"));
	assert_int_equal(p.data_len, strlen(p.data));

	ev.progress = 101;
	seq = 0;
	assert_int_equal(rpc_stream_prepare(&req.base, &p, &seq, &err), -1);
	assert_int_equal(seq, 77);
	assert_int_equal(err.code, RPC_INVALID_ARGUMENT);
	assert_string_equal(err.msg, "job_progress.event.progress: must be between 0 and 100");
	assert_null(p.data);
	assert_int_equal(p.data_cap, 0);

	Livehub__V1__PublishRequest pr = LIVEHUB__V1__PUBLISH_REQUEST__INIT;
	pr.tenant_id = "acme";
	pr.channel = "$tenant";
	pr.type = "x";
	req.request_case = LIVEHUB__V1__PUBLISH_STREAM_REQUEST__REQUEST_PUBLISH;
	req.publish = &pr;
	assert_int_equal(rpc_stream_prepare(&req.base, &p, &seq, &err), -1);
	assert_ptr_equal(strstr(err.msg, "publish.channel: names starting with $"), err.msg);

	req.request_case = LIVEHUB__V1__PUBLISH_STREAM_REQUEST__REQUEST__NOT_SET;
	assert_int_equal(rpc_stream_prepare(&req.base, &p, &seq, &err), -1);
	assert_int_equal(err.code, RPC_INVALID_ARGUMENT);
	assert_non_null(strstr(err.msg, "request: one of job_progress"));

	/* Not a PublishStreamRequest at all. */
	assert_int_equal(rpc_stream_prepare(&jp.base, &p, &seq, &err), -1);
	assert_int_equal(err.code, RPC_INTERNAL);
}

/* Counting and the response: the first rejection is kept, later ones only
 * counted; the response round-trips through the wire format. */
static void test_stream_result(void **state)
{
	struct rpc_stream_result res = {0};
	struct rpc_stream_reply rep;
	uint8_t buf[512];

	size_t n = protobuf_c_message_pack(rpc_stream_reply_init(&rep, &res), buf);
	Livehub__V1__PublishStreamResponse *r =
	        livehub__v1__publish_stream_response__unpack(NULL, n, buf);
	assert_non_null(r);
	assert_int_equal(r->accepted + r->rejected, 0);
	assert_null(r->first_error);
	livehub__v1__publish_stream_response__free_unpacked(r, NULL);

	struct rpc_error e1 = {RPC_INVALID_ARGUMENT, "publish.type: required"};
	struct rpc_error e2 = {RPC_UNAVAILABLE, "livehub is shutting down"};
	res.accepted = 5;
	rpc_stream_reject(&res, 900, 3, &e1);
	rpc_stream_reject(&res, 901, 4, &e2);
	assert_int_equal(res.rejected, 2);
	n = protobuf_c_message_pack(rpc_stream_reply_init(&rep, &res), buf);
	r = livehub__v1__publish_stream_response__unpack(NULL, n, buf);
	assert_non_null(r);
	assert_int_equal(r->accepted, 5);
	assert_int_equal(r->rejected, 2);
	assert_non_null(r->first_error);
	assert_int_equal(r->first_error->sequence, 900);
	assert_int_equal(r->first_error->index, 3);
	assert_int_equal(r->first_error->code, RPC_INVALID_ARGUMENT);
	assert_string_equal(r->first_error->message, "publish.type: required");
	livehub__v1__publish_stream_response__free_unpacked(r, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_table_matches_service),
	        cmocka_unit_test(test_job_progress),
	        cmocka_unit_test(test_job_progress_errors),
	        cmocka_unit_test(test_other_events),
	        cmocka_unit_test(test_custom_types),
	        cmocka_unit_test(test_reply),
	        cmocka_unit_test(test_status),
	        cmocka_unit_test(test_stats),
	        cmocka_unit_test(test_stream_prepare),
	        cmocka_unit_test(test_stream_result),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
