/* Unit tests of names.c, utf8.c and strbuf.c: the small pieces every
 * module trusts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "names.h"
#include "strbuf.h"
#include "utf8.h"

#define OK(fn, s)  assert_true(fn(s, strlen(s)))
#define BAD(fn, s) assert_false(fn(s, strlen(s)))

static void test_tenant_names(void **state)
{
	OK(name_tenant_ok, "acme");
	OK(name_tenant_ok, "a-b_c.d9");
	BAD(name_tenant_ok, "");
	BAD(name_tenant_ok, "ac:me"); /* ':' would make channel keys ambiguous */
	BAD(name_tenant_ok, "a\x1f"
	                    "b");
	BAD(name_tenant_ok, "a b");
	BAD(name_tenant_ok, "a\"b");
	char longest[LH_TENANT_MAX + 2];
	memset(longest, 'a', sizeof(longest));
	assert_true(name_tenant_ok(longest, LH_TENANT_MAX));
	assert_false(name_tenant_ok(longest, LH_TENANT_MAX + 1));
	assert_false(name_tenant_ok("ab\0c", 4)); /* embedded NUL */
}

static void test_user_names(void **state)
{
	OK(name_user_ok, "alice@example.com");
	OK(name_user_ok, "auth0:12345+x");
	BAD(name_user_ok, "alice smith");
	BAD(name_user_ok, "al/ice");
	BAD(name_user_ok, "");
}

static void test_channel_names(void **state)
{
	OK(name_channel_ok, "job:42");
	OK(name_channel_ok, "project:p-1/a=b@c+d");
	BAD(name_channel_ok, "$tenant");
	BAD(name_channel_ok, "$user:alice");
	OK(name_channel_any_ok, "$tenant");
	OK(name_channel_any_ok, "$user:alice@example.com");
	BAD(name_channel_any_ok, "$");
	BAD(name_channel_any_ok, "a$b");
	BAD(name_channel_ok, "job 42");
	BAD(name_channel_ok, "job:\"42\"");
	BAD(name_channel_ok, "job:\\42");
	BAD(name_channel_ok, "");
	char longest[LH_CHANNEL_MAX + 2];
	memset(longest, 'c', sizeof(longest));
	assert_true(name_channel_ok(longest, LH_CHANNEL_MAX));
	assert_false(name_channel_ok(longest, LH_CHANNEL_MAX + 1));
}

static void test_type_names(void **state)
{
	OK(name_type_ok, "job:progress");
	OK(name_type_ok, "board.card-moved_v2");
	BAD(name_type_ok, "a/b");
	BAD(name_type_ok, "");
}

/* Every byte, in the middle of each kind of name, is accepted exactly when it
 * is a letter, a digit or one of that kind's extra characters (as documented
 * in docs/PROTOCOL.md). */
static void test_every_byte(void **state)
{
	static const struct {
		bool (*ok)(const char *, size_t);
		const char *extra;
	} kinds[] = {{name_tenant_ok, "_.-"},
	             {name_user_ok, "_.:@+-"},
	             {name_channel_ok, "_.:@+=/-"},
	             {name_type_ok, "_.:-"}};
	for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
		for (int c = 0; c < 256; c++) {
			char s[3] = {'a', (char)c, 'b'};
			bool want = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			            (c >= '0' && c <= '9') || (c != 0 && strchr(kinds[k].extra, c));
			assert_int_equal(kinds[k].ok(s, 3), want);
		}
	}
}

static void test_utf8(void **state)
{
	assert_true(utf8_valid("", 0));
	assert_true(utf8_valid("plain", 5));
	assert_true(utf8_valid("\xc5\xbelu\xc5\xa5ou\xc4\x8dk\xc3\xbd", 13)); /* žluťoučký */
	assert_true(utf8_valid("\xf0\x9f\x98\x80", 4));                       /* U+1F600 */
	assert_false(utf8_valid("\xc0\xaf", 2));                              /* overlong '/' */
	assert_false(utf8_valid("\xed\xa0\x80", 3));                          /* surrogate */
	assert_false(utf8_valid("\xf4\x90\x80\x80", 4));                      /* > U+10FFFF */
	assert_false(utf8_valid("\xe2\x82", 2));                              /* truncated */
	assert_false(utf8_valid("\xff", 1));
	assert_false(utf8_valid("a\x80", 2));
}

static void test_strbuf_json(void **state)
{
	struct strbuf sb = STRBUF_INIT;
	sb_add_json_str(&sb, "a\"b\\c\n\x01\x7f\xc5\xbe", 10);
	assert_string_equal(sb_cstr(&sb), "\"a\\\"b\\\\c\\n\\u0001\\u007f\xc5\xbe\"");
	sb_reset(&sb);
	sb_add_i64(&sb, INT64_MIN);
	sb_addc(&sb, ' ');
	sb_add_u64(&sb, UINT64_MAX);
	sb_addf(&sb, " %d", 7);
	assert_string_equal(sb_cstr(&sb), "-9223372036854775808 18446744073709551615 7");
	for (int i = 0; i < 10000; i++)
		sb_addc(&sb, 'x');
	assert_int_equal(sb.len, 43 + 10000);
	sb_free(&sb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_tenant_names),  cmocka_unit_test(test_user_names),
	        cmocka_unit_test(test_channel_names), cmocka_unit_test(test_type_names),
	        cmocka_unit_test(test_every_byte),    cmocka_unit_test(test_utf8),
	        cmocka_unit_test(test_strbuf_json),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
