/* Unit tests for ws_protocol: exact reply bytes and every parse error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "livehub.h"
#include "ws_protocol.h"

/* Asserts that f holds exactly the text want, then drops it. */
static void assert_frame(struct frame *f, const char *want)
{
	assert_non_null(f);
	assert_int_equal(f->refs, 1);
	assert_int_equal(f->len, strlen(want));
	assert_memory_equal(frame_payload(f), want, f->len);
	frame_unref(f);
}

static int parse(const char *text, struct wsp_request *req, struct wsp_error *err)
{
	return wsp_parse(text, strlen(text), req, err);
}

/* Parses text, expecting failure with code; returns the error message. */
static const char *parse_err(const char *text, enum wsp_code code, struct wsp_request *req)
{
	struct wsp_error err = {0};
	assert_int_equal(parse(text, req, &err), -1);
	assert_string_equal(wsp_code_name(err.code), wsp_code_name(code));
	assert_non_null(err.message);
	return err.message;
}

/* ------------------------------------------------------------------------ */

static void test_connected(void **state)
{
	assert_frame(wsp_connected("c5f1e2a3-1", "acme", "alice", 30, 90),
	             "{\"type\":\"connected\",\"clientId\":\"c5f1e2a3-1\",\"version\":1,"
	             "\"server\":\"livehub/" LH_VERSION "\",\"tenant\":\"acme\",\"user\":\"alice\","
	             "\"heartbeat\":{\"pingInterval\":30,\"pingTimeout\":90}}");
}

static void test_subscribe_channel(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(
	        parse("{\"type\":\"subscribe\",\"channel\":\"job:42\",\"id\":1}", &req, &err), 0);
	assert_int_equal(req.type, WSP_SUBSCRIBE);
	assert_string_equal(req.channel, "job:42");
	assert_int_equal(req.channel_len, 6);
	assert_false(req.project_alias);
	assert_frame(wsp_subscribed(&req),
	             "{\"type\":\"subscribed\",\"channel\":\"job:42\",\"id\":1}");
	assert_frame(wsp_reply(&req), "{\"type\":\"subscribed\",\"channel\":\"job:42\",\"id\":1}");
}

static void test_unsubscribe_channel(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(
	        parse("{\"id\":2,\"channel\":\"job:42\",\"type\":\"unsubscribe\"}", &req, &err), 0);
	assert_int_equal(req.type, WSP_UNSUBSCRIBE);
	assert_frame(wsp_unsubscribed(&req),
	             "{\"type\":\"unsubscribed\",\"channel\":\"job:42\",\"id\":2}");
	assert_frame(wsp_reply(&req),
	             "{\"type\":\"unsubscribed\",\"channel\":\"job:42\",\"id\":2}");
}

static void test_project_alias(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(parse("{\"type\":\"subscribe\",\"projectId\":\"p1\"}", &req, &err), 0);
	assert_true(req.project_alias);
	assert_string_equal(req.channel, "project:p1");
	assert_frame(wsp_subscribed(&req),
	             "{\"type\":\"subscribed\",\"channel\":\"project:p1\",\"projectId\":\"p1\"}");
	assert_int_equal(
	        parse("{\"type\":\"unsubscribe\",\"projectId\":\"p1\",\"id\":\"x\"}", &req, &err),
	        0);
	assert_frame(wsp_unsubscribed(&req),
	             "{\"type\":\"unsubscribed\",\"channel\":\"project:p1\","
	             "\"projectId\":\"p1\",\"id\":\"x\"}");
}

static void test_project_alias_errors(void **state)
{
	struct wsp_request req;
	parse_err("{\"type\":\"subscribe\",\"projectId\":7}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"subscribe\",\"projectId\":\"\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"subscribe\",\"projectId\":\"a b\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"subscribe\",\"projectId\":\"$x\"}", WSP_BAD_REQUEST, &req);
	const char *m = parse_err("{\"type\":\"subscribe\",\"projectId\":\"p\",\"channel\":\"c\"}",
	                          WSP_BAD_REQUEST, &req);
	assert_non_null(strstr(m, "projectId"));
	/* 152 bytes fit ("project:" + 152 = 160), 153 do not. */
	char buf[400], id[200];
	memset(id, 'p', 152);
	id[152] = '\0';
	snprintf(buf, sizeof(buf), "{\"type\":\"subscribe\",\"projectId\":\"%s\"}", id);
	struct wsp_error err;
	assert_int_equal(parse(buf, &req, &err), 0);
	assert_int_equal(req.channel_len, 160);
	memset(id, 'p', 153);
	id[153] = '\0';
	snprintf(buf, sizeof(buf), "{\"type\":\"subscribe\",\"projectId\":\"%s\"}", id);
	parse_err(buf, WSP_BAD_REQUEST, &req);
}

static void test_ping_pong(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(parse("{\"type\":\"ping\",\"id\":3}", &req, &err), 0);
	assert_int_equal(req.type, WSP_PING);
	assert_frame(wsp_pong(&req), "{\"type\":\"pong\",\"id\":3}");
	assert_int_equal(parse("{\"type\":\"ping\"}", &req, &err), 0);
	assert_frame(wsp_reply(&req), "{\"type\":\"pong\"}");
	/* Unknown fields are ignored, for clients newer than the hub. */
	assert_int_equal(parse("{\"type\":\"ping\",\"extra\":[1,{}]}", &req, &err), 0);
}

static void test_error_frames(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(parse("{\"type\":\"ping\",\"id\":1}", &req, &err), 0);
	assert_frame(wsp_error(WSP_BAD_REQUEST, "subscribe needs a string \"channel\"", true, &req),
	             "{\"type\":\"error\",\"code\":\"BAD_REQUEST\",\"message\":"
	             "\"subscribe needs a string \\\"channel\\\"\",\"recoverable\":true,\"id\":1}");
	assert_frame(wsp_error(WSP_SLOW_CONSUMER, "too slow", false, NULL),
	             "{\"type\":\"error\",\"code\":\"SLOW_CONSUMER\",\"message\":\"too slow\","
	             "\"recoverable\":false}");
	static const char *const names[] = {
	        "AUTH_FAILED",           "TOKEN_EXPIRED",  "PERMISSION_DENIED",
	        "CHANNEL_ACCESS_DENIED", "RATE_LIMITED",   "PROTOCOL_ERROR",
	        "BAD_REQUEST",           "LIMIT_EXCEEDED", "TOO_MANY_CONNECTIONS",
	        "SLOW_CONSUMER",         "SERVER_ERROR",
	};
	for (int c = WSP_AUTH_FAILED; c <= WSP_SERVER_ERROR; c++)
		assert_string_equal(wsp_code_name((enum wsp_code)c), names[c]);
}

static void test_id_string_echo(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	/* Quotes, a backslash, a newline, and é (escaped and raw) come back as
	 * the same JSON string value. */
	assert_int_equal(
	        parse("{\"type\":\"ping\",\"id\":\"a\\\"b\\\\c\\nd\\u00e9\xc3\xa9\"}", &req, &err),
	        0);
	assert_frame(wsp_pong(&req),
	             "{\"type\":\"pong\",\"id\":\"a\\\"b\\\\c\\nd\xc3\xa9\xc3\xa9\"}");
	/* An astral character given as a surrogate pair. */
	assert_int_equal(parse("{\"type\":\"ping\",\"id\":\"\\ud83d\\ude00\"}", &req, &err), 0);
	assert_frame(wsp_pong(&req), "{\"type\":\"pong\",\"id\":\"\xf0\x9f\x98\x80\"}");
	/* Empty string is a valid id. */
	assert_int_equal(parse("{\"type\":\"ping\",\"id\":\"\"}", &req, &err), 0);
	assert_frame(wsp_pong(&req), "{\"type\":\"pong\",\"id\":\"\"}");
}

static void test_id_string_length(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	char id[800], buf[400];
	/* 128 control bytes: the longest id, escaped to the longest JSON text. */
	id[0] = '\0';
	for (int i = 0; i < 128; i++)
		strcat(id, "\\u0001");
	char big[1200];
	snprintf(big, sizeof(big), "{\"type\":\"ping\",\"id\":\"%s\"}", id);
	assert_int_equal(parse(big, &req, &err), 0);
	assert_int_equal(req.id_len, WSP_ID_JSON_MAX);
	struct frame *f = wsp_pong(&req);
	assert_non_null(f);
	frame_unref(f);
	memset(id, 'x', 129);
	id[129] = '\0';
	snprintf(buf, sizeof(buf), "{\"type\":\"ping\",\"id\":\"%s\"}", id);
	const char *m = parse_err(buf, WSP_BAD_REQUEST, &req);
	assert_non_null(strstr(m, "\"id\""));
	assert_int_equal(req.id_len, 0);
}

static void test_id_integer_echo(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(parse("{\"type\":\"ping\",\"id\":9223372036854775807}", &req, &err), 0);
	assert_frame(wsp_pong(&req), "{\"type\":\"pong\",\"id\":9223372036854775807}");
	assert_int_equal(parse("{\"type\":\"ping\",\"id\":-9223372036854775808}", &req, &err), 0);
	assert_frame(wsp_pong(&req), "{\"type\":\"pong\",\"id\":-9223372036854775808}");
	/* Beyond JavaScript's 2^53 but exact here. */
	assert_int_equal(parse("{\"type\":\"ping\",\"id\":9007199254740993}", &req, &err), 0);
	assert_frame(wsp_pong(&req), "{\"type\":\"pong\",\"id\":9007199254740993}");
	assert_int_equal(parse("{\"type\":\"ping\",\"id\":0}", &req, &err), 0);
	assert_frame(wsp_pong(&req), "{\"type\":\"pong\",\"id\":0}");
}

static void test_id_bad_types(void **state)
{
	struct wsp_request req;
	parse_err("{\"type\":\"ping\",\"id\":1.5}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"ping\",\"id\":1e3}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"ping\",\"id\":true}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"ping\",\"id\":null}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"ping\",\"id\":[1]}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"ping\",\"id\":{}}", WSP_BAD_REQUEST, &req);
	/* Past 64 bits: valid JSON, refused as a bad id, not as bad JSON. */
	parse_err("{\"type\":\"ping\",\"id\":9223372036854775808}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"ping\",\"id\":123456789012345678901234567890}", WSP_BAD_REQUEST,
	          &req);
	assert_int_equal(req.id_len, 0);
}

static void test_protocol_errors(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	parse_err("", WSP_PROTOCOL_ERROR, &req);
	parse_err("not json", WSP_PROTOCOL_ERROR, &req);
	parse_err("{\"type\":\"ping\"", WSP_PROTOCOL_ERROR, &req);
	parse_err("{\"type\":\"ping\"} x", WSP_PROTOCOL_ERROR, &req);
	parse_err("[\"ping\"]", WSP_PROTOCOL_ERROR, &req);
	parse_err("\"ping\"", WSP_PROTOCOL_ERROR, &req);
	parse_err("42", WSP_PROTOCOL_ERROR, &req);
	parse_err("null", WSP_PROTOCOL_ERROR, &req);
	parse_err("{}", WSP_PROTOCOL_ERROR, &req);
	parse_err("{\"type\":1}", WSP_PROTOCOL_ERROR, &req);
	parse_err("{\"type\":null}", WSP_PROTOCOL_ERROR, &req);
	parse_err("{\"type\":\"PING\"}", WSP_PROTOCOL_ERROR, &req);
	parse_err("{\"type\":\"emit\",\"channel\":\"x\"}", WSP_PROTOCOL_ERROR, &req);
	parse_err("{\"type\":\"ping\",\"type\":\"ping\"}", WSP_PROTOCOL_ERROR, &req);
	/* Invalid UTF-8 and an embedded NUL byte. */
	parse_err("{\"type\":\"ping\",\"x\":\"\xff\"}", WSP_PROTOCOL_ERROR, &req);
	assert_int_equal(wsp_parse("{\"type\":\"ping\"}\0", 16, &req, &err), -1);
	assert_int_equal(err.code, WSP_PROTOCOL_ERROR);
	/* An unknown type still echoes a valid id. */
	parse_err("{\"type\":\"nope\",\"id\":\"r1\"}", WSP_PROTOCOL_ERROR, &req);
	assert_string_equal(req.id, "\"r1\"");
	assert_frame(wsp_error(WSP_PROTOCOL_ERROR, "unknown \"type\"", true, &req),
	             "{\"type\":\"error\",\"code\":\"PROTOCOL_ERROR\",\"message\":"
	             "\"unknown \\\"type\\\"\",\"recoverable\":true,\"id\":\"r1\"}");
}

static void test_channel_errors(void **state)
{
	struct wsp_request req;
	const char *m = parse_err("{\"type\":\"subscribe\",\"id\":5}", WSP_BAD_REQUEST, &req);
	assert_string_equal(m, "subscribe needs a string \"channel\"");
	assert_string_equal(req.id, "5");
	m = parse_err("{\"type\":\"unsubscribe\",\"channel\":7}", WSP_BAD_REQUEST, &req);
	assert_string_equal(m, "unsubscribe needs a string \"channel\"");
	m = parse_err("{\"type\":\"subscribe\",\"channel\":\"\"}", WSP_BAD_REQUEST, &req);
	assert_non_null(strstr(m, "\"channel\""));
	parse_err("{\"type\":\"subscribe\",\"channel\":\"a b\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"subscribe\",\"channel\":\"job\\\"42\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"subscribe\",\"channel\":\"caf\xc3\xa9\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"subscribe\",\"channel\":\"job$1\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"subscribe\",\"channel\":null}", WSP_BAD_REQUEST, &req);
}

static void test_reserved_channel(void **state)
{
	struct wsp_request req;
	parse_err("{\"type\":\"subscribe\",\"channel\":\"$tenant\"}", WSP_CHANNEL_ACCESS_DENIED,
	          &req);
	parse_err("{\"type\":\"subscribe\",\"channel\":\"$user:bob\"}", WSP_CHANNEL_ACCESS_DENIED,
	          &req);
	parse_err("{\"type\":\"unsubscribe\",\"channel\":\"$\"}", WSP_CHANNEL_ACCESS_DENIED, &req);
}

/* subscribe with since: parsed, validated, and the reply carries the
 * position and recovered; implicit channels only with since. */
static void test_subscribe_since(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(parse("{\"type\":\"subscribe\",\"channel\":\"job:42\",\"since\":{"
	                       "\"offset\":7,\"epoch\":\"9f2c41d07a3b5e68\"},\"id\":1}",
	                       &req, &err),
	                 0);
	assert_true(req.has_since);
	assert_int_equal(req.since_offset, 7);
	assert_string_equal(req.since_epoch, "9f2c41d07a3b5e68");
	assert_frame(wsp_subscribed_at(&req, 9, "9f2c41d07a3b5e68", true),
	             "{\"type\":\"subscribed\",\"channel\":\"job:42\",\"offset\":9,"
	             "\"epoch\":\"9f2c41d07a3b5e68\",\"recovered\":true,\"id\":1}");
	assert_int_equal(parse("{\"type\":\"subscribe\",\"projectId\":\"p1\"}", &req, &err), 0);
	assert_false(req.has_since);
	assert_frame(wsp_subscribed_at(&req, 0, "00000000000000aa", false),
	             "{\"type\":\"subscribed\",\"channel\":\"project:p1\",\"projectId\":\"p1\","
	             "\"offset\":0,\"epoch\":\"00000000000000aa\"}");
	/* Implicit channels are named for recovery only. */
	for (int i = 0; i < 3; i++) {
		static const char *names[] = {"$tenant", "$user", "$user:alice"};
		char text[200];
		snprintf(text, sizeof text,
		         "{\"type\":\"subscribe\",\"channel\":\"%s\",\"since\":{\"offset\":0,"
		         "\"epoch\":\"e\"}}",
		         names[i]);
		assert_int_equal(parse(text, &req, &err), 0);
		assert_string_equal(req.channel, names[i]);
	}
	parse_err("{\"type\":\"subscribe\",\"channel\":\"$other\",\"since\":{\"offset\":0,"
	          "\"epoch\":\"e\"}}",
	          WSP_CHANNEL_ACCESS_DENIED, &req);
	parse_err("{\"type\":\"unsubscribe\",\"channel\":\"$tenant\",\"since\":{\"offset\":0,"
	          "\"epoch\":\"e\"}}",
	          WSP_CHANNEL_ACCESS_DENIED, &req);
	static const char *bad[] = {
	        "5",
	        "{\"offset\":-1,\"epoch\":\"e\"}",
	        "{\"offset\":1.5,\"epoch\":\"e\"}",
	        "{\"epoch\":\"e\"}",
	        "{\"offset\":1}",
	        "{\"offset\":1,\"epoch\":7}",
	        "{\"offset\":1,\"epoch\":\"123456789012345678901234567890123\"}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char text[200];
		snprintf(text, sizeof text,
		         "{\"type\":\"subscribe\",\"channel\":\"c\",\"since\":%s,\"id\":3}",
		         bad[i]);
		parse_err(text, WSP_BAD_REQUEST, &req);
		assert_string_equal(req.id, "3");
	}
}

static void test_channel_length(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	char name[200], buf[400];
	memset(name, 'c', 160);
	name[160] = '\0';
	snprintf(buf, sizeof(buf), "{\"type\":\"subscribe\",\"channel\":\"%s\"}", name);
	assert_int_equal(parse(buf, &req, &err), 0);
	assert_int_equal(req.channel_len, 160);
	assert_string_equal(req.channel, name);
	memset(name, 'c', 161);
	name[161] = '\0';
	snprintf(buf, sizeof(buf), "{\"type\":\"subscribe\",\"channel\":\"%s\"}", name);
	parse_err(buf, WSP_BAD_REQUEST, &req);
	/* Every allowed punctuation character. */
	assert_int_equal(
	        parse("{\"type\":\"subscribe\",\"channel\":\"a_b.c:d@e+f=g/h-i\"}", &req, &err), 0);
}

/* Reads a frame's payload as a C string (frames are small here). */
static const char *payload_str(struct frame *f)
{
	static char buf[512];
	assert_true(f->len < sizeof buf);
	memcpy(buf, frame_payload(f), f->len);
	buf[f->len] = '\0';
	return buf;
}

static void test_auth_refresh(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(parse("{\"type\":\"auth\",\"token\":\"a.b.c\",\"id\":9}", &req, &err), 0);
	assert_int_equal(req.type, WSP_AUTH);
	assert_string_equal(req.token, "a.b.c");
	assert_string_equal(req.id, "9");
	assert_null(wsp_reply(&req));
	assert_int_equal(
	        parse("{\"type\":\"refresh\",\"token\":\"x.y.z\",\"id\":\"r\"}", &req, &err), 0);
	assert_int_equal(req.type, WSP_REFRESH);
	assert_string_equal(req.token, "x.y.z");
	struct frame *f = wsp_refreshed(&req, 1763719200);
	assert_string_equal(payload_str(f),
	                    "{\"type\":\"refreshed\",\"exp\":1763719200,\"id\":\"r\"}");
	frame_unref(f);
	f = wsp_connected_req("c1", "acme", "alice", 30, 90, &req);
	assert_string_equal(payload_str(f),
	                    "{\"type\":\"connected\",\"clientId\":\"c1\",\"version\":1,"
	                    "\"server\":\"livehub/" LH_VERSION
	                    "\",\"tenant\":\"acme\",\"user\":\"alice\","
	                    "\"heartbeat\":{\"pingInterval\":30,\"pingTimeout\":90},\"id\":\"r\"}");
	frame_unref(f);
	/* A token that is missing, empty, not a string or too long. */
	parse_err("{\"type\":\"auth\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"auth\",\"token\":\"\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"refresh\",\"token\":7,\"id\":4}", WSP_BAD_REQUEST, &req);
	assert_string_equal(req.id, "4");
	/* jansson refuses \\u0000 in strings: not JSON the hub takes. */
	parse_err("{\"type\":\"auth\",\"token\":\"a\\u0000b\"}", WSP_PROTOCOL_ERROR, &req);
	static char big[WSP_TOKEN_MAX + 64];
	int n = snprintf(big, sizeof big, "{\"type\":\"auth\",\"token\":\"");
	memset(big + n, 'a', WSP_TOKEN_MAX + 1);
	strcpy(big + n + WSP_TOKEN_MAX + 1, "\"}");
	parse_err(big, WSP_BAD_REQUEST, &req);
}

static void test_presence_and_publish(void **state)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(
	        parse("{\"type\":\"presence\",\"channel\":\"board:1\",\"id\":2}", &req, &err), 0);
	assert_int_equal(req.type, WSP_PRESENCE);
	assert_string_equal(req.channel, "board:1");
	assert_null(wsp_reply(&req));
	/* "$tenant" is the one reserved name presence may ask about. */
	assert_int_equal(parse("{\"type\":\"presence\",\"channel\":\"$tenant\"}", &req, &err), 0);
	assert_string_equal(req.channel, "$tenant");
	parse_err("{\"type\":\"presence\",\"channel\":\"$user:bob\"}", WSP_CHANNEL_ACCESS_DENIED,
	          &req);
	parse_err("{\"type\":\"presence\"}", WSP_BAD_REQUEST, &req);

	/* publish: data is kept as compact JSON, in its order. */
	assert_int_equal(parse("{\"type\":\"publish\",\"channel\":\"board:1\",\"event\":\"typing\","
	                       "\"data\":{ \"b\" : 1,\n \"a\": \"x\\ny\" },\"id\":3}",
	                       &req, &err),
	                 0);
	assert_int_equal(req.type, WSP_PUBLISH);
	assert_string_equal(req.event, "typing");
	assert_string_equal(req.data, "{\"b\":1,\"a\":\"x\\ny\"}");
	assert_int_equal(req.data_len, strlen(req.data));
	assert_string_equal(req.id, "3");
	assert_int_equal(
	        parse("{\"type\":\"publish\",\"channel\":\"board:1\",\"event\":\"a.b:c-d\"}", &req,
	              &err),
	        0);
	assert_null(req.data);
	parse_err("{\"type\":\"publish\",\"channel\":\"board:1\"}", WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"publish\",\"channel\":\"board:1\",\"event\":\"a b\"}",
	          WSP_BAD_REQUEST, &req);
	parse_err("{\"type\":\"publish\",\"channel\":\"board:1\",\"event\":\"x\",\"data\":\"s\"}",
	          WSP_BAD_REQUEST, &req);
	assert_null(req.data);
	parse_err("{\"type\":\"publish\",\"channel\":\"$tenant\",\"event\":\"x\"}",
	          WSP_CHANNEL_ACCESS_DENIED, &req);
	char long_event[128];
	snprintf(long_event, sizeof(long_event),
	         "{\"type\":\"publish\",\"channel\":\"b\",\"event\":\"%058d\"}", 0);
	parse_err(long_event, WSP_BAD_REQUEST, &req);
	snprintf(long_event, sizeof(long_event),
	         "{\"type\":\"publish\",\"channel\":\"b\",\"event\":\"%057d\"}", 0);
	assert_int_equal(parse(long_event, &req, &err), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_connected),
	        cmocka_unit_test(test_subscribe_channel),
	        cmocka_unit_test(test_unsubscribe_channel),
	        cmocka_unit_test(test_project_alias),
	        cmocka_unit_test(test_project_alias_errors),
	        cmocka_unit_test(test_ping_pong),
	        cmocka_unit_test(test_error_frames),
	        cmocka_unit_test(test_id_string_echo),
	        cmocka_unit_test(test_id_string_length),
	        cmocka_unit_test(test_id_integer_echo),
	        cmocka_unit_test(test_id_bad_types),
	        cmocka_unit_test(test_protocol_errors),
	        cmocka_unit_test(test_channel_errors),
	        cmocka_unit_test(test_reserved_channel),
	        cmocka_unit_test(test_channel_length),
	        cmocka_unit_test(test_auth_refresh),
	        cmocka_unit_test(test_subscribe_since),
	        cmocka_unit_test(test_presence_and_publish),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
