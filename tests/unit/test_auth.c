/* Unit tests of auth.c: our HS256 verification against tokens minted by
 * libjwt, and every way a token can be refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "livehub.h"

#define SECRET "0123456789abcdef0123456789abcdef"

static struct auth *new_auth(void)
{
	struct auth_config c = {SECRET, strlen(SECRET), "tenant_id", 30};
	struct auth *a = auth_new(&c);
	assert_non_null(a);
	return a;
}

/* base64url of s without padding, into a static buffer. */
static const char *b64url(const char *s)
{
	static const char tbl[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	static char out[1024];
	size_t n = strlen(s), o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)(unsigned char)s[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)(unsigned char)s[i + 1] << 8;
		if (i + 2 < n)
			v |= (unsigned char)s[i + 2];
		out[o++] = tbl[(v >> 18) & 63];
		out[o++] = tbl[(v >> 12) & 63];
		if (i + 1 < n)
			out[o++] = tbl[(v >> 6) & 63];
		if (i + 2 < n)
			out[o++] = tbl[v & 63];
	}
	out[o] = '\0';
	return out;
}

static void test_minted_token_verifies(void **state)
{
	struct auth *a = new_auth();
	char *tok = auth_mint(SECRET, strlen(SECRET), "tenant_id", "acme", "alice@example.com", 60);
	assert_non_null(tok);
	struct auth_identity id;
	const char *why = NULL;
	assert_int_equal(auth_verify(a, tok, &id, &why), 0);
	assert_string_equal(id.tenant, "acme");
	assert_string_equal(id.user, "alice@example.com");
	assert_true(id.exp > (int64_t)time(NULL));
	free(tok);
	auth_free(a);
}

static void test_wrong_secret_refused(void **state)
{
	struct auth *a = new_auth();
	const char *other = "ffffffffffffffffffffffffffffffff";
	char *tok = auth_mint(other, strlen(other), "tenant_id", "acme", "alice", 60);
	struct auth_identity id;
	const char *why = NULL;
	assert_int_equal(auth_verify(a, tok, &id, &why), LH_EAUTH);
	assert_string_equal(why, "bad signature");
	free(tok);
	auth_free(a);
}

static void test_tampered_payload_refused(void **state)
{
	struct auth *a = new_auth();
	char *tok = auth_mint(SECRET, strlen(SECRET), "tenant_id", "acme", "alice", 60);
	/* Swap the payload for one naming another tenant, keep the signature. */
	char *dot1 = strchr(tok, '.'), *dot2 = strchr(dot1 + 1, '.');
	char forged[2048];
	snprintf(forged, sizeof(forged), "%.*s.%s%s", (int)(dot1 - tok), tok,
	         b64url("{\"sub\":\"alice\",\"tenant_id\":\"globex\"}"), dot2);
	struct auth_identity id;
	const char *why = NULL;
	assert_int_equal(auth_verify(a, forged, &id, &why), LH_EAUTH);
	free(tok);
	auth_free(a);
}

/* Builds an HS256 token over the given claims JSON, signed with SECRET. */
static void sign(char *out, size_t outlen, const char *claims)
{
	char signing[2048];
	unsigned char mac[64];
	unsigned int mac_len = 0;
	snprintf(signing, sizeof(signing), "%s.", b64url("{\"alg\":\"HS256\",\"typ\":\"JWT\"}"));
	strcat(signing, b64url(claims));
	HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)signing, strlen(signing),
	     mac, &mac_len);
	/* b64url() works on C strings; a MAC may hold NUL bytes, so encode by hand. */
	static const char tbl[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char sig[128];
	size_t o = 0;
	for (size_t i = 0; i < mac_len; i += 3) {
		uint32_t v = (uint32_t)mac[i] << 16;
		if (i + 1 < mac_len)
			v |= (uint32_t)mac[i + 1] << 8;
		if (i + 2 < mac_len)
			v |= mac[i + 2];
		sig[o++] = tbl[(v >> 18) & 63];
		sig[o++] = tbl[(v >> 12) & 63];
		if (i + 1 < mac_len)
			sig[o++] = tbl[(v >> 6) & 63];
		if (i + 2 < mac_len)
			sig[o++] = tbl[v & 63];
	}
	sig[o] = '\0';
	snprintf(out, outlen, "%s.%s", signing, sig);
}

static void test_time_claims(void **state)
{
	struct auth *a = new_auth();
	struct auth_identity id;
	const char *why = NULL;
	char tok[2048], claims[256];
	long now = (long)time(NULL);

	snprintf(claims, sizeof(claims), "{\"sub\":\"u\",\"tenant_id\":\"t\",\"exp\":%ld}",
	         now - 120);
	sign(tok, sizeof(tok), claims);
	assert_int_equal(auth_verify(a, tok, &id, &why), LH_EEXPIRED);

	/* Within the 30 s leeway: still accepted. */
	snprintf(claims, sizeof(claims), "{\"sub\":\"u\",\"tenant_id\":\"t\",\"exp\":%ld}",
	         now - 10);
	sign(tok, sizeof(tok), claims);
	assert_int_equal(auth_verify(a, tok, &id, &why), 0);
	assert_int_equal(id.exp, now - 10);

	snprintf(claims, sizeof(claims), "{\"sub\":\"u\",\"tenant_id\":\"t\",\"nbf\":%ld}",
	         now + 600);
	sign(tok, sizeof(tok), claims);
	assert_int_equal(auth_verify(a, tok, &id, &why), LH_EAUTH);
	assert_string_equal(why, "token not valid yet");

	sign(tok, sizeof(tok), "{\"sub\":\"u\",\"tenant_id\":\"t\",\"exp\":\"soon\"}");
	assert_int_equal(auth_verify(a, tok, &id, &why), LH_EAUTH);

	sign(tok, sizeof(tok), "{\"tenant_id\":\"t\"}");
	assert_int_equal(auth_verify(a, tok, &id, &why), LH_EAUTH);
	assert_string_equal(why, "sub claim missing or not a valid user id");

	/* The hand-signed path itself is right: a plain token passes. */
	sign(tok, sizeof(tok), "{\"sub\":\"u\",\"tenant_id\":\"t\"}");
	assert_int_equal(auth_verify(a, tok, &id, &why), 0);
	assert_int_equal(id.exp, 0);
	auth_free(a);
}

static void test_alg_none_and_garbage_refused(void **state)
{
	struct auth *a = new_auth();
	struct auth_identity id;
	const char *why = NULL;
	char tok[1024];
	snprintf(tok, sizeof(tok), "%s.", b64url("{\"alg\":\"none\",\"typ\":\"JWT\"}"));
	strcat(tok, b64url("{\"sub\":\"alice\",\"tenant_id\":\"acme\"}"));
	strcat(tok, ".");
	assert_int_equal(auth_verify(a, tok, &id, &why), LH_EAUTH);
	assert_string_equal(why, "token algorithm is not HS256");
	const char *bad[] = {"", "abc", "a.b", "a.b.c.d", "!!!.###.$$$", NULL};
	for (int i = 0; bad[i]; i++)
		assert_int_equal(auth_verify(a, bad[i], &id, &why), LH_EAUTH);
	assert_int_equal(auth_verify(a, NULL, &id, &why), LH_EAUTH);
	auth_free(a);
}

static void test_bad_identity_claims_refused(void **state)
{
	struct auth *a = new_auth();
	struct auth_identity id;
	const char *why = NULL;
	/* A tenant with the internal separator or ':' would break channel keys. */
	char *tok = auth_mint(SECRET, strlen(SECRET), "tenant_id", "ac:me", "alice", 60);
	assert_int_equal(auth_verify(a, tok, &id, &why), LH_EAUTH);
	free(tok);
	tok = auth_mint(SECRET, strlen(SECRET), "other_claim", "acme", "alice", 60);
	assert_int_equal(auth_verify(a, tok, &id, &why), LH_EAUTH);
	assert_string_equal(why, "tenant claim missing or not a valid tenant id");
	free(tok);
	auth_free(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_minted_token_verifies),
	        cmocka_unit_test(test_wrong_secret_refused),
	        cmocka_unit_test(test_tampered_payload_refused),
	        cmocka_unit_test(test_time_claims),
	        cmocka_unit_test(test_alg_none_and_garbage_refused),
	        cmocka_unit_test(test_bad_identity_claims_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
