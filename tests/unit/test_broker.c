/* Unit tests of the pure parts of the Redis broker (broker_url.c): the
 * LIVEHUB_REDIS_URL parser, the channel message format and the event frame
 * read back from a stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "broker.h"
#include "livehub.h"

static struct broker_url parse_ok(const char *s)
{
	struct broker_url u;
	const char *why = NULL;
	int rc = broker_url_parse(s, &u, &why);
	if (rc)
		fail_msg("%s: %s", s, why);
	return u;
}

static void parse_bad(const char *s, const char *want)
{
	struct broker_url u;
	const char *why = NULL;
	assert_int_equal(broker_url_parse(s, &u, &why), LH_EINVAL);
	assert_non_null(why);
	if (want && !strstr(why, want))
		fail_msg("%s: \"%s\" does not say \"%s\"", s, why, want);
}

static void test_url_forms(void **state)
{
	struct broker_url u = parse_ok("redis://localhost");
	assert_string_equal(u.host, "localhost");
	assert_int_equal(u.port, 6379);
	assert_string_equal(u.password, "");
	assert_int_equal(u.db, 0);
	assert_false(u.unix_socket);

	u = parse_ok("redis://10.0.0.5:6380/3");
	assert_string_equal(u.host, "10.0.0.5");
	assert_int_equal(u.port, 6380);
	assert_int_equal(u.db, 3);

	u = parse_ok("redis://:s3cret@redis.internal:7000");
	assert_string_equal(u.user, "");
	assert_string_equal(u.password, "s3cret");
	assert_string_equal(u.host, "redis.internal");
	assert_int_equal(u.port, 7000);

	u = parse_ok("redis://app:p%40ss%3Aw@h/");
	assert_string_equal(u.user, "app");
	assert_string_equal(u.password, "p@ss:w");
	assert_int_equal(u.db, 0);

	u = parse_ok("redis://pw@h"); /* redis-cli's form: the password alone */
	assert_string_equal(u.password, "pw");

	u = parse_ok("redis://u:a@b@h:1"); /* the last '@' ends the user info */
	assert_string_equal(u.password, "a@b");
	assert_string_equal(u.host, "h");

	u = parse_ok("redis://[::1]:6390/2");
	assert_string_equal(u.host, "::1");
	assert_int_equal(u.port, 6390);
	assert_int_equal(u.db, 2);

	u = parse_ok("unix:///run/redis/redis.sock");
	assert_true(u.unix_socket);
	assert_string_equal(u.host, "/run/redis/redis.sock");
}

static void test_url_refusals(void **state)
{
	parse_bad("", "redis://");
	parse_bad("http://h", "redis://");
	parse_bad("redis://", "no host");
	parse_bad("redis://:6379", "no host");
	parse_bad("redis://h:0", "port");
	parse_bad("redis://h:65536", "port");
	parse_bad("redis://h:12x", "port");
	parse_bad("redis://h/x", "database");
	parse_bad("redis://h/-1", "database");
	parse_bad("redis://[::1", "unclosed");
	parse_bad("redis://[::1]x", "junk");
	parse_bad("redis://h h", "character");
	parse_bad("redis://u:@h", "needs a password");
	parse_bad("redis://:p%4@h", "password");
	parse_bad("redis://:p%00@h", "password");
	parse_bad("unix://relative", "absolute");
	parse_bad("unix://", "absolute");
	char longpath[300] = "unix:///";
	memset(longpath + 8, 'a', 200);
	longpath[208] = '\0';
	parse_bad(longpath, "too long");
	char longhost[400] = "redis://";
	memset(longhost + 8, 'h', 300);
	longhost[308] = '\0';
	parse_bad(longhost, "too long");
}

static void test_messages(void **state)
{
	static const char ev[] = "E 42 0123456789abcdef 1f node-1\n{\"type\":\"x\"}";
	struct broker_msg m;
	assert_int_equal(broker_msg_parse(ev, sizeof(ev) - 1, &m), 0);
	assert_int_equal(m.kind, 'E');
	assert_int_equal(m.offset, 42);
	assert_string_equal(m.epoch, "0123456789abcdef");
	assert_int_equal(m.conflate_key, 0x1f);
	assert_string_equal(m.node, "node-1");
	assert_int_equal(m.frame_len, strlen("{\"type\":\"x\"}"));
	assert_memory_equal(m.frame, "{\"type\":\"x\"}", m.frame_len);

	static const char raw[] = "R n2\n{\"a\":1}\n";
	assert_int_equal(broker_msg_parse(raw, sizeof(raw) - 1, &m), 0);
	assert_int_equal(m.kind, 'R');
	assert_string_equal(m.node, "n2");
	assert_int_equal(m.frame_len, 8); /* the frame may hold newlines */

	static const char *bad[] = {
	        "",
	        "E",
	        "X 1 0123456789abcdef 0 n\n{}",
	        "E 0 0123456789abcdef 0 n\n{}",  /* offsets start at 1 */
	        "E 1 0123456789abcde 0 n\n{}",   /* short epoch */
	        "E 1 0123456789abcdeg 0 n\n{}",  /* not hex */
	        "E -1 0123456789abcdef 0 n\n{}", /* negative */
	        "E 1 0123456789abcdef 0 n\n",    /* no frame */
	        "E 1 0123456789abcdef 0 n {}",   /* no newline */
	        "R n",
	        "R \n{}",
	        "E 99999999999999999999999 0123456789abcdef 0 n\n{}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (broker_msg_parse(bad[i], strlen(bad[i]), &m) == 0)
			fail_msg("accepted %s", bad[i]);
}

static void test_frame_parts(void **state)
{
	static const char f[] = "{\"type\":\"job:progress\",\"channel\":\"job:7\",\"offset\":12,"
	                        "\"epoch\":\"0123456789abcdef\",\"ts\":1700000000123,"
	                        "\"data\":{\"ts\":1,\"x\":\"}\"}}";
	struct broker_frame bf;
	assert_int_equal(broker_frame_parts(f, sizeof(f) - 1, &bf), 0);
	assert_int_equal(bf.type_len, strlen("job:progress"));
	assert_memory_equal(bf.type, "job:progress", bf.type_len);
	assert_int_equal(bf.offset, 12);
	assert_int_equal(bf.ts_ms, 1700000000123LL);
	assert_int_equal(bf.data_len, strlen("{\"ts\":1,\"x\":\"}\"}"));
	assert_memory_equal(bf.data, "{\"ts\":1,\"x\":\"}\"}", bf.data_len);
	static const char *bad[] = {"", "{}", "{\"type\":\"x\"}",
	                            "{\"type\":\"x\",\"offset\":1,\"ts\":2}",
	                            "{\"type\":\"x\",\"offset\":,\"ts\":2,\"data\":{}}"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (broker_frame_parts(bad[i], strlen(bad[i]), &bf) == 0)
			fail_msg("accepted %s", bad[i]);
}

static void test_epochs(void **state)
{
	assert_true(broker_epoch_ok("0123456789abcdef", 16));
	assert_true(broker_epoch_ok("0123456789ABCDEF", 16));
	assert_false(broker_epoch_ok("0123456789abcde", 15));
	assert_false(broker_epoch_ok("0123456789abcdef0", 17));
	assert_false(broker_epoch_ok("0123456789abcdeg", 16));
	assert_false(broker_epoch_ok("0123456789abc\"}x", 16));
	assert_false(broker_epoch_ok(
	        "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 16));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_url_forms), cmocka_unit_test(test_url_refusals),
	        cmocka_unit_test(test_messages),  cmocka_unit_test(test_frame_parts),
	        cmocka_unit_test(test_epochs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
