/* Unit tests of auth.c: every algorithm (tokens signed here with OpenSSL,
 * and HS256 ones minted by libjwt), kid selection, algorithm confusion,
 * the time and identity claims, iss/aud, rights claims and patterns, and
 * every way a key configuration can be refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "auth.h"
#include "livehub.h"
#include "../support/b64url.h"

#define SECRET  "0123456789abcdef0123456789abcdef"
#define SECRET2 "fedcba9876543210fedcba9876543210"
#define S48     "0123456789abcdef0123456789abcdef0123456789abcdef"
#define S64     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static char tmpdir[64];
static EVP_PKEY *rsa, *rsa_other, *ec256, *ec384;
static char rsa_pem[128], rsa_other_pem[128], ec256_pem[128], ec384_pem[128], rsa1024_pem[128];

/* ------------------------------------------------------------------------
 * Building tokens
 * ------------------------------------------------------------------------ */

static const EVP_MD *md_of(const char *alg)
{
	if (strstr(alg, "384"))
		return EVP_sha384();
	if (strstr(alg, "512"))
		return EVP_sha512();
	return EVP_sha256();
}

/* How to sign: an HMAC secret, or a private key (ES: raw r||s of half
 * bytes each; 0 for RSA), or nothing (an empty signature). */
struct signer {
	const char *secret;
	EVP_PKEY *pkey;
	size_t es_half;
	bool der; /* ES: leave the signature in DER (wrong for JWS) */
};

/* Builds header.claims.signature into out (a static buffer). */
static const char *token(const char *header, const char *claims, const struct signer *sg)
{
	static char out[8192];
	unsigned char sig[1024];
	size_t sig_len = 0;
	char *p = out;
	b64url((const unsigned char *)header, strlen(header), p);
	p += strlen(p);
	*p++ = '.';
	b64url((const unsigned char *)claims, strlen(claims), p);
	p += strlen(p);
	size_t signed_len = (size_t)(p - out);
	const char *alg = strstr(header, "\"alg\":\"") ? strstr(header, "\"alg\":\"") + 7 : "HS256";
	if (sg && sg->secret) {
		unsigned int n = 0;
		HMAC(md_of(alg), sg->secret, (int)strlen(sg->secret), (unsigned char *)out,
		     signed_len, sig, &n);
		sig_len = n;
	} else if (sg && sg->pkey) {
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		unsigned char der[1024];
		size_t der_len = sizeof der;
		assert_int_equal(EVP_DigestSignInit(ctx, NULL, md_of(alg), NULL, sg->pkey), 1);
		assert_int_equal(
		        EVP_DigestSign(ctx, der, &der_len, (unsigned char *)out, signed_len), 1);
		EVP_MD_CTX_free(ctx);
		if (sg->es_half && !sg->der) {
			const unsigned char *q = der;
			ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)der_len);
			assert_non_null(es);
			BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, (int)sg->es_half);
			BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + sg->es_half, (int)sg->es_half);
			ECDSA_SIG_free(es);
			sig_len = 2 * sg->es_half;
		} else {
			memcpy(sig, der, der_len);
			sig_len = der_len;
		}
	}
	*p++ = '.';
	b64url(sig, sig_len, p);
	return out;
}

static const struct signer HS = {.secret = SECRET};

/* An HS256 token over claims with SECRET. */
static const char *hs(const char *claims)
{
	return token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", claims, &HS);
}

/* ------------------------------------------------------------------------
 * Keys and contexts
 * ------------------------------------------------------------------------ */

static void write_pub(EVP_PKEY *k, char *path, const char *name)
{
	snprintf(path, 128, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PUBKEY(f, k), 1);
	fclose(f);
}

static int setup(void **state)
{
	strcpy(tmpdir, "/tmp/lh-test-auth-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	rsa_other = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	ec256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	if (!rsa || !rsa_other || !small || !ec256 || !ec384)
		return -1;
	write_pub(rsa, rsa_pem, "rsa.pem");
	write_pub(rsa_other, rsa_other_pem, "rsa_other.pem");
	write_pub(small, rsa1024_pem, "rsa1024.pem");
	write_pub(ec256, ec256_pem, "ec256.pem");
	write_pub(ec384, ec384_pem, "ec384.pem");
	EVP_PKEY_free(small);
	setenv("LH_TEST_HS384", S48, 1);
	setenv("LH_TEST_HS512", S64, 1);
	setenv("LH_TEST_B", SECRET2, 1);
	return 0;
}

static int teardown(void **state)
{
	const char *files[] = {rsa_pem, rsa_other_pem, rsa1024_pem, ec256_pem, ec384_pem};
	for (size_t i = 0; i < 5; i++)
		unlink(files[i]);
	rmdir(tmpdir);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(rsa_other);
	EVP_PKEY_free(ec256);
	EVP_PKEY_free(ec384);
	return 0;
}

/* A context from a base config plus keys (NULL: the HS256 SECRET only). */
static struct auth *auth_with(const char *keys, const struct auth_config *base)
{
	struct auth_config c = {0};
	if (base)
		c = *base;
	if (!keys) {
		c.secret = SECRET;
		c.secret_len = strlen(SECRET);
	}
	c.keys = keys;
	if (!c.leeway_s && !base)
		c.leeway_s = 30;
	char err[300] = "";
	struct auth *a = auth_new(&c, err, sizeof err);
	if (!a)
		fail_msg("auth_new: %s", err);
	return a;
}

/* auth_new must fail with a message containing want. */
static void config_fails(const char *keys, const char *guest, const char *want)
{
	struct auth_config c = {.keys = keys, .guest_channels = guest};
	char err[300] = "";
	struct auth *a = auth_new(&c, err, sizeof err);
	if (a)
		fail_msg("auth_new accepted keys=%s guest=%s", keys, guest ? guest : "");
	if (!strstr(err, want))
		fail_msg("error \"%s\" does not mention \"%s\"", err, want);
}

/* Verifies tok: expects rc and, when rc != 0, a reason containing why. */
static void expect(struct auth *a, const char *tok, int rc, const char *why)
{
	struct auth_identity id;
	const char *reason = NULL;
	int got = auth_verify(a, tok, &id, &reason);
	if (got != rc)
		fail_msg("auth_verify = %d (%s), want %d", got, got ? reason : "ok", rc);
	if (rc && why && !strstr(reason, why))
		fail_msg("reason \"%s\" does not mention \"%s\"", reason, why);
	if (rc)
		assert_null(id.rights);
	auth_rights_free(id.rights);
}

#define CLAIMS "{\"sub\":\"alice\",\"tenant_id\":\"acme\"}"

/* ------------------------------------------------------------------------
 * Signatures and keys
 * ------------------------------------------------------------------------ */

static void test_minted_token_verifies(void **state)
{
	struct auth *a = auth_with(NULL, NULL);
	char *tok = auth_mint(SECRET, strlen(SECRET), "tenant_id", NULL, "acme",
	                      "alice@example.com", 60);
	assert_non_null(tok);
	struct auth_identity id;
	const char *why = NULL;
	assert_int_equal(auth_verify(a, tok, &id, &why), 0);
	assert_string_equal(id.tenant, "acme");
	assert_string_equal(id.user, "alice@example.com");
	assert_true(id.exp > (int64_t)time(NULL));
	assert_null(id.rights);
	free(tok);
	auth_free(a);
}

static void test_wrong_secret_and_tampering_refused(void **state)
{
	struct auth *a = auth_with(NULL, NULL);
	const char *other = "ffffffffffffffffffffffffffffffff";
	char *tok = auth_mint(other, strlen(other), "tenant_id", NULL, "acme", "alice", 60);
	expect(a, tok, LH_EAUTH, "bad signature");
	free(tok);
	/* The payload swapped for another tenant's under the same signature. */
	char good[2048], forged[2048];
	strcpy(good, hs(CLAIMS));
	char *dot1 = strchr(good, '.'), *dot2 = strchr(dot1 + 1, '.');
	char body[256];
	const char *evil = "{\"sub\":\"alice\",\"tenant_id\":\"globex\"}";
	b64url((const unsigned char *)evil, strlen(evil), body);
	snprintf(forged, sizeof forged, "%.*s.%s%s", (int)(dot1 - good), good, body, dot2);
	expect(a, good, 0, NULL);
	expect(a, forged, LH_EAUTH, "bad signature");
	/* A truncated signature. */
	good[strlen(good) - 1] = '\0';
	expect(a, good, LH_EAUTH, NULL);
	auth_free(a);
}

static void test_hmac_algorithms(void **state)
{
	struct auth *a =
	        auth_with(" h3:HS384:env:LH_TEST_HS384 , h5:HS512:env:LH_TEST_HS512", NULL);
	struct signer s48 = {.secret = S48}, s64 = {.secret = S64};
	expect(a, token("{\"alg\":\"HS384\",\"kid\":\"h3\"}", CLAIMS, &s48), 0, NULL);
	expect(a, token("{\"alg\":\"HS384\"}", CLAIMS, &s48), 0, NULL);
	expect(a, token("{\"alg\":\"HS512\",\"kid\":\"h5\"}", CLAIMS, &s64), 0, NULL);
	expect(a, token("{\"alg\":\"HS512\"}", CLAIMS, &s64), 0, NULL);
	/* The right secret under another algorithm, or the other key's secret. */
	expect(a, token("{\"alg\":\"HS512\",\"kid\":\"h3\"}", CLAIMS, &s48), LH_EAUTH,
	       "algorithm does not match");
	expect(a, token("{\"alg\":\"HS384\"}", CLAIMS, &s64), LH_EAUTH, "bad signature");
	/* No HS256 key configured: HS256 tokens are refused outright. */
	expect(a, hs(CLAIMS), LH_EAUTH, "algorithm not accepted");
	auth_free(a);
}

static void test_rsa_algorithms(void **state)
{
	char keys[600];
	snprintf(keys, sizeof keys, "r1:RS256:%s,r3:RS384:file:%s,r5:RS512:%s", rsa_pem, rsa_pem,
	         rsa_pem);
	struct auth *a = auth_with(keys, NULL);
	struct signer sg = {.pkey = rsa}, wrong = {.pkey = rsa_other};
	expect(a, token("{\"alg\":\"RS256\",\"kid\":\"r1\"}", CLAIMS, &sg), 0, NULL);
	expect(a, token("{\"alg\":\"RS384\",\"kid\":\"r3\"}", CLAIMS, &sg), 0, NULL);
	expect(a, token("{\"alg\":\"RS512\",\"kid\":\"r5\"}", CLAIMS, &sg), 0, NULL);
	expect(a, token("{\"alg\":\"RS512\"}", CLAIMS, &sg), 0, NULL);
	expect(a, token("{\"alg\":\"RS256\",\"kid\":\"r3\"}", CLAIMS, &sg), LH_EAUTH,
	       "algorithm does not match");
	expect(a, token("{\"alg\":\"RS256\",\"kid\":\"r1\"}", CLAIMS, &wrong), LH_EAUTH,
	       "bad signature");
	expect(a, token("{\"alg\":\"RS256\"}", CLAIMS, &wrong), LH_EAUTH, "bad signature");
	expect(a, token("{\"alg\":\"RS256\"}", CLAIMS, NULL), LH_EAUTH, "bad signature");
	auth_free(a);
}

static void test_ec_algorithms(void **state)
{
	char keys[600];
	snprintf(keys, sizeof keys, "e2:ES256:%s,e3:ES384:%s", ec256_pem, ec384_pem);
	struct auth *a = auth_with(keys, NULL);
	struct signer s2 = {.pkey = ec256, .es_half = 32}, s3 = {.pkey = ec384, .es_half = 48};
	expect(a, token("{\"alg\":\"ES256\",\"kid\":\"e2\"}", CLAIMS, &s2), 0, NULL);
	expect(a, token("{\"alg\":\"ES256\"}", CLAIMS, &s2), 0, NULL);
	expect(a, token("{\"alg\":\"ES384\",\"kid\":\"e3\"}", CLAIMS, &s3), 0, NULL);
	/* The P-384 key's signature presented as ES256, or with the P-256 kid. */
	expect(a, token("{\"alg\":\"ES384\",\"kid\":\"e2\"}", CLAIMS, &s3), LH_EAUTH,
	       "algorithm does not match");
	/* JWS ES signatures are raw r||s: DER or a wrong length is refused. */
	struct signer der = {.pkey = ec256, .es_half = 32, .der = true};
	expect(a, token("{\"alg\":\"ES256\"}", CLAIMS, &der), LH_EAUTH, "bad signature");
	struct signer other = {.pkey = ec256, .es_half = 32};
	char tok[2048];
	strcpy(tok, token("{\"alg\":\"ES256\"}", CLAIMS, &other));
	tok[strlen(tok) - 4] = '\0'; /* 3 bytes short */
	expect(a, tok, LH_EAUTH, "bad signature");
	auth_free(a);
}

static void test_kid_selection(void **state)
{
	struct auth_config base = {.secret = SECRET, .secret_len = strlen(SECRET), .leeway_s = 30};
	struct auth *a = auth_with("b:HS256:env:LH_TEST_B", &base);
	struct signer sb = {.secret = SECRET2};
	expect(a, token("{\"alg\":\"HS256\",\"kid\":\"b\"}", CLAIMS, &sb), 0, NULL);
	/* Without kid every HS256 key is tried: the legacy secret and b. */
	expect(a, token("{\"alg\":\"HS256\"}", CLAIMS, &sb), 0, NULL);
	expect(a, hs(CLAIMS), 0, NULL);
	/* A kid selects its key only: SECRET's signature under kid b fails. */
	expect(a, token("{\"alg\":\"HS256\",\"kid\":\"b\"}", CLAIMS, &HS), LH_EAUTH,
	       "bad signature");
	expect(a, token("{\"alg\":\"HS256\",\"kid\":\"nope\"}", CLAIMS, &sb), LH_EAUTH,
	       "unknown key id");
	expect(a, token("{\"alg\":\"HS256\",\"kid\":7}", CLAIMS, &sb), LH_EAUTH, "malformed");
	auth_free(a);
}

static void test_alg_confusion_refused(void **state)
{
	char keys[300], pem[4096];
	snprintf(keys, sizeof keys, "r:RS256:%s", rsa_pem);
	struct auth *a = auth_with(keys, NULL);
	/* The classic attack: HS256 with the RSA public key text as secret. */
	FILE *f = fopen(rsa_pem, "r");
	size_t n = fread(pem, 1, sizeof pem - 1, f);
	fclose(f);
	pem[n] = '\0';
	struct signer hs_pem = {.secret = pem};
	expect(a, token("{\"alg\":\"HS256\"}", CLAIMS, &hs_pem), LH_EAUTH,
	       "algorithm not accepted");
	expect(a, token("{\"alg\":\"HS256\",\"kid\":\"r\"}", CLAIMS, &hs_pem), LH_EAUTH,
	       "algorithm does not match");
	auth_free(a);
}

static void test_alg_none_crit_and_garbage_refused(void **state)
{
	struct auth *a = auth_with(NULL, NULL);
	const char *algs[] = {"{\"alg\":\"none\"}",  "{\"alg\":\"None\"}", "{\"alg\":\"PS256\"}",
	                      "{\"alg\":\"hs256\"}", "{\"typ\":\"JWT\"}",  "{\"alg\":256}"};
	for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++)
		expect(a, token(algs[i], CLAIMS, NULL), LH_EAUTH, "algorithm");
	expect(a, token("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", CLAIMS, &HS), LH_EAUTH, "crit");
	const char *bad[] = {"", "abc", "a.b", "a.b.c.d", "!!!.###.$$$", "e30.e30.", NULL};
	for (int i = 0; bad[i]; i++)
		expect(a, bad[i], LH_EAUTH, NULL);
	expect(a, NULL, LH_EAUTH, NULL);
	/* Claims that are not a JSON object, under a good signature. */
	expect(a, hs("[1,2]"), LH_EAUTH, "malformed");
	expect(a, hs("{\"sub\":\"a\",\"sub\":\"b\",\"tenant_id\":\"t\"}"), LH_EAUTH, "malformed");
	auth_free(a);
}

/* ------------------------------------------------------------------------
 * Claims
 * ------------------------------------------------------------------------ */

static void test_time_claims(void **state)
{
	struct auth *a = auth_with(NULL, NULL); /* 30 s leeway */
	char claims[256];
	long now = (long)time(NULL);
	struct {
		const char *name;
		long delta;
		int rc;
		const char *why;
	} cases[] = {
	        {"exp", -120, LH_EEXPIRED, "expired"},
	        {"exp", -10, 0, NULL},
	        {"exp", 60, 0, NULL},
	        {"nbf", 600, LH_EAUTH, "not valid yet"},
	        {"nbf", 10, 0, NULL},
	        {"iat", 600, LH_EAUTH, "iat in the future"},
	        {"iat", 10, 0, NULL},
	        {"iat", -86400, 0, NULL},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		snprintf(claims, sizeof claims, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"%s\":%ld}",
		         cases[i].name, now + cases[i].delta);
		expect(a, hs(claims), cases[i].rc, cases[i].why);
	}
	snprintf(claims, sizeof claims, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"exp\":%ld}",
	         now + 60);
	struct auth_identity id;
	const char *why;
	assert_int_equal(auth_verify(a, hs(claims), &id, &why), 0);
	assert_int_equal(id.exp, now + 60);
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"exp\":\"soon\"}"), LH_EAUTH, "numbers");
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"iat\":null}"), LH_EAUTH, "numbers");
	assert_int_equal(auth_verify(a, hs(CLAIMS), &id, &why), 0);
	assert_int_equal(id.exp, 0);
	auth_free(a);

	/* Leeway 0: one second past exp is expired. */
	struct auth_config base = {.leeway_s = 0};
	struct auth *strict = auth_with("k:HS256:env:LH_TEST_B", &base);
	struct signer sb = {.secret = SECRET2};
	snprintf(claims, sizeof claims, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"exp\":%ld}", now - 2);
	expect(strict, token("{\"alg\":\"HS256\"}", claims, &sb), LH_EEXPIRED, "expired");
	snprintf(claims, sizeof claims, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"nbf\":%ld}", now + 2);
	expect(strict, token("{\"alg\":\"HS256\"}", claims, &sb), LH_EAUTH, "not valid yet");
	auth_free(strict);
}

static void test_iss_and_aud(void **state)
{
	struct auth_config base = {.secret = SECRET,
	                           .secret_len = strlen(SECRET),
	                           .issuer = "https://id.example.com",
	                           .audience = "livehub"};
	char err[200];
	struct auth *a = auth_new(&base, err, sizeof err);
	assert_non_null(a);
	const char *ok1 = "{\"sub\":\"u\",\"tenant_id\":\"t\",\"iss\":\"https://id.example.com\","
	                  "\"aud\":\"livehub\"}";
	const char *ok2 = "{\"sub\":\"u\",\"tenant_id\":\"t\",\"iss\":\"https://id.example.com\","
	                  "\"aud\":[\"other\",\"livehub\"]}";
	expect(a, hs(ok1), 0, NULL);
	expect(a, hs(ok2), 0, NULL);
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"aud\":\"livehub\"}"), LH_EAUTH, "iss");
	expect(a,
	       hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"iss\":\"https://evil\",\"aud\":\"livehub\"}"),
	       LH_EAUTH, "iss");
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"iss\":\"https://id.example.com\"}"),
	       LH_EAUTH, "aud");
	expect(a,
	       hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"iss\":\"https://id.example.com\","
	          "\"aud\":[\"other\"]}"),
	       LH_EAUTH, "aud");
	expect(a,
	       hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"iss\":\"https://id.example.com\","
	          "\"aud\":{\"livehub\":1}}"),
	       LH_EAUTH, "aud");
	auth_free(a);
	/* Not configured: not checked. */
	a = auth_with(NULL, NULL);
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"iss\":\"anyone\",\"aud\":5}"), 0, NULL);
	auth_free(a);
}

static void test_identity_claims(void **state)
{
	struct auth *a = auth_with(NULL, NULL);
	expect(a, hs("{\"tenant_id\":\"t\"}"), LH_EAUTH, "user claim");
	expect(a, hs("{\"sub\":\"u\"}"), LH_EAUTH, "tenant claim");
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"ac:me\"}"), LH_EAUTH, "tenant claim");
	expect(a, hs("{\"sub\":\"u u\",\"tenant_id\":\"t\"}"), LH_EAUTH, "user claim");
	expect(a, hs("{\"sub\":7,\"tenant_id\":\"t\"}"), LH_EAUTH, "user claim");
	auth_free(a);
	/* Configured claim names. */
	struct auth_config base = {.secret = SECRET,
	                           .secret_len = strlen(SECRET),
	                           .user_claim = "uid",
	                           .tenant_claim = "org"};
	char err[200];
	a = auth_new(&base, err, sizeof err);
	assert_non_null(a);
	struct auth_identity id;
	const char *why;
	assert_int_equal(
	        auth_verify(a, hs("{\"uid\":\"bob\",\"org\":\"globex\",\"sub\":\"x\"}"), &id, &why),
	        0);
	assert_string_equal(id.user, "bob");
	assert_string_equal(id.tenant, "globex");
	expect(a, hs(CLAIMS), LH_EAUTH, "user claim");
	auth_free(a);
}

/* ------------------------------------------------------------------------
 * Rights
 * ------------------------------------------------------------------------ */

static void test_pattern_match(void **state)
{
	struct {
		const char *p, *s;
		bool hit;
	} cases[] = {
	        {"job:*", "job:42", true},
	        {"job:*", "job:", true},
	        {"job:*", "jobs:1", false},
	        {"job:*", "project:job:1", false},
	        {"project:p1", "project:p1", true},
	        {"project:p1", "project:p10", false},
	        {"*", "anything:at/all", true},
	        {"*:42", "job:42", true},
	        {"*:42", "job:421", false},
	        {"a*b*c", "aXXbYYc", true},
	        {"a*b*c", "aXXbYY", false},
	        {"board:*:x", "board:1:2:x", true},
	        {"**", "x", true},
	        {"x", "", false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		if (auth_pattern_match(cases[i].p, cases[i].s) != cases[i].hit)
			fail_msg("pattern %s vs %s: want %d", cases[i].p, cases[i].s, cases[i].hit);
	/* Pathological input stays linear-ish (no exponential backtracking). */
	char s[161], p[161];
	memset(s, 'a', 160);
	s[160] = '\0';
	for (int i = 0; i < 160; i += 2) {
		p[i] = '*';
		p[i + 1] = 'a';
	}
	p[158] = 'b';
	p[159] = '\0';
	assert_false(auth_pattern_match(p, s));
}

/* Verifies claims and returns the identity (rights owned by the caller). */
static struct auth_identity verified(struct auth *a, const char *claims)
{
	struct auth_identity id;
	const char *why = NULL;
	int rc = auth_verify(a, hs(claims), &id, &why);
	if (rc)
		fail_msg("%s refused: %s", claims, why);
	return id;
}

static void test_rights(void **state)
{
	struct auth_config base = {.secret = SECRET,
	                           .secret_len = strlen(SECRET),
	                           .guest_channels = "room:lobby, room:public-*"};
	char err[200];
	struct auth *a = auth_new(&base, err, sizeof err);
	assert_non_null(a);

	/* No rights claims: no allocation, everything allowed. */
	struct auth_identity id = verified(a, CLAIMS);
	assert_null(id.rights);
	assert_true(auth_allows(&id, AUTH_SUBSCRIBE, "job:1"));
	assert_true(auth_allows(&id, AUTH_PUBLISH, "board:1"));
	id = verified(a, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"publish\":true}");
	assert_null(id.rights);

	id = verified(
	        a, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"channels\":[\"job:*\",\"project:p1\"]}");
	assert_non_null(id.rights);
	assert_true(auth_allows(&id, AUTH_SUBSCRIBE, "job:42"));
	assert_true(auth_allows(&id, AUTH_SUBSCRIBE, "project:p1"));
	assert_false(auth_allows(&id, AUTH_SUBSCRIBE, "project:p2"));
	assert_false(auth_allows(&id, AUTH_SUBSCRIBE, "order:1"));
	assert_true(auth_allows(&id, AUTH_PUBLISH, "job:42")); /* publish: where it may subscribe */
	assert_false(auth_allows(&id, AUTH_PUBLISH, "order:1"));
	auth_rights_free(id.rights);

	id = verified(a, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"channels\":[]}");
	assert_false(auth_allows(&id, AUTH_SUBSCRIBE, "job:1"));
	auth_rights_free(id.rights);

	id = verified(a, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"publish\":false}");
	assert_true(auth_allows(&id, AUTH_SUBSCRIBE, "board:1"));
	assert_false(auth_allows(&id, AUTH_PUBLISH, "board:1"));
	auth_rights_free(id.rights);

	id = verified(a, "{\"sub\":\"u\",\"tenant_id\":\"t\",\"publish\":[\"board:*\"]}");
	assert_true(auth_allows(&id, AUTH_SUBSCRIBE, "job:1"));
	assert_true(auth_allows(&id, AUTH_PUBLISH, "board:7"));
	assert_false(auth_allows(&id, AUTH_PUBLISH, "job:1"));
	auth_rights_free(id.rights);

	/* A guest: the configured patterns (and the token's own), never publish. */
	id = verified(a, "{\"sub\":\"g1\",\"tenant_id\":\"t\",\"role\":\"guest\"}");
	assert_true(auth_allows(&id, AUTH_SUBSCRIBE, "room:lobby"));
	assert_true(auth_allows(&id, AUTH_SUBSCRIBE, "room:public-42"));
	assert_false(auth_allows(&id, AUTH_SUBSCRIBE, "room:staff"));
	assert_false(auth_allows(&id, AUTH_PUBLISH, "room:lobby"));
	auth_rights_free(id.rights);
	id = verified(a, "{\"sub\":\"g1\",\"tenant_id\":\"t\",\"role\":\"guest\",\"publish\":true,"
	                 "\"channels\":[\"room:public-1\",\"room:staff\"]}");
	assert_true(auth_allows(&id, AUTH_SUBSCRIBE, "room:public-1"));
	assert_false(auth_allows(&id, AUTH_SUBSCRIBE, "room:public-2"));
	assert_false(auth_allows(&id, AUTH_SUBSCRIBE, "room:staff"));
	assert_false(auth_allows(&id, AUTH_PUBLISH, "room:public-1"));
	auth_rights_free(id.rights);
	/* Other roles are not restricted by role. */
	id = verified(a, "{\"sub\":\"s\",\"tenant_id\":\"t\",\"role\":\"supervisor\"}");
	assert_null(id.rights);

	/* Malformed rights claims refuse the token. */
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"channels\":\"job:*\"}"), LH_EAUTH,
	       "channels claim");
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"channels\":[\"$tenant\"]}"), LH_EAUTH,
	       "channels claim");
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"channels\":[\"a b\"]}"), LH_EAUTH,
	       "channels claim");
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"channels\":[1]}"), LH_EAUTH,
	       "channels claim");
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"publish\":\"yes\"}"), LH_EAUTH,
	       "publish claim");
	expect(a, hs("{\"sub\":\"u\",\"tenant_id\":\"t\",\"role\":[\"guest\"]}"), LH_EAUTH,
	       "role claim");
	auth_free(a);

	/* NULL rights allow everything. */
	assert_true(auth_rights_allow(NULL, AUTH_PUBLISH, "x"));
}

/* ------------------------------------------------------------------------
 * Configuration
 * ------------------------------------------------------------------------ */

static void test_key_config_errors(void **state)
{
	char spec[400];
	config_fails(NULL, NULL, "no JWT key");
	config_fails("", NULL, "no JWT key");
	config_fails("k:HS256", NULL, "kid:ALG:SOURCE");
	config_fails("k:none:env:LH_TEST_B", NULL, "not one of");
	config_fails("k:HS256:env:LH_TEST_UNSET_VARIABLE", NULL, "not set");
	config_fails("k:HS384:env:LH_TEST_B", NULL, "at least 48 bytes");
	config_fails("k:HS512:env:LH_TEST_HS384", NULL, "at least 64 bytes");
	config_fails("k:RS256:/nonexistent/key.pem", NULL, "cannot read");
	config_fails("a:HS256:env:LH_TEST_B,a:HS256:env:LH_TEST_B", NULL, "twice");
	snprintf(spec, sizeof spec, "k:ES256:%s", rsa_pem);
	config_fails(spec, NULL, "EC public key on P-256");
	snprintf(spec, sizeof spec, "k:ES256:%s", ec384_pem);
	config_fails(spec, NULL, "P-256");
	snprintf(spec, sizeof spec, "k:ES384:%s", ec256_pem);
	config_fails(spec, NULL, "P-384");
	snprintf(spec, sizeof spec, "k:RS256:%s", ec256_pem);
	config_fails(spec, NULL, "RSA public key");
	snprintf(spec, sizeof spec, "k:RS256:%s", rsa1024_pem);
	config_fails(spec, NULL, "2048");
	/* An HS secret file is not a PEM, and a PEM path for an HS key is
	 * just bytes: but a text file for an RS key is refused. */
	config_fails("k:RS256:env:LH_TEST_B", NULL, "PEM");
	config_fails("k:HS256:env:LH_TEST_B", "job:*,a b", "not a channel pattern");
	config_fails("k:HS256:env:LH_TEST_B", "$tenant", "not a channel pattern");
	/* The error names the entry, never the key's bytes. */
	struct auth_config c = {.keys = "ok:HS256:env:LH_TEST_B,bad:HS512:env:LH_TEST_B"};
	char err[300];
	assert_null(auth_new(&c, err, sizeof err));
	assert_non_null(strstr(err, "entry 2"));
	assert_null(strstr(err, SECRET2));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_minted_token_verifies),
	        cmocka_unit_test(test_wrong_secret_and_tampering_refused),
	        cmocka_unit_test(test_hmac_algorithms),
	        cmocka_unit_test(test_rsa_algorithms),
	        cmocka_unit_test(test_ec_algorithms),
	        cmocka_unit_test(test_kid_selection),
	        cmocka_unit_test(test_alg_confusion_refused),
	        cmocka_unit_test(test_alg_none_crit_and_garbage_refused),
	        cmocka_unit_test(test_time_claims),
	        cmocka_unit_test(test_iss_and_aud),
	        cmocka_unit_test(test_identity_claims),
	        cmocka_unit_test(test_pattern_match),
	        cmocka_unit_test(test_rights),
	        cmocka_unit_test(test_key_config_errors),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
