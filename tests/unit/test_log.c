/* Unit tests of the log line formats: logfmt passes the pairs through with
 * time and level first; json turns them into one valid JSON object per line
 * (quotes, backslashes and control characters escaped, integers as numbers). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "log.h"

/* Runs one log call with stderr sent to a temporary file; returns the line
 * (malloc'd, without its newline). */
static char *capture(enum log_format fmt, enum log_level lvl, const char *text)
{
	FILE *tmp = tmpfile();
	assert_non_null(tmp);
	int saved = dup(STDERR_FILENO);
	dup2(fileno(tmp), STDERR_FILENO);
	log_set_format(fmt);
	log_msg(lvl, "%s", text);
	dup2(saved, STDERR_FILENO);
	close(saved);
	char *line = calloc(1, 8192);
	rewind(tmp);
	size_t n = fread(line, 1, 8191, tmp);
	fclose(tmp);
	assert_true(n > 0 && line[n - 1] == '\n');
	line[n - 1] = '\0';
	assert_null(strchr(line, '\n')); /* one line */
	return line;
}

static void test_logfmt(void **state)
{
	log_set_level(LOG_DEBUG);
	char *l = capture(LOG_LOGFMT, LOG_WARN, "event=connect client=c1-2");
	assert_int_equal(strncmp(l, "time=", 5), 0);
	assert_non_null(strstr(l, " level=warn event=connect client=c1-2"));
	free(l);
}

static void test_json(void **state)
{
	log_set_level(LOG_DEBUG);
	char *l = capture(LOG_JSON, LOG_INFO,
	                  "event=disconnect client=c1-2 close_code=4000 neg=-3 lead=007 "
	                  "msg=\"say \\\"hi\\\" \\\\ now\" bare ctl=\"a\tb\"");
	json_error_t e;
	json_t *o = json_loads(l, 0, &e);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "level")), "info");
	assert_non_null(json_string_value(json_object_get(o, "time")));
	assert_string_equal(json_string_value(json_object_get(o, "event")), "disconnect");
	assert_int_equal(json_integer_value(json_object_get(o, "close_code")), 4000);
	assert_int_equal(json_integer_value(json_object_get(o, "neg")), -3);
	assert_string_equal(json_string_value(json_object_get(o, "lead")), "007");
	assert_string_equal(json_string_value(json_object_get(o, "msg")), "say \"hi\" \\ now");
	assert_string_equal(json_string_value(json_object_get(o, "text")), "bare");
	assert_string_equal(json_string_value(json_object_get(o, "ctl")), "a\tb");
	json_decref(o);
	free(l);
}

static void test_json_survives_junk(void **state)
{
	/* An unterminated quote, a lone '=', a very long value: still one
	 * valid JSON object. */
	char big[3000];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	const char *cases[] = {"msg=\"unterminated", "=", "a= b==c \"", big};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *l = capture(LOG_JSON, LOG_ERROR, cases[i]);
		json_error_t e;
		json_t *o = json_loads(l, 0, &e);
		assert_non_null(o);
		json_decref(o);
		free(l);
	}
}

static void test_level_filter_and_parse(void **state)
{
	assert_int_equal(log_format_parse("json"), LOG_JSON);
	assert_int_equal(log_format_parse("logfmt"), LOG_LOGFMT);
	assert_int_equal(log_format_parse("xml"), -1);
	assert_int_equal(log_level_parse("warn"), LOG_WARN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_logfmt),
	        cmocka_unit_test(test_json),
	        cmocka_unit_test(test_json_survives_junk),
	        cmocka_unit_test(test_level_filter_and_parse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
