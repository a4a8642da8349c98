/* Unit tests for pbjson: exact JSON text for each part of the proto3 JSON
 * mapping, checked to parse with jansson. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/field_mask.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "livehub.h"
#include "livehub/v1/events.pb-c.h"
#include "pbjson.h"
#include "pbjson_test.pb-c.h"
#include "utf8.h"

/* Writes m, and checks the result is want and parses as JSON. */
static void expect_json(const void *m, const char *want)
{
	struct strbuf sb = STRBUF_INIT;
	char path[128] = "unset";
	int rc = pbjson_write(&sb, m, path, sizeof(path));
	if (rc)
		print_error("rc %d at %s, partial %s\n", rc, path, sb_cstr(&sb));
	assert_int_equal(rc, 0);
	assert_string_equal(sb_cstr(&sb), want);
	assert_true(utf8_valid(sb.buf, sb.len));
	json_error_t jerr;
	json_t *j = json_loadb(sb.buf, sb.len, JSON_DECODE_ANY, &jerr);
	if (!j)
		print_error("jansson: %s\n", jerr.text);
	assert_non_null(j);
	json_decref(j);
	sb_free(&sb);
}

/* Writes m and checks it fails with want_rc naming want_path. */
static void expect_err(const void *m, int want_rc, const char *want_path)
{
	struct strbuf sb = STRBUF_INIT;
	char path[128] = "unset";
	int rc = pbjson_write(&sb, m, path, sizeof(path));
	assert_int_equal(rc, want_rc);
	assert_string_equal(path, want_path);
	sb_free(&sb);
}

/* ---------------------------------------------------------------------------
 * Names
 * ------------------------------------------------------------------------- */

static void test_camel(void **state)
{
	char out[64];
	assert_int_equal(pbjson_camel("job_id", out), 5);
	assert_string_equal(out, "jobId");
	pbjson_camel("foo_bar_baz", out);
	assert_string_equal(out, "fooBarBaz");
	pbjson_camel("a1_b2", out);
	assert_string_equal(out, "a1B2");
	pbjson_camel("x__y", out);
	assert_string_equal(out, "xY");
	pbjson_camel("trailing_", out);
	assert_string_equal(out, "trailing");
	pbjson_camel("_lead", out);
	assert_string_equal(out, "Lead");
	pbjson_camel("a_1", out);
	assert_string_equal(out, "a1");
	pbjson_camel("", out);
	assert_string_equal(out, "");
}

static void test_names_message(void **state)
{
	Lhtest__Names n = LHTEST__NAMES__INIT;
	n.foo_bar_baz = 1;
	n.a1_b2 = 2;
	n.x__y = 3;
	expect_json(&n, "{\"fooBarBaz\":1,\"a1B2\":2,\"xY\":3,\"trailing\":0,\"Lead\":0}");
}

static void test_empty(void **state)
{
	Lhtest__Empty e = LHTEST__EMPTY__INIT;
	expect_json(&e, "{}");
	Lhtest__Everything ev = LHTEST__EVERYTHING__INIT;
	expect_json(&ev, "{\"nested\":[]}");
	Google__Protobuf__Empty ge = GOOGLE__PROTOBUF__EMPTY__INIT;
	expect_json(&ge, "{}");
}

/* ---------------------------------------------------------------------------
 * Scalars
 * ------------------------------------------------------------------------- */

static void test_scalar_defaults(void **state)
{
	Lhtest__Scalars s = LHTEST__SCALARS__INIT;
	expect_json(&s, "{\"i32\":0,\"i64\":\"0\",\"u32\":0,\"u64\":\"0\",\"s32\":0,"
	                "\"s64\":\"0\",\"f32\":0,\"f64\":\"0\",\"sf32\":0,\"sf64\":\"0\","
	                "\"fl\":0,\"db\":0,\"bo\":false,\"st\":\"\",\"by\":\"\","
	                "\"color\":\"COLOR_UNSPECIFIED\"}");
	s.st = NULL; /* a NULL string reads as "" */
	expect_json(&s, "{\"i32\":0,\"i64\":\"0\",\"u32\":0,\"u64\":\"0\",\"s32\":0,"
	                "\"s64\":\"0\",\"f32\":0,\"f64\":\"0\",\"sf32\":0,\"sf64\":\"0\","
	                "\"fl\":0,\"db\":0,\"bo\":false,\"st\":\"\",\"by\":\"\","
	                "\"color\":\"COLOR_UNSPECIFIED\"}");
}

static void test_scalar_extremes(void **state)
{
	Lhtest__Scalars s = LHTEST__SCALARS__INIT;
	uint8_t bytes[] = {0x00, 0xff, 0xfe};
	s.i32 = INT32_MIN;
	s.i64 = INT64_MIN;
	s.u32 = UINT32_MAX;
	s.u64 = UINT64_MAX;
	s.s32 = INT32_MAX;
	s.s64 = INT64_MAX;
	s.f32 = 7;
	s.f64 = 9007199254740993ULL;
	s.sf32 = -1;
	s.sf64 = -9007199254740993LL;
	s.fl = 0.1f;
	s.db = 0.1;
	s.bo = 1;
	s.st = "h\xc3\xa9 \"q\" \\ \n\x01\x7f \xf0\x9f\x98\x80";
	s.by.data = bytes;
	s.by.len = sizeof(bytes);
	s.color = LHTEST__COLOR__COLOR_GREEN;
	expect_json(&s, "{\"i32\":-2147483648,\"i64\":\"-9223372036854775808\","
	                "\"u32\":4294967295,\"u64\":\"18446744073709551615\","
	                "\"s32\":2147483647,\"s64\":\"9223372036854775807\",\"f32\":7,"
	                "\"f64\":\"9007199254740993\",\"sf32\":-1,\"sf64\":\"-9007199254740993\","
	                "\"fl\":0.1,\"db\":0.1,\"bo\":true,"
	                "\"st\":\"h\xc3\xa9 \\\"q\\\" \\\\ \\n\\u0001\\u007f \xf0\x9f\x98\x80\","
	                "\"by\":\"AP/+\",\"color\":\"COLOR_GREEN\"}");
}

/* Writes one Scalars message with only db (and fl) set, returns "db":… */
static void expect_fp(double db, float fl, const char *want_db, const char *want_fl)
{
	Lhtest__Repeated r = LHTEST__REPEATED__INIT;
	char want[256];
	r.n_db = 1;
	r.db = &db;
	r.n_fl = 1;
	r.fl = &fl;
	snprintf(want, sizeof(want),
	         "{\"i32\":[],\"i64\":[],\"u32\":[],\"u64\":[],\"s32\":[],\"s64\":[],"
	         "\"f32\":[],\"f64\":[],\"sf32\":[],\"sf64\":[],\"fl\":[%s],\"db\":[%s],"
	         "\"bo\":[],\"st\":[],\"by\":[],\"color\":[],\"unpacked\":[],\"msgs\":[]}",
	         want_fl, want_db);
	expect_json(&r, want);
}

static void test_floating(void **state)
{
	expect_fp(0.0, 0.0f, "0", "0");
	expect_fp(-0.0, -0.0f, "-0", "-0");
	expect_fp(1.0, 1.0f, "1", "1");
	expect_fp(1.5, 1.5f, "1.5", "1.5");
	expect_fp(-2.25, -2.25f, "-2.25", "-2.25");
	expect_fp(123456789.0, 123456792.0f, "123456789", "1.2345679e+08");
	expect_fp(0.1 + 0.2, 3.4028235e38f, "0.30000000000000004", "3.4028235e+38");
	expect_fp(1e300, 1e-45f, "1e+300", "1.4013e-45");
	expect_fp(5e-324, 16777216.0f, "4.94065645841247e-324", "16777216");
	expect_fp(1e21, 0.3f, "1e+21", "0.3");
	expect_fp(9007199254740993.0, 1.0f / 3, "9007199254740992", "0.33333334");
	expect_fp(NAN, NAN, "\"NaN\"", "\"NaN\"");
	expect_fp(INFINITY, -INFINITY, "\"Infinity\"", "\"-Infinity\"");
	expect_fp(-INFINITY, INFINITY, "\"-Infinity\"", "\"Infinity\"");
}

static void test_enum_unknown(void **state)
{
	Lhtest__Choice c = LHTEST__CHOICE__INIT;
	c.pick_case = LHTEST__CHOICE__PICK_COLOR;
	c.color = 42;
	expect_json(&c, "{\"color\":42,\"after\":0}");
	c.color = -3;
	expect_json(&c, "{\"color\":-3,\"after\":0}");
	c.color = LHTEST__COLOR__COLOR_RED;
	expect_json(&c, "{\"color\":\"COLOR_RED\",\"after\":0}");
}

static void test_bytes_padding(void **state)
{
	Lhtest__Repeated r = LHTEST__REPEATED__INIT;
	ProtobufCBinaryData b[5] = {{0, NULL},
	                            {1, (uint8_t *)"a"},
	                            {2, (uint8_t *)"ab"},
	                            {3, (uint8_t *)"abc"},
	                            {4, (uint8_t *)"\xfb\xff\xbf\x00"}};
	r.n_by = 5;
	r.by = b;
	expect_json(&r, "{\"i32\":[],\"i64\":[],\"u32\":[],\"u64\":[],\"s32\":[],\"s64\":[],"
	                "\"f32\":[],\"f64\":[],\"sf32\":[],\"sf64\":[],\"fl\":[],\"db\":[],"
	                "\"bo\":[],\"st\":[],\"by\":[\"\",\"YQ==\",\"YWI=\",\"YWJj\",\"+/+/AA==\"],"
	                "\"color\":[],\"unpacked\":[],\"msgs\":[]}");
}

static void test_repeated(void **state)
{
	Lhtest__Repeated r = LHTEST__REPEATED__INIT;
	int32_t i32[] = {1, -2};
	int64_t i64[] = {INT64_MAX, -1};
	uint64_t u64[] = {0, UINT64_MAX};
	protobuf_c_boolean bo[] = {1, 0, 1};
	char *st[] = {"a", "", "\xe2\x82\xac"};
	Lhtest__Color color[] = {1, 2, 7};
	Lhtest__Scalars s = LHTEST__SCALARS__INIT;
	Lhtest__Scalars *msgs[] = {&s};
	s.i32 = 5;
	r.n_i32 = 2, r.i32 = i32;
	r.n_sf64 = 2, r.sf64 = i64;
	r.n_f64 = 2, r.f64 = u64;
	r.n_bo = 3, r.bo = bo;
	r.n_st = 3, r.st = st;
	r.n_color = 3, r.color = color;
	r.n_unpacked = 1, r.unpacked = i32;
	r.n_msgs = 1, r.msgs = msgs;
	expect_json(&r, "{\"i32\":[1,-2],\"i64\":[],\"u32\":[],\"u64\":[],\"s32\":[],\"s64\":[],"
	                "\"f32\":[],\"f64\":[\"0\",\"18446744073709551615\"],\"sf32\":[],"
	                "\"sf64\":[\"9223372036854775807\",\"-1\"],\"fl\":[],\"db\":[],"
	                "\"bo\":[true,false,true],\"st\":[\"a\",\"\",\"\xe2\x82\xac\"],\"by\":[],"
	                "\"color\":[\"COLOR_RED\",\"COLOR_GREEN\",7],\"unpacked\":[1],"
	                "\"msgs\":[{\"i32\":5,\"i64\":\"0\",\"u32\":0,\"u64\":\"0\",\"s32\":0,"
	                "\"s64\":\"0\",\"f32\":0,\"f64\":\"0\",\"sf32\":0,\"sf64\":\"0\","
	                "\"fl\":0,\"db\":0,\"bo\":false,\"st\":\"\",\"by\":\"\","
	                "\"color\":\"COLOR_UNSPECIFIED\"}]}");
}

/* ---------------------------------------------------------------------------
 * Messages, oneofs, maps
 * ------------------------------------------------------------------------- */

static void test_nested_and_oneof(void **state)
{
	Lhtest__Choice c = LHTEST__CHOICE__INIT;
	Lhtest__Inner in = LHTEST__INNER__INIT, in2 = LHTEST__INNER__INIT;
	expect_json(&c, "{\"after\":0}");
	c.pick_case = LHTEST__CHOICE__PICK_TEXT;
	c.text = "";
	expect_json(&c, "{\"text\":\"\",\"after\":0}");
	c.pick_case = LHTEST__CHOICE__PICK_NUMBER;
	c.number = -7;
	c.after = 3;
	expect_json(&c, "{\"number\":\"-7\",\"after\":3}");
	in.note = "x";
	in.child = &in2;
	c.pick_case = LHTEST__CHOICE__PICK_INNER;
	c.inner = &in;
	expect_json(&c, "{\"inner\":{\"note\":\"x\",\"child\":{\"note\":\"\"}},\"after\":3}");
}

static void test_maps(void **state)
{
	Lhtest__Maps m = LHTEST__MAPS__INIT;
	Lhtest__Maps__LabelsEntry l1 = LHTEST__MAPS__LABELS_ENTRY__INIT, l2 = l1;
	Lhtest__Maps__LabelsEntry *labels[] = {&l1, &l2};
	Lhtest__Maps__ByI32Entry i1 = LHTEST__MAPS__BY_I32_ENTRY__INIT;
	Lhtest__Maps__ByI32Entry *by_i32[] = {&i1};
	Lhtest__Maps__ByI64Entry j1 = LHTEST__MAPS__BY_I64_ENTRY__INIT;
	Lhtest__Maps__ByI64Entry *by_i64[] = {&j1};
	Lhtest__Maps__ByU32Entry u1 = LHTEST__MAPS__BY_U32_ENTRY__INIT;
	Lhtest__Maps__ByU32Entry *by_u32[] = {&u1};
	Lhtest__Maps__ByBoolEntry b1 = LHTEST__MAPS__BY_BOOL_ENTRY__INIT, b2 = b1;
	Lhtest__Maps__ByBoolEntry *by_bool[] = {&b1, &b2};
	Lhtest__Inner in = LHTEST__INNER__INIT;
	Lhtest__Maps__InnersEntry n1 = LHTEST__MAPS__INNERS_ENTRY__INIT, n2 = n1;
	Lhtest__Maps__InnersEntry *inners[] = {&n1, &n2};
	Google__Protobuf__Value v = GOOGLE__PROTOBUF__VALUE__INIT;
	Lhtest__Maps__ValuesEntry v1 = LHTEST__MAPS__VALUES_ENTRY__INIT, v2 = v1;
	Lhtest__Maps__ValuesEntry *values[] = {&v1, &v2};
	Lhtest__Maps__ColorsEntry c1 = LHTEST__MAPS__COLORS_ENTRY__INIT;
	Lhtest__Maps__ColorsEntry *colors[] = {&c1};

	expect_json(&m, "{\"labels\":{},\"byI32\":{},\"byI64\":{},\"byU32\":{},\"byBool\":{},"
	                "\"inners\":{},\"values\":{},\"colors\":{},\"wrapped\":{},\"times\":{}}");
	l1.key = "a\"b", l1.value = "1";
	l2.key = "", l2.value = "";
	i1.key = -5, i1.value = 6;
	j1.key = INT64_MIN, j1.value = "min";
	u1.key = UINT32_MAX, u1.value = 1;
	b1.key = 1, b1.value = "t";
	b2.key = 0, b2.value = "f";
	in.note = "n";
	n1.key = "x", n1.value = &in;
	n2.key = "absent"; /* a missing value on the wire: the default message */
	v.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE, v.number_value = 2.5;
	v1.key = "num", v1.value = &v;
	v2.key = "nil";
	c1.key = "c", c1.value = LHTEST__COLOR__COLOR_RED;
	m.n_labels = 2, m.labels = labels;
	m.n_by_i32 = 1, m.by_i32 = by_i32;
	m.n_by_i64 = 1, m.by_i64 = by_i64;
	m.n_by_u32 = 1, m.by_u32 = by_u32;
	m.n_by_bool = 2, m.by_bool = by_bool;
	m.n_inners = 2, m.inners = inners;
	m.n_values = 2, m.values = values;
	m.n_colors = 1, m.colors = colors;
	expect_json(&m,
	            "{\"labels\":{\"a\\\"b\":\"1\",\"\":\"\"},\"byI32\":{\"-5\":6},"
	            "\"byI64\":{\"-9223372036854775808\":\"min\"},"
	            "\"byU32\":{\"4294967295\":true},\"byBool\":{\"true\":\"t\",\"false\":\"f\"},"
	            "\"inners\":{\"x\":{\"note\":\"n\"},\"absent\":{\"note\":\"\"}},"
	            "\"values\":{\"num\":2.5,\"nil\":null},\"colors\":{\"c\":\"COLOR_RED\"},"
	            "\"wrapped\":{},\"times\":{}}");
}

/* A map entry with no value field on the wire, through protobuf-c's unpack. */
static void test_map_missing_value_wire(void **state)
{
	const uint8_t wire[] = {0x32, 0x03, 0x0a, 0x01, 'a', 0x3a, 0x03, 0x0a, 0x01, 'b',
	                        0x4a, 0x03, 0x0a, 0x01, 'w', 0x52, 0x03, 0x0a, 0x01, 't'};
	ProtobufCMessage *m =
	        protobuf_c_message_unpack(&lhtest__maps__descriptor, NULL, sizeof(wire), wire);
	assert_non_null(m);
	expect_json(m, "{\"labels\":{},\"byI32\":{},\"byI64\":{},\"byU32\":{},\"byBool\":{},"
	               "\"inners\":{\"a\":{\"note\":\"\"}},\"values\":{\"b\":null},\"colors\":{},"
	               "\"wrapped\":{\"w\":\"0\"},\"times\":{\"t\":\"1970-01-01T00:00:00Z\"}}");
	protobuf_c_message_free_unpacked(m, NULL);
}

/* proto2 presence (PROTOBUF_C_LABEL_OPTIONAL / REQUIRED), which protoc-c
 * generates for proto2 files only: a hand-written descriptor stands in. */
struct opt_msg {
	ProtobufCMessage base;
	protobuf_c_boolean has_num;
	int32_t num;
	char *text;
	Lhtest__Inner *inner;
	protobuf_c_boolean has_raw;
	ProtobufCBinaryData raw;
	int32_t req;
};
static char opt_text_default[] = "dflt";
static const ProtobufCFieldDescriptor opt_fields[] = {
        {"num", 1, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_INT32,
         offsetof(struct opt_msg, has_num), offsetof(struct opt_msg, num), NULL, NULL, 0, 0, NULL,
         NULL},
        {"text", 2, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_STRING, 0,
         offsetof(struct opt_msg, text), NULL, opt_text_default, 0, 0, NULL, NULL},
        {"inner", 3, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_MESSAGE, 0,
         offsetof(struct opt_msg, inner), &lhtest__inner__descriptor, NULL, 0, 0, NULL, NULL},
        {"raw", 4, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_BYTES,
         offsetof(struct opt_msg, has_raw), offsetof(struct opt_msg, raw), NULL, NULL, 0, 0, NULL,
         NULL},
        {"req_field", 5, PROTOBUF_C_LABEL_REQUIRED, PROTOBUF_C_TYPE_INT32, 0,
         offsetof(struct opt_msg, req), NULL, NULL, 0, 0, NULL, NULL},
};
static const ProtobufCMessageDescriptor opt_descriptor = {PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
                                                          "lhtest.Opt",
                                                          "Opt",
                                                          "Opt",
                                                          "lhtest",
                                                          sizeof(struct opt_msg),
                                                          5,
                                                          opt_fields,
                                                          NULL,
                                                          0,
                                                          NULL,
                                                          NULL,
                                                          NULL,
                                                          NULL,
                                                          NULL};

static void test_proto2_optional(void **state)
{
	struct opt_msg m = {PROTOBUF_C_MESSAGE_INIT(&opt_descriptor),
	                    0,
	                    0,
	                    opt_text_default,
	                    NULL,
	                    0,
	                    {0, NULL},
	                    0};
	Lhtest__Inner in = LHTEST__INNER__INIT;
	expect_json(&m, "{\"reqField\":0}");
	m.has_num = 1, m.text = "", m.inner = &in, m.has_raw = 1;
	expect_json(&m, "{\"num\":0,\"text\":\"\",\"inner\":{\"note\":\"\"},\"raw\":\"\","
	                "\"reqField\":0}");
	m.text = NULL;
	m.req = -1;
	expect_json(&m, "{\"num\":0,\"inner\":{\"note\":\"\"},\"raw\":\"\",\"reqField\":-1}");
}

/* ---------------------------------------------------------------------------
 * Well-known types
 * ------------------------------------------------------------------------- */

static void expect_ts(int64_t s, int32_t ns, const char *want)
{
	Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	t.seconds = s;
	t.nanos = ns;
	if (want)
		expect_json(&t, want);
	else
		expect_err(&t, LH_EINVAL, "");
}

static void test_timestamp(void **state)
{
	expect_ts(0, 0, "\"1970-01-01T00:00:00Z\"");
	expect_ts(1700000000, 0, "\"2023-11-14T22:13:20Z\"");
	expect_ts(1700000000, 500000000, "\"2023-11-14T22:13:20.500Z\"");
	expect_ts(1700000000, 10000, "\"2023-11-14T22:13:20.000010Z\"");
	expect_ts(1700000000, 1, "\"2023-11-14T22:13:20.000000001Z\"");
	expect_ts(1700000000, 999999999, "\"2023-11-14T22:13:20.999999999Z\"");
	expect_ts(-1, 0, "\"1969-12-31T23:59:59Z\"");
	expect_ts(-86400, 0, "\"1969-12-31T00:00:00Z\"");
	expect_ts(951782400, 0, "\"2000-02-29T00:00:00Z\"");
	expect_ts(-62135596800LL, 0, "\"0001-01-01T00:00:00Z\"");
	expect_ts(253402300799LL, 999999999, "\"9999-12-31T23:59:59.999999999Z\"");
	expect_ts(-62135596801LL, 0, NULL);
	expect_ts(253402300800LL, 0, NULL);
	expect_ts(INT64_MIN, 0, NULL);
	expect_ts(0, -1, NULL);
	expect_ts(0, 1000000000, NULL);
}

static void expect_dur(int64_t s, int32_t ns, const char *want)
{
	Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
	d.seconds = s;
	d.nanos = ns;
	if (want)
		expect_json(&d, want);
	else
		expect_err(&d, LH_EINVAL, "");
}

static void test_duration(void **state)
{
	expect_dur(0, 0, "\"0s\"");
	expect_dur(1, 500000000, "\"1.500s\"");
	expect_dur(-1, -500000000, "\"-1.500s\"");
	expect_dur(0, -500000000, "\"-0.500s\"");
	expect_dur(0, 1, "\"0.000000001s\"");
	expect_dur(3, 1000, "\"3.000001s\"");
	expect_dur(-7, 0, "\"-7s\"");
	expect_dur(315576000000LL, 999999999, "\"315576000000.999999999s\"");
	expect_dur(-315576000000LL, -999999999, "\"-315576000000.999999999s\"");
	expect_dur(315576000001LL, 0, NULL);
	expect_dur(-315576000001LL, 0, NULL);
	expect_dur(INT64_MIN, 0, NULL);
	expect_dur(1, -1, NULL);
	expect_dur(-1, 1, NULL);
	expect_dur(0, 1000000000, NULL);
}

static void test_struct_value_list(void **state)
{
	Google__Protobuf__Value vs[6];
	for (int i = 0; i < 6; i++)
		google__protobuf__value__init(&vs[i]);
	Google__Protobuf__ListValue list = GOOGLE__PROTOBUF__LIST_VALUE__INIT;
	Google__Protobuf__Value *items[] = {&vs[0], &vs[1], &vs[2]};
	Google__Protobuf__Struct st = GOOGLE__PROTOBUF__STRUCT__INIT, inner = st;
	Google__Protobuf__Struct__FieldsEntry e1 = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
	Google__Protobuf__Struct__FieldsEntry e2 = e1, e3 = e1, e4 = e1;
	Google__Protobuf__Struct__FieldsEntry *fields[] = {&e1, &e2, &e3, &e4};

	vs[0].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
	vs[1].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE, vs[1].bool_value = 1;
	vs[2].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE, vs[2].string_value = "s";
	list.n_values = 3, list.values = items;
	vs[3].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE, vs[3].list_value = &list;
	vs[4].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE, vs[4].number_value = -0.5;
	vs[5].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE, vs[5].struct_value = &inner;
	e1.key = "list", e1.value = &vs[3];
	e2.key = "n", e2.value = &vs[4];
	e3.key = "obj", e3.value = &vs[5];
	e4.key = "unset", e4.value = NULL;
	st.n_fields = 4, st.fields = fields;
	expect_json(&st, "{\"list\":[null,true,\"s\"],\"n\":-0.5,\"obj\":{},\"unset\":null}");
	expect_json(&list, "[null,true,\"s\"]");
	expect_json(&vs[4], "-0.5");
	google__protobuf__value__init(&vs[0]);
	expect_json(&vs[0], "null");

	vs[4].number_value = NAN;
	expect_err(&st, LH_EINVAL, "fields.n");
	vs[4].number_value = -INFINITY;
	expect_err(&st, LH_EINVAL, "fields.n");
	vs[4].number_value = 1e100;
	expect_json(&vs[4], "1e+100");
}

static void test_wkts_in_message(void **state)
{
	Lhtest__Wkts w = LHTEST__WKTS__INIT;
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT, ts2 = ts;
	Google__Protobuf__Timestamp *tss[] = {&ts, &ts2};
	Google__Protobuf__Duration dur = GOOGLE__PROTOBUF__DURATION__INIT;
	Google__Protobuf__Struct st = GOOGLE__PROTOBUF__STRUCT__INIT;
	Google__Protobuf__Value val = GOOGLE__PROTOBUF__VALUE__INIT;
	Google__Protobuf__ListValue list = GOOGLE__PROTOBUF__LIST_VALUE__INIT;
	Google__Protobuf__DoubleValue dv = GOOGLE__PROTOBUF__DOUBLE_VALUE__INIT;
	Google__Protobuf__FloatValue fv = GOOGLE__PROTOBUF__FLOAT_VALUE__INIT;
	Google__Protobuf__Int64Value i64v = GOOGLE__PROTOBUF__INT64_VALUE__INIT;
	Google__Protobuf__UInt64Value u64v = GOOGLE__PROTOBUF__UINT64_VALUE__INIT;
	Google__Protobuf__Int32Value i32v = GOOGLE__PROTOBUF__INT32_VALUE__INIT;
	Google__Protobuf__UInt32Value u32v = GOOGLE__PROTOBUF__UINT32_VALUE__INIT;
	Google__Protobuf__BoolValue bv = GOOGLE__PROTOBUF__BOOL_VALUE__INIT;
	Google__Protobuf__StringValue sv = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
	Google__Protobuf__BytesValue byv = GOOGLE__PROTOBUF__BYTES_VALUE__INIT;
	Google__Protobuf__Empty empty = GOOGLE__PROTOBUF__EMPTY__INIT;
	Google__Protobuf__FieldMask mask = GOOGLE__PROTOBUF__FIELD_MASK__INIT;
	char *paths[] = {"foo_bar.baz_qux", "a", "x__y_z"};

	expect_json(&w, "{\"nullValue\":null,\"tss\":[]}");
	w.ts = &ts, ts.seconds = 1, ts.nanos = 20000000;
	w.dur = &dur, dur.seconds = 90;
	w.st = &st;
	w.val = &val, val.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
	val.string_value = "v";
	w.list = &list;
	w.dv = &dv, dv.value = 2.5;
	w.fv = &fv, fv.value = 0.1f;
	w.i64v = &i64v, i64v.value = INT64_MIN;
	w.u64v = &u64v, u64v.value = UINT64_MAX;
	w.i32v = &i32v, i32v.value = -1;
	w.u32v = &u32v, u32v.value = 4000000000u;
	w.bv = &bv;
	w.sv = &sv, sv.value = "hi";
	w.byv = &byv, byv.value.len = 2, byv.value.data = (uint8_t *)"hi";
	w.empty = &empty;
	w.mask = &mask, mask.n_paths = 3, mask.paths = paths;
	w.n_tss = 2, w.tss = tss;
	expect_json(&w,
	            "{\"ts\":\"1970-01-01T00:00:01.020Z\",\"dur\":\"90s\",\"st\":{},\"val\":\"v\","
	            "\"list\":[],\"nullValue\":null,\"dv\":2.5,\"fv\":0.1,"
	            "\"i64v\":\"-9223372036854775808\",\"u64v\":\"18446744073709551615\","
	            "\"i32v\":-1,\"u32v\":4000000000,\"bv\":false,\"sv\":\"hi\",\"byv\":\"aGk=\","
	            "\"empty\":{},\"mask\":\"fooBar.bazQux,a,xYZ\","
	            "\"tss\":[\"1970-01-01T00:00:01.020Z\",\"1970-01-01T00:00:00Z\"]}");
	expect_json(&i64v, "\"-9223372036854775808\"");
	expect_json(&mask, "\"fooBar.bazQux,a,xYZ\"");
	mask.n_paths = 0;
	expect_json(&mask, "\"\"");

	ts2.nanos = -5;
	expect_err(&w, LH_EINVAL, "tss[1]");
	ts2.nanos = 0;
	dur.seconds = -1, dur.nanos = 5;
	expect_err(&w, LH_EINVAL, "dur");
	dur.nanos = 0;
	sv.value = "\xff";
	expect_err(&w, LH_EUTF8, "sv");
	sv.value = "";
	mask.n_paths = 3, paths[2] = "ok\xc0\x80";
	expect_err(&w, LH_EUTF8, "mask.paths[2]");
}

/* ---------------------------------------------------------------------------
 * Errors: UTF-8 with paths, depth
 * ------------------------------------------------------------------------- */

static void test_utf8_paths(void **state)
{
	Lhtest__Everything ev = LHTEST__EVERYTHING__INIT, nested0 = ev, nested1 = ev;
	Lhtest__Everything *nested[] = {&nested0, &nested1};
	Lhtest__Inner in = LHTEST__INNER__INIT, child = in;
	Lhtest__Repeated r = LHTEST__REPEATED__INIT;
	char *st[] = {"ok", "ok", "\xed\xa0\x80"}; /* a surrogate */
	Lhtest__Maps m = LHTEST__MAPS__INIT;
	Lhtest__Maps__LabelsEntry l1 = LHTEST__MAPS__LABELS_ENTRY__INIT;
	Lhtest__Maps__LabelsEntry *labels[] = {&l1};
	Lhtest__Maps__ByBoolEntry b1 = LHTEST__MAPS__BY_BOOL_ENTRY__INIT;
	Lhtest__Maps__ByBoolEntry *by_bool[] = {&b1};
	Lhtest__Maps__ByI64Entry j1 = LHTEST__MAPS__BY_I64_ENTRY__INIT;
	Lhtest__Maps__ByI64Entry *by_i64[] = {&j1};

	ev.n_nested = 2, ev.nested = nested;
	nested1.inner = &in, in.child = &child, child.note = "bad\x80";
	expect_err(&ev, LH_EUTF8, "nested[1].inner.child.note");
	child.note = "fine";
	nested0.repeated = &r, r.n_st = 3, r.st = st;
	expect_err(&ev, LH_EUTF8, "nested[0].repeated.st[2]");
	st[2] = "";
	ev.maps = &m;
	m.n_labels = 1, m.labels = labels;
	l1.key = "k\xc3\xa9", l1.value = "\xf4\x90\x80\x80"; /* above U+10FFFF */
	expect_err(&ev, LH_EUTF8, "maps.labels[\"k\xc3\xa9\"]");
	l1.key = "\xc3";
	expect_err(&ev, LH_EUTF8, "maps.labels");
	l1.key = "k", l1.value = "v";
	m.n_by_i64 = 1, m.by_i64 = by_i64, j1.key = -3, j1.value = "\xe0\x80\x80";
	expect_err(&ev, LH_EUTF8, "maps.byI64[-3]");
	j1.value = "";
	m.n_by_bool = 1, m.by_bool = by_bool, b1.key = 1, b1.value = "\xc0\xaf";
	expect_err(&ev, LH_EUTF8, "maps.byBool[true]");

	/* errpath is cut to errlen, on a character boundary. */
	struct strbuf sb = STRBUF_INIT;
	char small[8];
	assert_int_equal(pbjson_write(&sb, &ev.base, small, sizeof(small)), LH_EUTF8);
	assert_string_equal(small, "maps.by");
	assert_int_equal(pbjson_write(&sb, &ev.base, NULL, 0), LH_EUTF8);
	sb_free(&sb);
}

static void test_depth_limit(void **state)
{
	enum { N = 70 };
	Lhtest__Inner chain[N];
	for (int i = 0; i < N; i++) {
		lhtest__inner__init(&chain[i]);
		chain[i].child = i + 1 < N ? &chain[i + 1] : NULL;
	}
	/* 64 levels of messages are fine, 65 are not. */
	struct strbuf sb = STRBUF_INIT;
	char path[512];
	chain[63].child = NULL;
	assert_int_equal(pbjson_write(&sb, &chain[0].base, path, sizeof(path)), 0);
	chain[63].child = &chain[64];
	chain[64].child = NULL;
	sb_reset(&sb);
	assert_int_equal(pbjson_write(&sb, &chain[0].base, path, sizeof(path)), LH_EINVAL);
	assert_int_equal(strncmp(path, "child.child.", 12), 0);
	chain[64].child = &chain[65];

	/* Values nested in lists count too. */
	Google__Protobuf__Value v[N];
	Google__Protobuf__ListValue l[N];
	Google__Protobuf__Value *items[N];
	for (int i = 0; i < N; i++) {
		google__protobuf__value__init(&v[i]);
		google__protobuf__list_value__init(&l[i]);
		v[i].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
		v[i].list_value = &l[i];
		items[i] = i + 1 < N ? &v[i + 1] : NULL;
		l[i].n_values = i + 1 < N ? 1 : 0;
		l[i].values = &items[i];
	}
	sb_reset(&sb);
	assert_int_equal(pbjson_write(&sb, &v[0].base, path, sizeof(path)), LH_EINVAL);
	assert_int_equal(strncmp(path, "[0][0][0]", 9), 0);
	l[63].n_values = 0;
	sb_reset(&sb);
	assert_int_equal(pbjson_write(&sb, &v[0].base, path, sizeof(path)), 0);
	sb_free(&sb);
}

/* ---------------------------------------------------------------------------
 * The livehub events
 * ------------------------------------------------------------------------- */

static void test_job_progress(void **state)
{
	Livehub__V1__JobProgress p = LIVEHUB__V1__JOB_PROGRESS__INIT;
	Google__Protobuf__Struct st = GOOGLE__PROTOBUF__STRUCT__INIT;
	Google__Protobuf__Struct__FieldsEntry e1 = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
	Google__Protobuf__Struct__FieldsEntry *fields[] = {&e1};
	Google__Protobuf__Value v = GOOGLE__PROTOBUF__VALUE__INIT;

	expect_json(&p, "{\"jobId\":\"\",\"projectId\":\"\",\"kind\":\"JOB_KIND_UNSPECIFIED\","
	                "\"progress\":0,\"etaSeconds\":0,\"message\":\"\",\"itemId\":\"\"}");
	p.job_id = "j1", p.project_id = "p1", p.kind = LIVEHUB__V1__JOB_KIND__JOB_KIND_SLICE;
	p.progress = 42.5, p.eta_seconds = 30, p.message = "slicing layer 12/80";
	p.details = &st, st.n_fields = 1, st.fields = fields;
	e1.key = "layer", e1.value = &v;
	v.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE, v.number_value = 12;
	expect_json(&p, "{\"jobId\":\"j1\",\"projectId\":\"p1\",\"kind\":\"JOB_KIND_SLICE\","
	                "\"progress\":42.5,\"etaSeconds\":30,\"message\":\"slicing layer 12/80\","
	                "\"itemId\":\"\",\"details\":{\"layer\":12}}");
	v.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE, v.string_value = "\xfe";
	expect_err(&p, LH_EUTF8, "details.fields.layer");
	v.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE, v.number_value = NAN;
	expect_err(&p, LH_EINVAL, "details.fields.layer");
}

static void test_other_events(void **state)
{
	Livehub__V1__JobCompleted c = LIVEHUB__V1__JOB_COMPLETED__INIT;
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	c.job_id = "j", c.kind = LIVEHUB__V1__JOB_KIND__JOB_KIND_EXPORT;
	c.result_url = "https://x/y?a=1&b=<2>", c.duration_ms = 1234567890123ULL;
	c.finished_at = &ts, ts.seconds = 1763766000, ts.nanos = 123000000;
	expect_json(
	        &c,
	        "{\"jobId\":\"j\",\"projectId\":\"\",\"kind\":\"JOB_KIND_EXPORT\","
	        "\"itemId\":\"\",\"resultUrl\":\"https://x/y?a=1&b=<2>\","
	        "\"durationMs\":\"1234567890123\",\"finishedAt\":\"2025-11-21T23:00:00.123Z\"}");

	Livehub__V1__JobFailed f = LIVEHUB__V1__JOB_FAILED__INIT;
	f.job_id = "j", f.error_code = "MODEL_INVALID", f.error = "bad\tmodel", f.retryable = 1;
	expect_json(&f, "{\"jobId\":\"j\",\"projectId\":\"\",\"kind\":\"JOB_KIND_UNSPECIFIED\","
	                "\"itemId\":\"\",\"errorCode\":\"MODEL_INVALID\",\"error\":\"bad\\tmodel\","
	                "\"retryable\":true}");

	Livehub__V1__PriceUpdated pu = LIVEHUB__V1__PRICE_UPDATED__INIT;
	pu.item_id = "sku-1", pu.currency = "CZK", pu.amount_minor = -12345;
	pu.previous_amount_minor = INT64_MAX, pu.config_version = "v7";
	pu.effective_at = &ts, ts.seconds = 0, ts.nanos = 0;
	expect_json(&pu, "{\"itemId\":\"sku-1\",\"currency\":\"CZK\",\"amountMinor\":\"-12345\","
	                 "\"previousAmountMinor\":\"9223372036854775807\",\"configVersion\":\"v7\","
	                 "\"effectiveAt\":\"1970-01-01T00:00:00Z\"}");
	ts.seconds = 253402300800LL;
	expect_err(&pu, LH_EINVAL, "effectiveAt");

	Livehub__V1__OrderStatus os = LIVEHUB__V1__ORDER_STATUS__INIT;
	os.order_id = "o1", os.state = LIVEHUB__V1__ORDER_STATE__ORDER_STATE_SHIPPED;
	os.previous_state = 99, os.note = "shipped with DHL";
	expect_json(&os, "{\"orderId\":\"o1\",\"state\":\"ORDER_STATE_SHIPPED\","
	                 "\"previousState\":99,\"note\":\"shipped with DHL\"}");
}

/* Serializes a chain of n nested Inner messages (child = 2) into buf. */
static size_t inner_chain(uint8_t *buf, size_t cap, int n)
{
	/* Built from the innermost level out, at the end of buf. */
	size_t at = cap, body = 0;
	for (int i = 1; i < n; i++) {
		uint8_t hdr[11];
		size_t h = 0;
		hdr[h++] = 0x12;
		for (size_t v = body;; v >>= 7) {
			hdr[h++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
			if (v < 0x80)
				break;
		}
		assert_true(at >= h);
		at -= h;
		memcpy(buf + at, hdr, h);
		body += h;
	}
	memmove(buf, buf + at, body);
	return body;
}

static void test_check_depth(void **state)
{
	static uint8_t buf[200000];
	size_t n = inner_chain(buf, sizeof(buf), PBJSON_WIRE_MAX_DEPTH);
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, buf, n), 0);
	ProtobufCMessage *m = protobuf_c_message_unpack(&lhtest__inner__descriptor, NULL, n, buf);
	assert_non_null(m);
	protobuf_c_message_free_unpacked(m, NULL);
	n = inner_chain(buf, sizeof(buf), PBJSON_WIRE_MAX_DEPTH + 1);
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, buf, n), LH_EINVAL);
	/* The shortest message too deep is longer than the size under which
	 * rpc.c skips the check. */
	assert_true(n > PBJSON_WIRE_SHALLOW_BYTES);
	n = inner_chain(buf, sizeof(buf), 20000);
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, buf, n), LH_EINVAL);
	/* Strings, scalars and unknown fields are skipped, not entered. */
	const uint8_t flat[] = {0x0a, 0x02, 0x12, 0x00, 0x12, 0x02, 0x0a, 0x00, 0x78, 0x96,
	                        0x01, 0x7d, 1,    2,    3,    4,    0x79, 1,    2,    3,
	                        4,    5,    6,    7,    8,    0x7a, 0x01, 0x12};
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, flat, sizeof(flat)), 0);
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, flat, 0), 0);
	/* Broken framing: a length past the end, a cut varint, a group, tag 0. */
	const uint8_t past[] = {0x12, 0x05, 0x0a, 0x00};
	const uint8_t cut[] = {0x78, 0x96};
	const uint8_t group[] = {0x7b, 0x7c};
	const uint8_t zero[] = {0x00, 0x00};
	const uint8_t inner_past[] = {0x12, 0x02, 0x0a, 0x05};
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, past, sizeof(past)),
	                 LH_EINVAL);
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, cut, sizeof(cut)),
	                 LH_EINVAL);
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, group, sizeof(group)),
	                 LH_EINVAL);
	assert_int_equal(pbjson_check_depth(&lhtest__inner__descriptor, zero, sizeof(zero)),
	                 LH_EINVAL);
	assert_int_equal(
	        pbjson_check_depth(&lhtest__inner__descriptor, inner_past, sizeof(inner_past)),
	        LH_EINVAL);
}

static void test_appends(void **state)
{
	/* pbjson appends to what the buffer already holds. */
	struct strbuf sb = STRBUF_INIT;
	Lhtest__Empty e = LHTEST__EMPTY__INIT;
	sb_adds(&sb, "{\"data\":");
	assert_int_equal(pbjson_write(&sb, &e.base, NULL, 0), 0);
	sb_addc(&sb, '}');
	assert_string_equal(sb_cstr(&sb), "{\"data\":{}}");
	assert_int_equal(pbjson_write(&sb, NULL, NULL, 0), LH_EINVAL);
	sb_free(&sb);
}

/* ---------------------------------------------------------------------------
 * The per-type key cache
 * ------------------------------------------------------------------------- */

/* Two types sharing field names (jobId, projectId, kind, itemId) at different
 * positions keep their own keys, call after call. */
static void test_key_cache(void **state)
{
	Livehub__V1__JobProgress p = LIVEHUB__V1__JOB_PROGRESS__INIT;
	Livehub__V1__JobFailed f = LIVEHUB__V1__JOB_FAILED__INIT;
	p.job_id = "j1", p.item_id = "i1", p.progress = 0.1;
	f.job_id = "j2", f.item_id = "i2", f.error = "x";
	for (int i = 0; i < 3; i++) {
		expect_json(
		        &p,
		        "{\"jobId\":\"j1\",\"projectId\":\"\",\"kind\":\"JOB_KIND_UNSPECIFIED\","
		        "\"progress\":0.1,\"etaSeconds\":0,\"message\":\"\",\"itemId\":\"i1\"}");
		expect_json(
		        &f,
		        "{\"jobId\":\"j2\",\"projectId\":\"\",\"kind\":\"JOB_KIND_UNSPECIFIED\","
		        "\"itemId\":\"i2\",\"errorCode\":\"\",\"error\":\"x\","
		        "\"retryable\":false}");
	}
	/* Paths come from the cache too. */
	p.item_id = "\xff";
	expect_err(&p, LH_EUTF8, "itemId");
	f.item_id = "\xff";
	expect_err(&f, LH_EUTF8, "itemId");
}

/* Writes a few message types over and over, checking each text. */
static void *cache_worker(void *arg)
{
	(void)arg;
	Livehub__V1__OrderStatus os = LIVEHUB__V1__ORDER_STATUS__INIT;
	Livehub__V1__JobCompleted jc = LIVEHUB__V1__JOB_COMPLETED__INIT;
	os.order_id = "o1", jc.job_id = "j";
	struct strbuf sb = STRBUF_INIT;
	intptr_t bad = 0;
	for (int i = 0; i < 200; i++) {
		sb_reset(&sb);
		bad |= pbjson_write(&sb, &os.base, NULL, 0) != 0;
		bad |= strcmp(sb_cstr(&sb),
		              "{\"orderId\":\"o1\",\"state\":\"ORDER_STATE_UNSPECIFIED\","
		              "\"previousState\":\"ORDER_STATE_UNSPECIFIED\","
		              "\"note\":\"\"}") != 0;
		sb_reset(&sb);
		bad |= pbjson_write(&sb, &jc.base, NULL, 0) != 0;
		bad |= strcmp(sb_cstr(&sb), "{\"jobId\":\"j\",\"projectId\":\"\","
		                            "\"kind\":\"JOB_KIND_UNSPECIFIED\",\"itemId\":\"\","
		                            "\"resultUrl\":\"\",\"durationMs\":\"0\"}") != 0;
	}
	sb_free(&sb);
	return (void *)bad;
}

/* Threads racing to build the first tables all get the same text (run under
 * TSan too); this test runs before any other writes these types. */
static void test_key_cache_threads(void **state)
{
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, cache_worker, NULL), 0);
	for (int i = 0; i < 4; i++) {
		void *bad;
		assert_int_equal(pthread_join(t[i], &bad), 0);
		assert_null(bad);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_key_cache_threads),
	        cmocka_unit_test(test_camel),
	        cmocka_unit_test(test_names_message),
	        cmocka_unit_test(test_empty),
	        cmocka_unit_test(test_scalar_defaults),
	        cmocka_unit_test(test_scalar_extremes),
	        cmocka_unit_test(test_floating),
	        cmocka_unit_test(test_enum_unknown),
	        cmocka_unit_test(test_bytes_padding),
	        cmocka_unit_test(test_repeated),
	        cmocka_unit_test(test_nested_and_oneof),
	        cmocka_unit_test(test_maps),
	        cmocka_unit_test(test_map_missing_value_wire),
	        cmocka_unit_test(test_proto2_optional),
	        cmocka_unit_test(test_timestamp),
	        cmocka_unit_test(test_duration),
	        cmocka_unit_test(test_struct_value_list),
	        cmocka_unit_test(test_wkts_in_message),
	        cmocka_unit_test(test_utf8_paths),
	        cmocka_unit_test(test_depth_limit),
	        cmocka_unit_test(test_job_progress),
	        cmocka_unit_test(test_other_events),
	        cmocka_unit_test(test_check_depth),
	        cmocka_unit_test(test_appends),
	        cmocka_unit_test(test_key_cache),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
