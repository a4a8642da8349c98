/*
 * auth: JWT verification for WebSocket clients (libjwt) and minting of
 * development tokens. The only module that touches libjwt and OpenSSL.
 *
 * A token is accepted when its signature verifies with the configured key
 * under the configured algorithm (the token's own `alg` must equal it: no
 * alg confusion, no `none`), `exp`/`nbf` hold with leeway, and it carries a
 * user (`sub`) and a tenant claim that pass name_user_ok/name_tenant_ok.
 */
#ifndef LH_AUTH_H
#define LH_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "names.h"

struct auth;

struct auth_config {
	const char *secret; /* HS256 key bytes */
	size_t secret_len;
	const char *tenant_claim; /* claim naming the tenant, default "tenant_id" */
	int leeway_s;             /* clock skew allowed on exp/nbf */
};

struct auth_identity {
	char tenant[LH_TENANT_MAX + 1];
	char user[LH_USER_MAX + 1];
	int64_t exp; /* 0 when the token has no exp */
};

/* Returns an auth context (copies what it needs from cfg), or NULL. */
struct auth *auth_new(const struct auth_config *cfg);
void auth_free(struct auth *a);

/* Verifies token (NUL-terminated). Returns 0 and fills *id, or LH_EAUTH /
 * LH_EEXPIRED with *why set to a static, client-safe reason. */
int auth_verify(struct auth *a, const char *token, struct auth_identity *id, const char **why);

/* Mints an HS256 token for (tenant, user) valid for ttl_s seconds (0: no
 * exp). Returns a malloc'd string the caller frees, or NULL. */
char *auth_mint(const char *secret, size_t secret_len, const char *tenant_claim, const char *tenant,
                const char *user, int64_t ttl_s);

/* Fills out with n random bytes from the OS CSPRNG; returns 0 or LH_EIO. */
int auth_random(void *out, size_t n);

#endif
