/* Unit tests of static_files.c: the embedded demo page and client, their
 * headers and ETag matching. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "static_files.h"

static void test_files_are_embedded(void **state)
{
	const struct static_file *root = static_file_find("/");
	assert_non_null(root);
	assert_string_equal(root->content_type, "text/html; charset=utf-8");
	assert_true(root->len > 100);
	assert_non_null(memmem(root->data, root->len, "livehub", 7));
	const struct static_file *js = static_file_find("/livehub.js");
	assert_non_null(js);
	assert_string_equal(js->content_type, "text/javascript; charset=utf-8");
	assert_non_null(memmem(js->data, js->len, "export class LiveHub", 20));
	assert_non_null(static_file_find("/demo.js"));
	assert_ptr_equal(static_file_find("/index.html")->data, root->data);
	assert_null(static_file_find("/nope"));
	assert_null(static_file_find("/livehub.js/"));
	assert_null(static_file_find(""));
}

static void test_etags(void **state)
{
	const struct static_file *a = static_file_find("/");
	const struct static_file *b = static_file_find("/livehub.js");
	assert_int_equal(strlen(a->etag), 18);
	assert_true(a->etag[0] == '"' && a->etag[17] == '"');
	assert_string_not_equal(a->etag, b->etag);
	char list[64];
	assert_true(static_file_not_modified(a, a->etag));
	snprintf(list, sizeof list, "\"x\", W/%s", a->etag);
	assert_true(static_file_not_modified(a, list));
	assert_true(static_file_not_modified(a, "*"));
	assert_false(static_file_not_modified(a, b->etag));
	assert_false(static_file_not_modified(a, ""));
	assert_false(static_file_not_modified(a, NULL));
	snprintf(list, sizeof list, "%sx", a->etag); /* a's tag as a prefix only */
	assert_false(static_file_not_modified(a, list));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_files_are_embedded),
	        cmocka_unit_test(test_etags),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
