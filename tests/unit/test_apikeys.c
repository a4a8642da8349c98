/* Unit tests of apikeys.c: both formats, every refusal, scopes, tenants,
 * the method table's safe default and the store's swap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "apikeys.h"

#define PUB_KEY   "pub-key-0123456789abcdef"
#define ADMIN_KEY "admin-key-0123456789abcdef"
/* sha256("sha-key-0123456789abcdef") */
#define SHA_KEY "sha-key-0123456789abcdef"
#define SHA_HEX "a2d66a5c8da1ae1c6960cd76f9077f120e390f653274d9bd25cc70b9e5ed46de"

static char msg[256];
static char err[512];

static enum apikey_verdict check(const struct apikeys *t, const char *header, unsigned scope,
                                 const struct apikey **k)
{
	return apikeys_check(t, header, header ? strlen(header) : 0, scope, k, msg, sizeof msg);
}

static struct apikeys *load_compact(const char *s)
{
	struct apikeys *t = NULL;
	int rc = apikeys_load(NULL, s, &t, err, sizeof err);
	if (rc)
		fail_msg("load failed: %s", err);
	return t;
}

/* Writes text to a temporary file; returns its path (static buffer). */
static const char *tmp_file(const char *text)
{
	static char path[64];
	strcpy(path, "/tmp/test_apikeys_XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

static void test_compact_scopes_and_keys(void **state)
{
	struct apikeys *t =
	        load_compact("jobs:publish:acme+globex=" PUB_KEY ", ops:admin=" ADMIN_KEY);
	assert_non_null(t);
	assert_int_equal(t->n, 2);
	const struct apikey *k;

	assert_int_equal(check(t, "Bearer " PUB_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	assert_string_equal(k->name, "jobs");
	assert_int_equal(k->ntenants, 2);
	assert_int_equal(check(t, "bearer " PUB_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	/* Under-scoped: known key, named in the message; the key is not. */
	assert_int_equal(check(t, "Bearer " PUB_KEY, APIKEY_SCOPE_ADMIN, &k), APIKEY_SCOPE);
	assert_string_equal(k->name, "jobs");
	assert_non_null(strstr(msg, "\"jobs\""));
	assert_non_null(strstr(msg, "admin"));
	assert_null(strstr(msg, PUB_KEY));
	/* Admin includes publish. */
	assert_int_equal(check(t, "Bearer " ADMIN_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	assert_int_equal(check(t, "Bearer " ADMIN_KEY, APIKEY_SCOPE_ADMIN, &k), APIKEY_OK);
	assert_string_equal(k->name, "ops");
	assert_int_equal(k->ntenants, 0);
	apikeys_free(t);
}

static void test_refusals(void **state)
{
	struct apikeys *t = load_compact("jobs:publish=" PUB_KEY);
	const struct apikey *k;
	assert_int_equal(check(t, NULL, APIKEY_SCOPE_PUBLISH, &k), APIKEY_MISSING);
	assert_null(k);
	assert_string_equal(msg, "missing authorization metadata (authorization: Bearer <key>)");
	assert_int_equal(check(t, PUB_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_MALFORMED);
	assert_int_equal(check(t, "Bearer ", APIKEY_SCOPE_PUBLISH, &k), APIKEY_MALFORMED);
	assert_int_equal(check(t, "Basic " PUB_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_MALFORMED);
	assert_int_equal(check(t, "Bearer " PUB_KEY "x", APIKEY_SCOPE_PUBLISH, &k), APIKEY_UNKNOWN);
	assert_null(k);
	assert_string_equal(msg, "invalid API key");
	assert_int_equal(check(t, "Bearer pub-key-0123456789abcde", APIKEY_SCOPE_PUBLISH, &k),
	                 APIKEY_UNKNOWN);
	char big[APIKEY_MAX_LEN + 20];
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	memcpy(big, "Bearer ", 7);
	assert_int_equal(check(t, big, APIKEY_SCOPE_PUBLISH, &k), APIKEY_MALFORMED);
	/* A value with an embedded NUL is compared over its whole length. */
	const char nul[] = "Bearer " PUB_KEY "\0tail";
	assert_int_equal(
	        apikeys_check(t, nul, sizeof nul - 1, APIKEY_SCOPE_PUBLISH, &k, msg, sizeof msg),
	        APIKEY_UNKNOWN);
	apikeys_free(t);
}

static void test_tenants(void **state)
{
	struct apikeys *t = load_compact("jobs:publish:acme=" PUB_KEY ",all:publish=" ADMIN_KEY);
	const struct apikey *k;
	assert_int_equal(check(t, "Bearer " PUB_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	assert_true(apikeys_tenant_ok(k, "acme", 4, "tenant_id", msg, sizeof msg));
	assert_false(apikeys_tenant_ok(k, "acm", 3, "tenant_id", msg, sizeof msg));
	assert_false(apikeys_tenant_ok(k, "globex", 6, "tenant_id", msg, sizeof msg));
	assert_string_equal(msg, "tenant_id: API key \"jobs\" may not act for tenant \"globex\"");
	/* A tenant that is not a valid id is not echoed. */
	assert_false(apikeys_tenant_ok(k, "a\"b", 3, "tenant_id", msg, sizeof msg));
	assert_null(strchr(msg + strlen("tenant_id: API key \"jobs\""), '"'));
	assert_int_equal(check(t, "Bearer " ADMIN_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	assert_true(apikeys_tenant_ok(k, "globex", 6, "tenant_id", msg, sizeof msg));
	assert_true(apikeys_tenant_ok(NULL, "x", 1, "tenant_id", msg, sizeof msg));
	apikeys_free(t);
}

static void test_file_format(void **state)
{
	const char *path = tmp_file(
	        "[{\"name\":\"jobs\",\"key_sha256\":\"" SHA_HEX "\",\"scopes\":[\"publish\"],"
	        "\"tenants\":[\"acme\"]},"
	        "{\"name\":\"ops\",\"key\":\"" ADMIN_KEY "\",\"scopes\":[\"admin\"]}]");
	struct apikeys *t = NULL;
	assert_int_equal(apikeys_load(path, "more:publish=" PUB_KEY, &t, err, sizeof err), 0);
	unlink(path);
	assert_int_equal(t->n, 3);
	const struct apikey *k;
	assert_int_equal(check(t, "Bearer " SHA_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	assert_string_equal(k->name, "jobs");
	assert_int_equal(check(t, "Bearer " ADMIN_KEY, APIKEY_SCOPE_ADMIN, &k), APIKEY_OK);
	assert_int_equal(check(t, "Bearer " PUB_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	assert_string_equal(k->name, "more");
	apikeys_free(t);
}

static void test_compact_sha256(void **state)
{
	struct apikeys *t = load_compact("jobs:publish=sha256:" SHA_HEX);
	const struct apikey *k;
	assert_int_equal(check(t, "Bearer " SHA_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	assert_int_equal(check(t, "Bearer sha256:" SHA_HEX, APIKEY_SCOPE_PUBLISH, &k),
	                 APIKEY_UNKNOWN);
	apikeys_free(t);
}

/* Each bad configuration is refused with a message naming the problem,
 * never containing the key. */
static void test_bad_config(void **state)
{
	static const struct {
		const char *compact;
		const char *want;
	} cases[] = {
	        {"jobs=" PUB_KEY, "NAME:SCOPES"},
	        {"jobs:publish", "NAME:SCOPES"},
	        {"jobs:write=" PUB_KEY, "scopes must be"},
	        {"jobs:publish+=" PUB_KEY, "scopes must be"},
	        {"jobs:publish:=" PUB_KEY, "tenants must be"},
	        {"jobs:publish:ac/me=" PUB_KEY, "tenants must be"},
	        {"jo bs:publish=" PUB_KEY, "the name must be"},
	        {"jobs:publish=short", "the key must be"},
	        {"jobs:publish=sha256:abcd", "64 hex digits"},
	        {"a:publish=" PUB_KEY ",a:admin=" ADMIN_KEY, "used twice"},
	        {"a:publish=" PUB_KEY ",b:admin=" PUB_KEY, "are the same key"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct apikeys *t = (void *)1;
		assert_int_equal(apikeys_load(NULL, cases[i].compact, &t, err, sizeof err), -1);
		assert_null(t);
		if (!strstr(err, cases[i].want))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].want);
		assert_null(strstr(err, PUB_KEY));
		assert_null(strstr(err, ADMIN_KEY));
	}
	static const struct {
		const char *file;
		const char *want;
	} files[] = {
	        {"{}", "must be a JSON array"},
	        {"[1]", "must be an object"},
	        {"[{\"name\":\"a\",\"scopes\":[\"publish\"]}]", "exactly one of"},
	        {"[{\"name\":\"a\",\"key\":\"" PUB_KEY "\"}]", "\"scopes\" must name"},
	        {"[{\"name\":\"a\",\"key\":\"" PUB_KEY "\",\"scopes\":[\"publish\"],\"x\":1}]",
	         "unknown field \"x\""},
	        {"[{\"name\":\"a\",\"key\":\"" PUB_KEY "\",\"scopes\":\"publish\"}]",
	         "must be an array"},
	        {"[{\"name\":\"a\",\"key\":\"" PUB_KEY "\",\"scopes\":[\"publish\"],"
	         "\"tenants\":[\"\"]}]",
	         "not a valid tenant id"},
	        {"[{\"name\":\"a\",\"key\":\"short\",\"scopes\":[\"publish\"]}]",
	         "\"key\" must be"},
	        {"[", "LIVEHUB_API_KEYS_FILE"},
	};
	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		const char *path = tmp_file(files[i].file);
		struct apikeys *t = NULL;
		assert_int_equal(apikeys_load(path, NULL, &t, err, sizeof err), -1);
		unlink(path);
		if (!strstr(err, files[i].want))
			fail_msg("file %zu: \"%s\" lacks \"%s\"", i, err, files[i].want);
		assert_null(strstr(err, PUB_KEY));
	}
	struct apikeys *t = (void *)1;
	assert_int_equal(apikeys_load("/nonexistent/keys.json", NULL, &t, err, sizeof err), -1);
	assert_non_null(strstr(err, "/nonexistent/keys.json"));
}

static void test_no_keys(void **state)
{
	struct apikeys *t = (void *)1;
	assert_int_equal(apikeys_load(NULL, NULL, &t, err, sizeof err), 0);
	assert_null(t);
	assert_int_equal(apikeys_load("", " , ", &t, err, sizeof err), 0);
	assert_null(t);
}

static void test_method_scopes(void **state)
{
	assert_int_equal(apikeys_method_scope("PublishJobProgress"), APIKEY_SCOPE_PUBLISH);
	assert_int_equal(apikeys_method_scope("Publish"), APIKEY_SCOPE_PUBLISH);
	assert_int_equal(apikeys_method_scope("PublishStream"), APIKEY_SCOPE_PUBLISH);
	assert_int_equal(apikeys_method_scope("SendToUser"), APIKEY_SCOPE_PUBLISH);
	assert_int_equal(apikeys_method_scope("GetStats"), APIKEY_SCOPE_ADMIN);
	/* Methods the table does not know (added later) need admin. */
	assert_int_equal(apikeys_method_scope("Disconnect"), APIKEY_SCOPE_ADMIN);
	assert_int_equal(apikeys_method_scope("History"), APIKEY_SCOPE_ADMIN);
	assert_int_equal(apikeys_method_scope("PublishSomethingNew"), APIKEY_SCOPE_ADMIN);
	assert_int_equal(apikeys_method_scope(""), APIKEY_SCOPE_ADMIN);
}

static void test_store_swap(void **state)
{
	struct apikeys_store s;
	apikeys_store_init(&s, NULL);
	assert_null(apikeys_store_get(&s));
	struct apikeys *a = load_compact("a:publish=" PUB_KEY);
	apikeys_store_swap(&s, a);
	const struct apikeys *held = apikeys_store_get(&s);
	const struct apikey *k;
	assert_int_equal(check(held, "Bearer " PUB_KEY, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	apikeys_store_swap(&s, load_compact("b:admin=" ADMIN_KEY));
	/* The old table and its entries stay valid for whoever holds them. */
	assert_string_equal(k->name, "a");
	assert_int_equal(check(apikeys_store_get(&s), "Bearer " PUB_KEY, APIKEY_SCOPE_PUBLISH, &k),
	                 APIKEY_UNKNOWN);
	apikeys_store_swap(&s, NULL);
	assert_null(apikeys_store_get(&s));
	apikeys_store_free(&s);
}

static void test_generate(void **state)
{
	char key[44], hex[65], key2[44], hex2[65], entry[200];
	assert_int_equal(apikeys_generate(key, hex), 0);
	assert_int_equal(apikeys_generate(key2, hex2), 0);
	assert_int_equal(strlen(key), 43);
	assert_int_equal(strlen(hex), 64);
	assert_string_not_equal(key, key2);
	assert_int_equal(
	        strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
	        43);
	/* The digest is the key's: a table holding only it accepts the key. */
	snprintf(entry, sizeof entry, "gen:publish=sha256:%s", hex);
	struct apikeys *t = load_compact(entry);
	char header[60];
	snprintf(header, sizeof header, "Bearer %s", key);
	const struct apikey *k;
	assert_int_equal(check(t, header, APIKEY_SCOPE_PUBLISH, &k), APIKEY_OK);
	snprintf(header, sizeof header, "Bearer %s", key2);
	assert_int_equal(check(t, header, APIKEY_SCOPE_PUBLISH, &k), APIKEY_UNKNOWN);
	apikeys_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_compact_scopes_and_keys),
	        cmocka_unit_test(test_refusals),
	        cmocka_unit_test(test_tenants),
	        cmocka_unit_test(test_file_format),
	        cmocka_unit_test(test_compact_sha256),
	        cmocka_unit_test(test_bad_config),
	        cmocka_unit_test(test_no_keys),
	        cmocka_unit_test(test_method_scopes),
	        cmocka_unit_test(test_store_swap),
	        cmocka_unit_test(test_generate),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
