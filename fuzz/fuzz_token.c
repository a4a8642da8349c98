/*
 * libFuzzer target: the client token path (auth_verify and the rights it
 * returns). The first input byte picks what the rest is:
 *   0: a whole token, as a client would send it (header, signature and
 *      base64 parsing, key selection by alg and kid);
 *   1: the claims JSON, which the harness signs with the HS256 key so the
 *      fuzzer reaches the claim checks and the rights claims;
 *   2: a header JSON, a NUL byte, then claims JSON, signed the same way
 *      (alg/kid/crit handling with a valid HS256 signature).
 * The context has an HS256 secret, RS256 and ES256 public keys (made at
 * start-up), issuer/audience checks and guest patterns. Every accepted
 * identity is checked against a few channels. Must never crash or leak.
 */
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "../tests/support/b64url.h"

#define SECRET "fuzz-secret-0123456789abcdef0123456789"

static struct auth *ctx;

/* Puts key's public PEM into the environment variable name. */
static void export_pub(EVP_PKEY *key, const char *name)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *pem = NULL;
	PEM_write_bio_PUBKEY(bio, key);
	long n = BIO_get_mem_data(bio, &pem);
	char *copy = strndup(pem, (size_t)n);
	setenv(name, copy, 1);
	free(copy);
	BIO_free(bio);
	EVP_PKEY_free(key);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	export_pub(EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048), "LH_FUZZ_RS");
	export_pub(EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), "LH_FUZZ_ES");
	struct auth_config c = {
	        .secret = SECRET,
	        .secret_len = strlen(SECRET),
	        .keys = "rs:RS256:env:LH_FUZZ_RS,es:ES256:env:LH_FUZZ_ES",
	        .leeway_s = 30,
	        .issuer = "https://id.example.com",
	        .audience = "livehub",
	        .guest_channels = "room:lobby,room:public-*",
	};
	char err[300];
	ctx = auth_new(&c, err, sizeof err);
	if (!ctx)
		abort();
	return 0;
}

/* header.claims.HS256(header.claims) into out (room for 4/3 of the input
 * plus 100 bytes). */
static void sign(const unsigned char *head, size_t hn, const unsigned char *claims, size_t cn,
                 char *out)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	size_t o = b64url(head, hn, out);
	out[o++] = '.';
	o += b64url(claims, cn, out + o);
	HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)out, o, mac, &mac_len);
	out[o++] = '.';
	b64url(mac, mac_len, out + o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char head[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	if (size < 1 || size > AUTH_TOKEN_MAX)
		return 0;
	char *tok = malloc(size * 2 + 200);
	if (!tok)
		return 0;
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	const uint8_t *nul = memchr(p, 0, n);
	switch (data[0] % 3) {
	case 0:
		memcpy(tok, p, n);
		tok[n] = '\0';
		break;
	case 1: sign((const unsigned char *)head, strlen(head), p, n, tok); break;
	default:
		if (!nul) {
			free(tok);
			return 0;
		}
		sign(p, (size_t)(nul - p), nul + 1, n - (size_t)(nul + 1 - p), tok);
		break;
	}
	struct auth_identity id;
	const char *why = NULL;
	if (auth_verify(ctx, tok, &id, &why) == 0) {
		static const char *const channels[] = {"job:1", "room:lobby", "room:staff", "a"};
		for (size_t i = 0; i < 4; i++) {
			(void)auth_allows(&id, AUTH_SUBSCRIBE, channels[i]);
			(void)auth_allows(&id, AUTH_PUBLISH, channels[i]);
		}
		auth_rights_free(id.rights);
	} else if (!why || id.rights) {
		abort(); /* a refusal always has a reason and no rights */
	}
	free(tok);
	return 0;
}
