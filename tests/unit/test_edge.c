/* Unit tests of edge.c: the origin allow-list, the token bucket, the
 * per-address counts and the JSON shape scan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "edge.h"

static bool allowed(const struct origins *o, const char *origin)
{
	return origins_allowed(o, origin, strlen(origin));
}

static void test_origins_exact_and_wildcard(void **state)
{
	const char *err;
	struct origins *o =
	        origins_new(" https://app.example.com , https://*.example.org,null", &err);
	assert_non_null(o);
	assert_null(err);
	assert_int_equal(origins_count(o), 3);
	assert_true(allowed(o, "https://app.example.com"));
	assert_true(allowed(o, "HTTPS://APP.Example.COM")); /* case-insensitive */
	assert_false(allowed(o, "http://app.example.com")); /* scheme counts */
	assert_false(allowed(o, "https://app.example.com:8443"));
	assert_false(allowed(o, "https://app.example.com.evil.net"));
	assert_true(allowed(o, "https://a.example.org"));
	assert_true(allowed(o, "https://a.b-c.example.org"));
	assert_false(allowed(o, "https://example.org"));    /* '*' takes one or more */
	assert_false(allowed(o, "https://.example.org.x")); /* suffix must end it */
	assert_false(allowed(o, "https://evil.com/.example.org"));
	assert_false(allowed(o, "https://evil.com:1.example.org"));
	assert_false(allowed(o, "https://evilexample.org"));
	assert_true(allowed(o, "null"));
	assert_false(allowed(o, ""));
	origins_free(o);
}

static void test_origins_any_and_errors(void **state)
{
	const char *err;
	assert_null(origins_new("", &err));
	assert_null(err);
	assert_null(origins_new("   ", &err));
	assert_null(err);
	assert_true(origins_allowed(NULL, "https://x", 9));
	struct origins *o = origins_new("*", &err);
	assert_non_null(o);
	assert_true(allowed(o, "https://anything.example"));
	origins_free(o);
	assert_null(origins_new("https://a.com,,https://b.com", &err));
	assert_non_null(err);
	assert_null(origins_new("https://a.com,", &err));
	assert_non_null(err);
	assert_null(origins_new("https://a b.com", &err));
	assert_non_null(err);
	/* Pathological patterns stay linear enough and answer correctly. */
	o = origins_new("https://*a*a*a*a*a*b", &err);
	assert_non_null(o);
	assert_false(allowed(o, "https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
	assert_true(allowed(o, "https://aaaaaaaaaaaaab"));
	origins_free(o);
}

static void test_rate_burst_then_refill(void **state)
{
	struct rate_cfg cfg = {.per_min = 60, .burst = 3, .strikes = 4}; /* one a second */
	struct rate r = {0};
	uint32_t retry = 0, t = 1000;
	for (int i = 0; i < 3; i++)
		assert_int_equal(rate_take(&r, &cfg, t, &retry), RATE_OK);
	assert_int_equal(rate_take(&r, &cfg, t, &retry), RATE_REFUSE);
	assert_int_equal(retry, 1000);
	assert_int_equal(rate_take(&r, &cfg, t + 400, &retry), RATE_REFUSE);
	assert_int_equal(retry, 600);
	assert_int_equal(rate_take(&r, &cfg, t + 1000, &retry), RATE_OK);
	/* An accepted message clears the strikes; four refusals in a row close. */
	assert_int_equal(rate_take(&r, &cfg, t + 1000, &retry), RATE_REFUSE);
	assert_int_equal(rate_take(&r, &cfg, t + 1000, &retry), RATE_REFUSE);
	assert_int_equal(rate_take(&r, &cfg, t + 1000, &retry), RATE_REFUSE);
	assert_int_equal(rate_take(&r, &cfg, t + 1000, &retry), RATE_ABUSIVE);
	/* A long quiet spell refills to the burst, not beyond. */
	t += 3600 * 1000;
	for (int i = 0; i < 3; i++)
		assert_int_equal(rate_take(&r, &cfg, t, &retry), RATE_OK);
	assert_int_equal(rate_take(&r, &cfg, t, &retry), RATE_REFUSE);
}

static void test_rate_off_and_clock_wrap(void **state)
{
	struct rate_cfg off = {.per_min = 0, .burst = 1};
	struct rate r = {0};
	uint32_t retry;
	for (int i = 0; i < 1000; i++)
		assert_int_equal(rate_take(&r, &off, 0, &retry), RATE_OK);
	struct rate_cfg cfg = {.per_min = 6000, .burst = 1, .strikes = 0}; /* 100/s */
	struct rate w = {0};
	uint32_t t = UINT32_MAX - 5;
	assert_int_equal(rate_take(&w, &cfg, t, &retry), RATE_OK);
	assert_int_equal(rate_take(&w, &cfg, t, &retry), RATE_REFUSE);
	assert_int_equal(retry, 10);
	assert_int_equal(rate_take(&w, &cfg, t + 10, &retry), RATE_OK); /* wrapped */
	for (int i = 0; i < 100; i++) /* strikes 0: never abusive */
		assert_int_equal(rate_take(&w, &cfg, t + 10, &retry), RATE_REFUSE);
}

static void test_ipcount(void **state)
{
	struct ipcount *t = ipcount_new(42);
	assert_non_null(t);
	assert_int_equal(ipcount_get(t, "127.0.0.1"), 0);
	struct ip_slot *a = ipcount_acquire(t, "127.0.0.1");
	struct ip_slot *b = ipcount_acquire(t, "127.0.0.1");
	struct ip_slot *c = ipcount_acquire(t, "::1");
	assert_ptr_equal(a, b);
	assert_int_equal(ipcount_get(t, "127.0.0.1"), 2);
	assert_int_equal(ipcount_get(t, "::1"), 1);
	assert_int_equal(ipcount_addresses(t), 2);
	ipcount_release(t, a);
	assert_int_equal(ipcount_get(t, "127.0.0.1"), 1);
	ipcount_release(t, b);
	ipcount_release(t, c);
	assert_int_equal(ipcount_addresses(t), 0);
	ipcount_release(t, NULL);
	ipcount_free(t);
}

static void check_key(const char *ip, const char *want)
{
	char out[EDGE_IP_KEY_MAX];
	edge_ip_key(ip, out);
	assert_string_equal(out, want);
}

static void test_ip_key(void **state)
{
	check_key("127.0.0.1", "127.0.0.1");
	check_key("::ffff:10.1.2.3", "10.1.2.3");
	check_key("::FFFF:10.1.2.3", "10.1.2.3");
	check_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64");
	check_key("2001:db8:1:2::1", "2001:db8:1:2::/64");
	check_key("::1", "::/64");
	check_key("", "");
	check_key("not-an-address", "not-an-address");
}

static int shape(const char *s, uint32_t depth, uint32_t elems)
{
	const char *why = NULL;
	int rc = edge_json_shape(s, strlen(s), depth, elems, &why);
	assert_true(rc == 0 ? why == NULL : why != NULL);
	return rc;
}

static void test_json_shape(void **state)
{
	assert_int_equal(shape("{\"type\":\"ping\"}", 1, 1), 0);
	assert_int_equal(shape("{\"type\":\"ping\",\"id\":1}", 1, 1), -1);
	assert_int_equal(shape("{\"type\":\"ping\",\"id\":1}", 1, 2), 0);
	assert_int_equal(shape("{\"a\":{\"b\":[1,2]}}", 3, 4), 0);
	assert_int_equal(shape("{\"a\":{\"b\":[1,2]}}", 2, 4), -1);
	assert_int_equal(shape("{\"a\":{\"b\":[1,2]}}", 3, 3), -1);
	assert_int_equal(shape("[[[[]]]]", 4, 10), 0);
	assert_int_equal(shape("[[[[]]]]", 3, 10), -1);
	assert_int_equal(shape("[]", 1, 0), 0);
	assert_int_equal(shape("{}", 1, 0), 0);
	/* Brackets and commas inside strings (escaped quotes too) do not count. */
	assert_int_equal(shape("{\"a\":\"[[[[,,,,\\\"{{{{\"}", 1, 1), 0);
	/* Escapes: an even run of backslashes before a quote ends the string. */
	assert_int_equal(shape("[\"a\\\\\",1,2]", 1, 3), 0); /* ["a\\",1,2]: 3 */
	assert_int_equal(shape("[\"a\\\\\",1,2]", 1, 2), -1);
	assert_int_equal(shape("[\"a\\\",1,2\"]", 1, 1), 0); /* ["a\",1,2"]: 1 */
	assert_int_equal(shape("[\"\\\\\\\"[[[\"]", 1, 1), 0);
	/* Unbalanced or truncated text is the parser's business. */
	assert_int_equal(shape("]]]]}}}", 1, 1), 0);
	assert_int_equal(shape("{\"a\":\"unterminated", 1, 1), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_origins_exact_and_wildcard),
	        cmocka_unit_test(test_origins_any_and_errors),
	        cmocka_unit_test(test_rate_burst_then_refill),
	        cmocka_unit_test(test_rate_off_and_clock_wrap),
	        cmocka_unit_test(test_ipcount),
	        cmocka_unit_test(test_ip_key),
	        cmocka_unit_test(test_json_shape),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
