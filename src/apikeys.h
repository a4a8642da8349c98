/*
 * apikeys: the API keys gRPC callers present as `authorization: Bearer
 * <key>` metadata, and what each key may do. No gRPC header here (rpc.c
 * extracts the metadata and asks), so all of it is unit-tested alone.
 *
 * A key has a name (what logs show; the key itself is never logged), the
 * SHA-256 digest of its secret (only the digest is kept in memory), scopes
 * (publish, admin; admin includes publish) and optionally the tenants it
 * may act for. Keys come from a JSON file (LIVEHUB_API_KEYS_FILE) and/or a
 * compact list (LIVEHUB_API_KEYS); docs/SECURITY.md has both formats.
 *
 * A presented key is hashed and its digest compared with every entry's by
 * CRYPTO_memcmp, always over the whole table: the time taken depends on
 * neither the key's length nor which entry (if any) matched.
 *
 * Threads: a table is immutable once built and may be read from any thread.
 * struct apikeys_store swaps tables for SIGHUP and keeps the old ones until
 * apikeys_store_free, so a call that holds an entry never sees it freed.
 */
#ifndef LH_APIKEYS_H
#define LH_APIKEYS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "names.h"

#define APIKEY_NAME_MAX    64
#define APIKEY_MAX_TENANTS 64
#define APIKEY_MIN_LEN     16  /* a literal key shorter than this is refused */
#define APIKEY_MAX_LEN     512 /* a presented key longer than this is refused */

enum apikey_scope {
	APIKEY_SCOPE_PUBLISH = 1 << 0,
	APIKEY_SCOPE_ADMIN = 1 << 1, /* every method, publish included */
};

struct apikey {
	char name[APIKEY_NAME_MAX + 1];
	unsigned char digest[32]; /* SHA-256 of the key */
	unsigned scopes;          /* APIKEY_SCOPE_* bits */
	int ntenants;             /* 0: any tenant */
	char tenants[APIKEY_MAX_TENANTS][LH_TENANT_MAX + 1];
};

struct apikeys {
	size_t n;
	struct apikey *keys;
	struct apikeys *retired_next; /* apikeys_store's list of old tables */
};

/* Builds a table from the JSON file at path (NULL or "": none) and the
 * compact list (NULL or "": none). Returns 0 and *out (NULL when no key is
 * configured at all), or -1 with err (size errlen) naming the source and
 * the problem; nothing of a key is ever put into err. */
int apikeys_load(const char *path, const char *compact, struct apikeys **out, char *err,
                 size_t errlen);
void apikeys_free(struct apikeys *t);

/* The scope a method needs, by its name in the service ("PublishJobProgress").
 * Publishing methods need publish; every other method, including ones
 * added to the service later, needs admin. */
unsigned apikeys_method_scope(const char *method);

enum apikey_verdict {
	APIKEY_OK,
	APIKEY_MISSING,   /* no authorization metadata: UNAUTHENTICATED */
	APIKEY_MALFORMED, /* not "Bearer <key>": UNAUTHENTICATED */
	APIKEY_UNKNOWN,   /* no such key: UNAUTHENTICATED */
	APIKEY_SCOPE,     /* known key without the method's scope: PERMISSION_DENIED */
};

/* Checks the value of the caller's authorization header (value, len; NULL
 * when absent) against t for a method needing scope. Sets *key to the
 * matching entry (also for APIKEY_SCOPE), else NULL; fills msg (a status
 * message for the caller, without the key) unless the verdict is OK. */
enum apikey_verdict apikeys_check(const struct apikeys *t, const char *value, size_t len,
                                  unsigned scope, const struct apikey **key, char *msg,
                                  size_t msglen);

/* Whether key may act for tenant (len bytes). On false, fills msg with a
 * PERMISSION_DENIED message naming field and the tenant. A NULL key (no
 * keys configured) may act for every tenant. */
bool apikeys_tenant_ok(const struct apikey *key, const char *tenant, size_t len, const char *field,
                       char *msg, size_t msglen);

/* Makes a new random key: 32 bytes from the OS CSPRNG, base64url without
 * padding (43 characters) into key (at least 44 bytes), and its SHA-256 as
 * 64 lower-case hex digits into hex (65 bytes). Returns 0 or -1. */
int apikeys_generate(char key[44], char hex[65]);

/* The current table of a running server, swapped on SIGHUP. */
struct apikeys_store {
	_Atomic(struct apikeys *) cur; /* NULL: no keys (development mode) */
	struct apikeys *retired;       /* signal thread: old tables, freed at the end */
};

void apikeys_store_init(struct apikeys_store *s, struct apikeys *t);
/* Installs t (ownership passes to s); the old table stays allocated. Only
 * one thread may swap (the signal thread). */
void apikeys_store_swap(struct apikeys_store *s, struct apikeys *t);
/* The current table, NULL in development mode; valid until
 * apikeys_store_free. Any thread. */
const struct apikeys *apikeys_store_get(struct apikeys_store *s);
/* Frees the current and every retired table. */
void apikeys_store_free(struct apikeys_store *s);

#endif
