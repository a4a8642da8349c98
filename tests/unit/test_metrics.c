/* Unit tests of the metrics module: histogram buckets, the Prometheus
 * rendering, gRPC method slots, auth reasons, the top-tenant snapshot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"
#include "strbuf.h"

static char *render(void)
{
	struct strbuf sb = STRBUF_INIT;
	struct metrics_gauges g = {.hub = {.connections = 7, .messages_delivered = 11}};
	metrics_render(&sb, &g);
	assert_false(sb.oom);
	char *s = strdup(sb_cstr(&sb));
	sb_free(&sb);
	return s;
}

static void test_histogram(void **state)
{
	metrics_init();
	struct metrics_hist *h = &lh_metrics.publish_latency;
	metrics_observe(h, 10);       /* first bucket (50 µs) */
	metrics_observe(h, 700);      /* 1 ms */
	metrics_observe(h, 60000000); /* past the last bound: +Inf */
	metrics_observe(h, -5);       /* clock oddity: counted as 0 */
	assert_int_equal(metrics_get(&h->count), 4);
	assert_int_equal(metrics_get(&h->bucket[0]), 2);
	assert_int_equal(metrics_get(&h->bucket[4]), 1);
	assert_int_equal(metrics_get(&h->bucket[METRICS_NBUCKETS]), 1);
	char *s = render();
	assert_non_null(strstr(s, "livehub_publish_latency_seconds_bucket{le=\"5e-05\"} 2\n"));
	assert_non_null(strstr(s, "livehub_publish_latency_seconds_bucket{le=\"0.001\"} 3\n"));
	assert_non_null(strstr(s, "livehub_publish_latency_seconds_bucket{le=\"+Inf\"} 4\n"));
	assert_non_null(strstr(s, "livehub_publish_latency_seconds_count 4\n"));
	free(s);
}

static void test_render_counters(void **state)
{
	metrics_init();
	metrics_inc(&lh_metrics.conn_closed[MC_SLOW_CONSUMER], 3);
	metrics_inc(&lh_metrics.auth_failed[metrics_auth_reason("token expired")], 1);
	metrics_inc(&lh_metrics.msg_out[MO_REPLY], 2);
	char *s = render();
	assert_non_null(strstr(s, "livehub_connections 7\n"));
	assert_non_null(
	        strstr(s, "livehub_connections_closed_total{reason=\"slow_consumer\"} 3\n"));
	assert_non_null(strstr(s, "livehub_auth_failures_total{reason=\"expired\"} 1\n"));
	assert_non_null(strstr(s, "livehub_messages_out_total{type=\"event\"} 11\n"));
	assert_non_null(strstr(s, "livehub_messages_out_total{type=\"reply\"} 2\n"));
	assert_non_null(strstr(s, "livehub_messages_conflated_total 0\n"));
	/* Every family has its HELP and TYPE, and every line ends. */
	assert_non_null(strstr(s, "# TYPE livehub_connections_closed_total counter\n"));
	assert_int_equal(s[strlen(s) - 1], '\n');
	free(s);
}

static void test_grpc_methods(void **state)
{
	metrics_init();
	int a = metrics_grpc_method("/x.S/A");
	int b = metrics_grpc_method("/x.S/B");
	assert_int_equal(metrics_grpc_method("/x.S/A"), a);
	assert_int_not_equal(a, b);
	metrics_grpc_done(a, 0, 100);
	metrics_grpc_done(a, 3, 100);
	metrics_grpc_done(a, 99, 100); /* out of range: UNKNOWN */
	metrics_grpc_done(-1, 0, 100); /* ignored */
	char *s = render();
	assert_non_null(strstr(s, "livehub_grpc_calls_total{method=\"/x.S/A\",code=\"OK\"} 1\n"));
	assert_non_null(strstr(
	        s, "livehub_grpc_calls_total{method=\"/x.S/A\",code=\"INVALID_ARGUMENT\"} 1\n"));
	assert_non_null(
	        strstr(s, "livehub_grpc_calls_total{method=\"/x.S/A\",code=\"UNKNOWN\"} 1\n"));
	assert_non_null(strstr(s, "livehub_grpc_calls_total{method=\"/x.S/B\",code=\"OK\"} 0\n"));
	assert_non_null(
	        strstr(s, "livehub_grpc_call_duration_seconds_count{method=\"/x.S/A\"} 3\n"));
	free(s);
}

static void test_auth_reasons(void **state)
{
	assert_int_equal(metrics_auth_reason("no token"), MA_NO_TOKEN);
	assert_int_equal(metrics_auth_reason("bad signature"), MA_SIGNATURE);
	assert_int_equal(metrics_auth_reason("token algorithm is not HS256"), MA_ALGORITHM);
	assert_int_equal(metrics_auth_reason("token not valid yet"), MA_NOT_YET_VALID);
	assert_int_equal(metrics_auth_reason("sub claim missing or not a valid user id"),
	                 MA_CLAIMS);
	assert_int_equal(metrics_auth_reason("malformed token"), MA_MALFORMED);
}

static void test_top_tenants(void **state)
{
	metrics_init();
	const char *conns[40];
	size_t n = 0;
	char names[12][8];
	/* Tenant i has i + 1 connections. */
	for (int i = 0; i < 12; i++) {
		snprintf(names[i], sizeof names[i], "t%d", i);
		for (int k = 0; k <= i && n < 40; k++)
			conns[n++] = names[i];
	}
	metrics_tenants_snapshot(conns, n);
	struct metrics_tenant top[METRICS_TOP_TENANTS];
	size_t got = metrics_top_tenants(top, METRICS_TOP_TENANTS);
	assert_true(got > 0 && got <= METRICS_TOP_TENANTS);
	for (size_t i = 1; i < got; i++)
		assert_true(top[i - 1].connections >= top[i].connections);
	/* 1 + 2 + ... + 8 = 36 connections for t0..t7, the last 4 for t8. */
	assert_int_equal(got, 9);
	assert_string_equal(top[0].tenant, "t7");
	assert_int_equal(top[0].connections, 8);
	assert_string_equal(top[8].tenant, "t0");
	metrics_tenants_snapshot(conns, 0);
	assert_int_equal(metrics_top_tenants(top, METRICS_TOP_TENANTS), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_histogram),    cmocka_unit_test(test_render_counters),
	        cmocka_unit_test(test_grpc_methods), cmocka_unit_test(test_auth_reasons),
	        cmocka_unit_test(test_top_tenants),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
