/*
 * auth: JWT verification and development-token minting. See auth.h.
 *
 * Verification does not go through libjwt's jwt_decode(): libjwt 1.10
 * verifies with the algorithm named in the token's own header and compares
 * HMACs with strcmp() on their base64 text, which leaks timing. Here the
 * algorithm is pinned (the header must say HS256), the HMAC is computed with
 * OpenSSL and compared with CRYPTO_memcmp(), and the claims are read with
 * jansson. libjwt mints the development tokens, so the two paths check each
 * other in the tests.
 */
#include "auth.h"

#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "livehub.h"

#define TOKEN_MAX 8192

struct auth {
	unsigned char *secret;
	size_t secret_len;
	char tenant_claim[64];
	int leeway_s;
};

struct auth *auth_new(const struct auth_config *cfg)
{
	if (!cfg->secret || cfg->secret_len == 0)
		return NULL;
	struct auth *a = calloc(1, sizeof(*a));
	if (!a)
		return NULL;
	a->secret = malloc(cfg->secret_len);
	if (!a->secret) {
		free(a);
		return NULL;
	}
	memcpy(a->secret, cfg->secret, cfg->secret_len);
	a->secret_len = cfg->secret_len;
	snprintf(a->tenant_claim, sizeof(a->tenant_claim), "%s",
	         cfg->tenant_claim && *cfg->tenant_claim ? cfg->tenant_claim : "tenant_id");
	a->leeway_s = cfg->leeway_s;
	return a;
}

void auth_free(struct auth *a)
{
	if (!a)
		return;
	OPENSSL_cleanse(a->secret, a->secret_len);
	free(a->secret);
	free(a);
}

/* Decodes base64url text (no padding) of n bytes into out (room for
 * n * 3 / 4 + 3 bytes). Returns the decoded length, or -1 on a bad byte. */
static long b64url_decode(const char *s, size_t n, unsigned char *out)
{
	uint32_t acc = 0;
	int bits = 0;
	long o = 0;
	if (n % 4 == 1)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		int v;
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '-')
			v = 62;
		else if (c == '_')
			v = 63;
		else
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(acc >> bits);
		}
	}
	return o;
}

/* Decodes one base64url JSON segment into an object. NULL when malformed. */
static json_t *segment_json(const char *s, size_t n)
{
	unsigned char buf[TOKEN_MAX];
	long len = b64url_decode(s, n, buf);
	if (len < 0)
		return NULL;
	json_t *j = json_loadb((const char *)buf, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
	if (j && !json_is_object(j)) {
		json_decref(j);
		return NULL;
	}
	return j;
}

/* Checks the HS256 signature over "header.payload" in constant time. */
static bool signature_ok(const struct auth *a, const char *token, size_t signed_len,
                         const char *sig, size_t sig_len)
{
	unsigned char mac[EVP_MAX_MD_SIZE], given[64];
	unsigned int mac_len = 0;
	if (sig_len > 86) /* longer than a base64url SHA-256 MAC */
		return false;
	long given_len = b64url_decode(sig, sig_len, given);
	if (!HMAC(EVP_sha256(), a->secret, (int)a->secret_len, (const unsigned char *)token,
	          signed_len, mac, &mac_len))
		return false;
	return given_len == (long)mac_len && CRYPTO_memcmp(mac, given, mac_len) == 0;
}

/* Reads a NumericDate claim. Returns 1 and sets *out when present and a
 * number, 0 when absent, -1 when present but not a number. */
static int numeric_claim(json_t *claims, const char *name, int64_t *out)
{
	json_t *v = json_object_get(claims, name);
	if (!v)
		return 0;
	if (!json_is_number(v))
		return -1;
	double d = json_number_value(v);
	if (!isfinite(d) || d < -9e15 || d > 9e15)
		return -1;
	*out = (int64_t)floor(d);
	return 1;
}

/* Copies a string claim that must pass ok() into out. */
static bool string_claim(json_t *claims, const char *name, bool (*ok)(const char *, size_t),
                         char *out, size_t outlen)
{
	json_t *v = json_object_get(claims, name);
	if (!json_is_string(v))
		return false;
	size_t n = json_string_length(v);
	if (!ok(json_string_value(v), n) || n >= outlen)
		return false;
	memcpy(out, json_string_value(v), n + 1);
	return true;
}

static int check_claims(const struct auth *a, json_t *claims, struct auth_identity *id,
                        const char **why)
{
	int64_t now = (int64_t)time(NULL), exp = 0, nbf = 0;
	int has_exp = numeric_claim(claims, "exp", &exp);
	int has_nbf = numeric_claim(claims, "nbf", &nbf);
	if (has_exp < 0 || has_nbf < 0) {
		*why = "exp and nbf must be numbers";
		return LH_EAUTH;
	}
	if (has_exp && now > exp + a->leeway_s) {
		*why = "token expired";
		return LH_EEXPIRED;
	}
	if (has_nbf && now + a->leeway_s < nbf) {
		*why = "token not valid yet";
		return LH_EAUTH;
	}
	if (!string_claim(claims, "sub", name_user_ok, id->user, sizeof(id->user))) {
		*why = "sub claim missing or not a valid user id";
		return LH_EAUTH;
	}
	if (!string_claim(claims, a->tenant_claim, name_tenant_ok, id->tenant,
	                  sizeof(id->tenant))) {
		*why = "tenant claim missing or not a valid tenant id";
		return LH_EAUTH;
	}
	id->exp = has_exp ? exp : 0;
	return 0;
}

int auth_verify(struct auth *a, const char *token, struct auth_identity *id, const char **why)
{
	*why = "malformed token";
	size_t n = token ? strnlen(token, TOKEN_MAX + 1) : 0;
	if (n == 0 || n > TOKEN_MAX)
		return LH_EAUTH;
	const char *dot1 = memchr(token, '.', n);
	const char *dot2 = dot1 ? memchr(dot1 + 1, '.', n - (size_t)(dot1 + 1 - token)) : NULL;
	if (!dot1 || !dot2 || memchr(dot2 + 1, '.', n - (size_t)(dot2 + 1 - token)))
		return LH_EAUTH;

	json_t *head = segment_json(token, (size_t)(dot1 - token));
	if (!head)
		return LH_EAUTH; /* "malformed token" */
	json_t *alg = json_object_get(head, "alg");
	bool hs256 = json_is_string(alg) && strcmp(json_string_value(alg), "HS256") == 0;
	json_decref(head);
	if (!hs256) {
		*why = "token algorithm is not HS256";
		return LH_EAUTH;
	}
	if (!signature_ok(a, token, (size_t)(dot2 - token), dot2 + 1,
	                  n - (size_t)(dot2 + 1 - token))) {
		*why = "bad signature";
		return LH_EAUTH;
	}
	json_t *claims = segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
	if (!claims)
		return LH_EAUTH;
	memset(id, 0, sizeof(*id));
	int rc = check_claims(a, claims, id, why);
	json_decref(claims);
	return rc;
}

char *auth_mint(const char *secret, size_t secret_len, const char *tenant_claim, const char *tenant,
                const char *user, int64_t ttl_s)
{
	jwt_t *jwt = NULL;
	char *token = NULL;
	int64_t now = (int64_t)time(NULL);
	if (jwt_new(&jwt))
		return NULL;
	if (jwt_add_grant(jwt, "sub", user) ||
	    jwt_add_grant(jwt, tenant_claim && *tenant_claim ? tenant_claim : "tenant_id",
	                  tenant) ||
	    jwt_add_grant_int(jwt, "iat", (long)now) ||
	    (ttl_s > 0 && jwt_add_grant_int(jwt, "exp", (long)(now + ttl_s))) ||
	    jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)secret_len))
		goto out;
	/* libjwt 1.10 allocates the string with malloc(): the caller frees it. */
	token = jwt_encode_str(jwt);
out:
	jwt_free(jwt);
	return token;
}

int auth_random(void *out, size_t n)
{
	unsigned char *p = out;
	while (n > 0) {
		ssize_t r = getrandom(p, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return LH_EIO;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}
