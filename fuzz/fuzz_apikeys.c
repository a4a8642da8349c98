/*
 * libFuzzer target: the API-key paths. The input is checked as a caller's
 * authorization metadata value against a fixed table (what any network
 * caller controls), then parsed as a LIVEHUB_API_KEYS list and, when that
 * parses, used as the table for the same check. Must never crash or leak.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apikeys.h"

static const struct apikeys *fixed(void)
{
	static struct apikeys *t;
	char err[256];
	if (!t && apikeys_load(NULL,
	                       "jobs:publish:acme+globex=fuzz-key-0123456789ab,"
	                       "ops:admin=sha256:"
	                       "a2d66a5c8da1ae1c6960cd76f9077f120e390f653274d9bd25cc70b9e5ed46de",
	                       &t, err, sizeof err))
		abort();
	return t;
}

static void check(const struct apikeys *t, const char *v, size_t n)
{
	const struct apikey *k;
	char msg[256];
	enum apikey_verdict r = apikeys_check(t, v, n, APIKEY_SCOPE_PUBLISH, &k, msg, sizeof msg);
	if ((r == APIKEY_OK || r == APIKEY_SCOPE) != (k != NULL))
		abort();
	if (k)
		apikeys_tenant_ok(k, v, n, "tenant_id", msg, sizeof msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	check(fixed(), s, size);
	struct apikeys *t = NULL;
	char err[512];
	if (apikeys_load(NULL, s, &t, err, sizeof err) == 0 && t) {
		check(t, s, size);
		apikeys_free(t);
	}
	free(s);
	return 0;
}
