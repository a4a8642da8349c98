/*
 * apikeys: gRPC callers' API keys. See apikeys.h.
 *
 * File format (LIVEHUB_API_KEYS_FILE), a JSON array:
 *   [{"name": "jobs", "key_sha256": "<64 hex>", "scopes": ["publish"],
 *     "tenants": ["acme"]},
 *    {"name": "ops", "key": "<the key itself>", "scopes": ["admin"]}]
 * Compact format (LIVEHUB_API_KEYS), entries separated by ',':
 *   NAME:SCOPE[+SCOPE][:TENANT[+TENANT]]=KEY   or   ...=sha256:<64 hex>
 * e.g. "jobs:publish:acme+globex=k3y...,ops:admin=sha256:9f86d0...".
 */
#include "apikeys.h"

#include <ctype.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "livehub.h"

/* Methods that publish: everything else needs admin. */
static const char *const publish_methods[] = {
        "PublishJobProgress", "PublishJobCompleted", "PublishJobFailed", "PublishPriceUpdated",
        "PublishOrderStatus", "BroadcastTenant",     "SendToUser",       "Publish",
        "PublishStream",
};

unsigned apikeys_method_scope(const char *method)
{
	for (size_t i = 0; i < sizeof publish_methods / sizeof publish_methods[0]; i++)
		if (strcmp(method, publish_methods[i]) == 0)
			return APIKEY_SCOPE_PUBLISH;
	return APIKEY_SCOPE_ADMIN;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static bool name_ok(const char *s, size_t n)
{
	if (n == 0 || n > APIKEY_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
			return false;
	return true;
}

/* A literal key: APIKEY_MIN_LEN..APIKEY_MAX_LEN printable ASCII bytes, no
 * space or comma (so the compact form can hold any valid key). */
static bool key_ok(const char *s, size_t n)
{
	if (n < APIKEY_MIN_LEN || n > APIKEY_MAX_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] > '~' || s[i] == ',')
			return false;
	return true;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Parses 64 hex digits into 32 bytes; returns 0 or -1. */
static int parse_digest(const char *s, size_t n, unsigned char out[32])
{
	if (n != 64)
		return -1;
	for (size_t i = 0; i < 32; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return 0;
}

static void digest_of(const char *key, size_t n, unsigned char out[32])
{
	SHA256((const unsigned char *)key, n, out);
}

/* Adds one scope by name to k. */
static int add_scope(struct apikey *k, const char *s, size_t n)
{
	if (n == 7 && memcmp(s, "publish", 7) == 0)
		k->scopes |= APIKEY_SCOPE_PUBLISH;
	else if (n == 5 && memcmp(s, "admin", 5) == 0)
		k->scopes |= APIKEY_SCOPE_ADMIN | APIKEY_SCOPE_PUBLISH;
	else
		return -1;
	return 0;
}

static int add_tenant(struct apikey *k, const char *s, size_t n)
{
	if (!name_tenant_ok(s, n) || k->ntenants >= APIKEY_MAX_TENANTS)
		return -1;
	memcpy(k->tenants[k->ntenants], s, n);
	k->tenants[k->ntenants++][n] = '\0';
	return 0;
}

/* Appends a zeroed entry to t; NULL when out of memory. */
static struct apikey *push(struct apikeys *t)
{
	struct apikey *k = realloc(t->keys, (t->n + 1) * sizeof *k);
	if (!k)
		return NULL;
	t->keys = k;
	memset(&k[t->n], 0, sizeof *k);
	return &k[t->n++];
}

/* Refuses a second key with the same name or the same digest. */
static int check_unique(const struct apikeys *t, const char *from, char *err, size_t errlen)
{
	const struct apikey *last = &t->keys[t->n - 1];
	for (size_t i = 0; i + 1 < t->n; i++) {
		if (strcmp(t->keys[i].name, last->name) == 0)
			return fail(err, errlen, "%s: key name \"%s\" is used twice", from,
			            last->name);
		if (memcmp(t->keys[i].digest, last->digest, 32) == 0)
			return fail(err, errlen, "%s: keys \"%s\" and \"%s\" are the same key",
			            from, t->keys[i].name, last->name);
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * The JSON file.
 * ---------------------------------------------------------------------- */

/* Reads the string array field of o into k with add (scopes or tenants). */
static int json_list(json_t *o, const char *field, struct apikey *k,
                     int (*add)(struct apikey *, const char *, size_t), const char *from, char *err,
                     size_t errlen)
{
	json_t *a = json_object_get(o, field);
	if (!a)
		return 0;
	if (!json_is_array(a))
		return fail(err, errlen, "%s: \"%s\" must be an array of strings", from, field);
	size_t i;
	json_t *v;
	json_array_foreach(a, i, v)
	{
		if (!json_is_string(v) || add(k, json_string_value(v), json_string_length(v)) != 0)
			return fail(err, errlen, "%s: \"%s\"[%zu] is not a valid %s", from, field,
			            i, add == add_scope ? "scope (publish, admin)" : "tenant id");
	}
	return 0;
}

/* Fills k from one array element o. */
static int json_entry(json_t *o, struct apikey *k, const char *from, char *err, size_t errlen)
{
	static const char *const known[] = {"name", "key", "key_sha256", "scopes", "tenants"};
	if (!json_is_object(o))
		return fail(err, errlen, "%s: must be an object", from);
	const char *field;
	json_t *v;
	json_object_foreach(o, field, v)
	{
		bool ok = false;
		for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
			ok |= strcmp(field, known[i]) == 0;
		if (!ok)
			return fail(err, errlen,
			            "%s: unknown field \"%.40s\" (name, key, key_sha256, scopes, "
			            "tenants)",
			            from, field);
	}
	json_t *name = json_object_get(o, "name");
	if (!json_is_string(name) || !name_ok(json_string_value(name), json_string_length(name)))
		return fail(err, errlen,
		            "%s: \"name\" must be 1-%d characters of A-Z a-z 0-9 _ . -", from,
		            APIKEY_NAME_MAX);
	strcpy(k->name, json_string_value(name));
	json_t *key = json_object_get(o, "key"), *sha = json_object_get(o, "key_sha256");
	if (!key == !sha)
		return fail(err, errlen,
		            "%s (\"%s\"): give exactly one of \"key\" and \"key_sha256\"", from,
		            k->name);
	if (key) {
		if (!json_is_string(key) ||
		    !key_ok(json_string_value(key), json_string_length(key)))
			return fail(err, errlen,
			            "%s (\"%s\"): \"key\" must be %d-%d printable ASCII characters "
			            "without spaces or commas",
			            from, k->name, APIKEY_MIN_LEN, APIKEY_MAX_LEN);
		digest_of(json_string_value(key), json_string_length(key), k->digest);
	} else if (!json_is_string(sha) ||
	           parse_digest(json_string_value(sha), json_string_length(sha), k->digest)) {
		return fail(err, errlen, "%s (\"%s\"): \"key_sha256\" must be 64 hex digits", from,
		            k->name);
	}
	if (json_list(o, "scopes", k, add_scope, from, err, errlen) ||
	    json_list(o, "tenants", k, add_tenant, from, err, errlen))
		return -1;
	if (!k->scopes)
		return fail(err, errlen, "%s (\"%s\"): \"scopes\" must name publish and/or admin",
		            from, k->name);
	return 0;
}

static int load_file(struct apikeys *t, const char *path, char *err, size_t errlen)
{
	json_error_t e;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
	if (!root)
		return fail(err, errlen, "LIVEHUB_API_KEYS_FILE %s: %s (line %d)", path, e.text,
		            e.line);
	int rc = 0;
	if (!json_is_array(root))
		rc = fail(err, errlen, "LIVEHUB_API_KEYS_FILE %s: must be a JSON array of keys",
		          path);
	size_t i;
	json_t *o;
	json_array_foreach(root, i, o)
	{
		char from[300];
		snprintf(from, sizeof from, "LIVEHUB_API_KEYS_FILE %s: entry %zu", path, i);
		if (rc)
			break;
		struct apikey *k = push(t);
		if (!k) {
			rc = fail(err, errlen, "out of memory");
			break;
		}
		rc = json_entry(o, k, from, err, errlen) || check_unique(t, from, err, errlen) ? -1
		                                                                               : 0;
	}
	json_decref(root);
	return rc;
}

/* ------------------------------------------------------------------------
 * The compact form.
 * ---------------------------------------------------------------------- */

/* Splits s[0..n) at sep into the callback add, piece by piece. */
static int split_add(struct apikey *k, const char *s, size_t n, char sep,
                     int (*add)(struct apikey *, const char *, size_t))
{
	while (n > 0) {
		const char *e = memchr(s, sep, n);
		size_t len = e ? (size_t)(e - s) : n;
		if (add(k, s, len))
			return -1;
		if (!e)
			return 0;
		n -= len + 1;
		s = e + 1;
		if (n == 0)
			return -1; /* a trailing separator */
	}
	return -1;
}

/* Parses one entry NAME:SCOPES[:TENANTS]=KEY of length n. */
static int compact_entry(struct apikey *k, const char *s, size_t n, size_t idx, char *err,
                         size_t errlen)
{
	const char *eq = memchr(s, '=', n);
	const char *c1 = memchr(s, ':', eq ? (size_t)(eq - s) : n);
	if (!eq || !c1)
		return fail(err, errlen,
		            "LIVEHUB_API_KEYS: entry %zu: must be NAME:SCOPES[:TENANTS]=KEY", idx);
	size_t nlen = (size_t)(c1 - s);
	if (!name_ok(s, nlen))
		return fail(err, errlen,
		            "LIVEHUB_API_KEYS: entry %zu: the name must be 1-%d characters of "
		            "A-Z a-z 0-9 _ . -",
		            idx, APIKEY_NAME_MAX);
	memcpy(k->name, s, nlen);
	k->name[nlen] = '\0';
	const char *sc = c1 + 1;
	const char *c2 = memchr(sc, ':', (size_t)(eq - sc));
	const char *sc_end = c2 ? c2 : eq;
	if (split_add(k, sc, (size_t)(sc_end - sc), '+', add_scope))
		return fail(err, errlen,
		            "LIVEHUB_API_KEYS: entry %zu (\"%s\"): scopes must be publish and/or "
		            "admin, joined by +",
		            idx, k->name);
	if (c2 && split_add(k, c2 + 1, (size_t)(eq - c2 - 1), '+', add_tenant))
		return fail(err, errlen,
		            "LIVEHUB_API_KEYS: entry %zu (\"%s\"): tenants must be valid tenant "
		            "ids joined by + (at most %d)",
		            idx, k->name, APIKEY_MAX_TENANTS);
	const char *key = eq + 1;
	size_t klen = n - (size_t)(key - s);
	if (klen > 7 && memcmp(key, "sha256:", 7) == 0) {
		if (parse_digest(key + 7, klen - 7, k->digest))
			return fail(
			        err, errlen,
			        "LIVEHUB_API_KEYS: entry %zu (\"%s\"): sha256: must be followed "
			        "by 64 hex digits",
			        idx, k->name);
		return 0;
	}
	if (!key_ok(key, klen))
		return fail(err, errlen,
		            "LIVEHUB_API_KEYS: entry %zu (\"%s\"): the key must be %d-%d printable "
		            "ASCII characters without spaces or commas",
		            idx, k->name, APIKEY_MIN_LEN, APIKEY_MAX_LEN);
	digest_of(key, klen, k->digest);
	return 0;
}

static int load_compact(struct apikeys *t, const char *s, char *err, size_t errlen)
{
	size_t idx = 0;
	while (*s) {
		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		const char *end = strchr(s, ',');
		size_t n = end ? (size_t)(end - s) : strlen(s);
		while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n'))
			n--;
		if (n > 0) {
			struct apikey *k = push(t);
			if (!k)
				return fail(err, errlen, "out of memory");
			if (compact_entry(k, s, n, idx, err, errlen) ||
			    check_unique(t, "LIVEHUB_API_KEYS", err, errlen))
				return -1;
		}
		idx++;
		if (!end)
			break;
		s = end + 1;
	}
	return 0;
}

int apikeys_load(const char *path, const char *compact, struct apikeys **out, char *err,
                 size_t errlen)
{
	*out = NULL;
	struct apikeys *t = calloc(1, sizeof *t);
	if (!t)
		return fail(err, errlen, "out of memory");
	if ((path && *path && load_file(t, path, err, errlen)) ||
	    (compact && *compact && load_compact(t, compact, err, errlen))) {
		apikeys_free(t);
		return -1;
	}
	if (t->n == 0) {
		apikeys_free(t);
		return 0;
	}
	*out = t;
	return 0;
}

void apikeys_free(struct apikeys *t)
{
	if (!t)
		return;
	if (t->keys)
		OPENSSL_cleanse(t->keys, t->n * sizeof *t->keys);
	free(t->keys);
	free(t);
}

/* ------------------------------------------------------------------------
 * Checks.
 * ---------------------------------------------------------------------- */

/* The entry whose digest equals that of key, or NULL. Compares with every
 * entry, in constant time each, whatever matches. */
static const struct apikey *find(const struct apikeys *t, const char *key, size_t n)
{
	unsigned char d[32];
	digest_of(key, n, d);
	const struct apikey *hit = NULL;
	for (size_t i = 0; i < t->n; i++) {
		bool eq = CRYPTO_memcmp(d, t->keys[i].digest, sizeof d) == 0;
		hit = eq ? &t->keys[i] : hit;
	}
	OPENSSL_cleanse(d, sizeof d);
	return hit;
}

enum apikey_verdict apikeys_check(const struct apikeys *t, const char *value, size_t len,
                                  unsigned scope, const struct apikey **key, char *msg,
                                  size_t msglen)
{
	*key = NULL;
	if (!value) {
		snprintf(msg, msglen,
		         "missing authorization metadata (authorization: Bearer <key>)");
		return APIKEY_MISSING;
	}
	if (len < 7 || strncasecmp(value, "Bearer ", 7) != 0 || len - 7 > APIKEY_MAX_LEN ||
	    len == 7) {
		snprintf(msg, msglen, "authorization metadata must be \"Bearer <key>\"");
		return APIKEY_MALFORMED;
	}
	const struct apikey *k = find(t, value + 7, len - 7);
	if (!k) {
		snprintf(msg, msglen, "invalid API key");
		return APIKEY_UNKNOWN;
	}
	*key = k;
	if ((k->scopes & scope) != scope) {
		snprintf(msg, msglen, "API key \"%s\" lacks the %s scope this method needs",
		         k->name, scope & APIKEY_SCOPE_ADMIN ? "admin" : "publish");
		return APIKEY_SCOPE;
	}
	return APIKEY_OK;
}

bool apikeys_tenant_ok(const struct apikey *key, const char *tenant, size_t len, const char *field,
                       char *msg, size_t msglen)
{
	if (!key || key->ntenants == 0)
		return true;
	for (int i = 0; i < key->ntenants; i++)
		if (strlen(key->tenants[i]) == len && memcmp(key->tenants[i], tenant, len) == 0)
			return true;
	/* A tenant id is printed only when it is a valid one (it came from the
	 * caller). */
	if (name_tenant_ok(tenant, len))
		snprintf(msg, msglen, "%s: API key \"%s\" may not act for tenant \"%.*s\"", field,
		         key->name, (int)len, tenant);
	else
		snprintf(msg, msglen, "%s: API key \"%s\" may not act for this tenant", field,
		         key->name);
	return false;
}

int apikeys_generate(char key[44], char hex[65])
{
	static const char b64[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	unsigned char raw[33] = {0}, d[32];
	if (RAND_bytes(raw, 32) != 1)
		return -1;
	/* 32 bytes = 10 groups of 3, then 2 bytes: 40 + 3 characters. */
	size_t o = 0;
	for (size_t i = 0; i < 32; i += 3) {
		unsigned v = (unsigned)raw[i] << 16 | (unsigned)raw[i + 1] << 8 |
		             (i + 2 < 32 ? raw[i + 2] : 0);
		key[o++] = b64[v >> 18 & 63];
		key[o++] = b64[v >> 12 & 63];
		key[o++] = b64[v >> 6 & 63];
		if (i + 2 < 32)
			key[o++] = b64[v & 63];
	}
	key[o] = '\0';
	digest_of(key, o, d);
	for (size_t i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
	OPENSSL_cleanse(raw, sizeof raw);
	return 0;
}

/* ------------------------------------------------------------------------
 * The store.
 * ---------------------------------------------------------------------- */

void apikeys_store_init(struct apikeys_store *s, struct apikeys *t)
{
	atomic_init(&s->cur, t);
	s->retired = NULL;
}

void apikeys_store_swap(struct apikeys_store *s, struct apikeys *t)
{
	struct apikeys *old = atomic_exchange_explicit(&s->cur, t, memory_order_acq_rel);
	if (old) {
		old->retired_next = s->retired;
		s->retired = old;
	}
}

const struct apikeys *apikeys_store_get(struct apikeys_store *s)
{
	return atomic_load_explicit(&s->cur, memory_order_acquire);
}

void apikeys_store_free(struct apikeys_store *s)
{
	apikeys_free(atomic_exchange(&s->cur, NULL));
	while (s->retired) {
		struct apikeys *t = s->retired;
		s->retired = t->retired_next;
		apikeys_free(t);
	}
}
