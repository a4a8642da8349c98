/*
 * auth: JWT verification for WebSocket clients, channel rights, and minting
 * of development tokens. The only module that touches libjwt and OpenSSL.
 *
 * Keys. Several keys may be configured at once (rotation), each with its
 * algorithm pinned by configuration and an optional key id (`kid`):
 * HS256/384/512 (shared secrets), RS256/384/512 (RSA public keys, PEM) and
 * ES256/384 (EC P-256/P-384 public keys, PEM). A token whose header names a
 * kid is checked with that key only, and only if the key's algorithm is the
 * token's `alg`; a token without kid is tried against every key whose
 * algorithm equals its `alg`. `none` and any other algorithm are refused, so
 * a token can never choose how a key is used (no HS/RS confusion).
 *
 * Claims. `exp`, `nbf` and `iat` (not in the future) with leeway; `iss` and
 * `aud` (a string or an array) when configured; the user claim (default
 * `sub`) and the tenant claim (default `tenant_id`) must be valid names
 * (name_user_ok/name_tenant_ok). Optional rights claims restrict what the
 * connection may do: `channels` (patterns it may subscribe to), `publish`
 * (false, true, or patterns for client events) and `role: "guest"` (the
 * configured guest patterns, no publishing). See docs/SECURITY.md.
 *
 * Threads: an struct auth is read-only once built; any thread may verify
 * with it. Tokens are never logged; reasons are static, client-safe texts.
 */
#ifndef LH_AUTH_H
#define LH_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "names.h"

struct auth;
struct auth_rights;

/* Longest token accepted, in bytes. */
#define AUTH_TOKEN_MAX 8192

struct auth_config {
	const char *secret; /* HS256 key bytes without a kid (LIVEHUB_JWT_SECRET); may be NULL */
	size_t secret_len;
	const char *keys; /* LIVEHUB_JWT_KEYS: "kid:ALG:SOURCE,..." (SOURCE: env:VAR, file:PATH
	                     or PATH); may be NULL or "" */
	const char *tenant_claim;   /* claim naming the tenant, default "tenant_id" */
	const char *user_claim;     /* claim naming the user, default "sub" */
	int leeway_s;               /* clock skew allowed on exp/nbf/iat */
	const char *issuer;         /* required `iss`, NULL or "" = not checked */
	const char *audience;       /* required in `aud`, NULL or "" = not checked */
	const char *guest_channels; /* comma-separated patterns for role "guest" */
};

struct auth_identity {
	char tenant[LH_TENANT_MAX + 1];
	char user[LH_USER_MAX + 1];
	int64_t exp;                /* 0 when the token has no exp */
	struct auth_rights *rights; /* owned (auth_rights_free); NULL: no restriction */
};

enum auth_action {
	AUTH_SUBSCRIBE, /* subscribe to a channel */
	AUTH_PUBLISH,   /* publish a client event on a channel */
};

/* Returns an auth context (copies what it needs from cfg and reads the key
 * files), or NULL with a message in err (errlen bytes; never key material)
 * when a key cannot be used or there is no key at all. */
struct auth *auth_new(const struct auth_config *cfg, char *err, size_t errlen);
void auth_free(struct auth *a);

/* The leeway a was configured with, in seconds. */
int auth_leeway(const struct auth *a);

/* Verifies token (NUL-terminated). Returns 0 and fills *id (the caller
 * then owns id->rights), or LH_EAUTH / LH_EEXPIRED with *why set to a
 * static, client-safe reason and id->rights NULL. */
int auth_verify(struct auth *a, const char *token, struct auth_identity *id, const char **why);

/* May the holder of id do act on channel (a client channel name)? */
bool auth_allows(const struct auth_identity *id, enum auth_action act, const char *channel);
/* The same for rights alone (NULL: everything is allowed), for callers
 * that keep only the rights of a connection. */
bool auth_rights_allow(const struct auth_rights *r, enum auth_action act, const char *channel);
void auth_rights_free(struct auth_rights *r);

/* True when pattern (channel characters and '*', which matches any run of
 * characters, ':' included) matches channel. */
bool auth_pattern_match(const char *pattern, const char *channel);

/* Mints an HS256 token for (tenant, user) valid for ttl_s seconds (0: no
 * exp), with the given claim names (NULL: tenant_id, sub). Returns a
 * malloc'd string the caller frees, or NULL. */
char *auth_mint(const char *secret, size_t secret_len, const char *tenant_claim,
                const char *user_claim, const char *tenant, const char *user, int64_t ttl_s);

/* Fills out with n random bytes from the OS CSPRNG; returns 0 or LH_EIO. */
int auth_random(void *out, size_t n);

#endif
