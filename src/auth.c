/*
 * auth: JWT verification, channel rights and development-token minting.
 * See auth.h.
 *
 * Verification does not go through libjwt's jwt_decode(): libjwt 1.10
 * verifies with the algorithm named in the token's own header and compares
 * HMACs with strcmp() on their base64 text, which leaks timing. Here the
 * algorithm of every key is pinned by configuration, HMACs are computed
 * with OpenSSL and compared with CRYPTO_memcmp(), RSA and ECDSA signatures
 * are checked with EVP_DigestVerify, and the claims are read with jansson.
 * libjwt mints the development tokens, so the two paths check each other in
 * the tests.
 */
#include "auth.h"

#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <math.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "livehub.h"

#define KID_MAX      64    /* bytes of a kid, NUL included */
#define KEYFILE_MAX  65536 /* largest key file or variable */
#define SIG_MAX      1024  /* largest decoded signature (8192-bit RSA) */
#define CLAIM_MAX    256   /* issuer, audience, claim names */
#define PATTERNS_MAX 256   /* patterns in one rights claim */
#define PATTERN_MAX  LH_CHANNEL_MAX

enum alg { HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, NALG };

static const char *const alg_names[NALG] = {
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
};

struct key {
	enum alg alg;
	char kid[KID_MAX]; /* "" when the key has none */
	unsigned char *secret;
	size_t secret_len; /* HS* */
	EVP_PKEY *pkey;    /* RS*, ES* */
};

struct auth {
	struct key *keys;
	size_t nkeys;
	char tenant_claim[CLAIM_MAX];
	char user_claim[CLAIM_MAX];
	char issuer[CLAIM_MAX];
	char audience[CLAIM_MAX];
	int leeway_s;
	char *guest;   /* the guest patterns, NUL-separated */
	size_t nguest; /* how many */
};

enum pub_mode { PUB_ALL, PUB_NONE, PUB_LISTED };

/* One allocation: the struct, nsub + nguest + npub pointers, the strings. */
struct auth_rights {
	bool sub_listed; /* subscribe only to channels matching one of sub */
	bool guest;      /* and only to channels matching one of the guest patterns */
	unsigned char pub;
	uint16_t nsub, nguest, npub;
	const char *pat[]; /* sub patterns, then guest, then publish */
};

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

static const EVP_MD *alg_md(enum alg alg)
{
	switch (alg) {
	case HS256:
	case RS256:
	case ES256: return EVP_sha256();
	case HS384:
	case RS384:
	case ES384: return EVP_sha384();
	default: return EVP_sha512();
	}
}

static bool alg_is_hmac(enum alg alg)
{
	return alg == HS256 || alg == HS384 || alg == HS512;
}

static int alg_from_name(const char *s)
{
	for (int i = 0; i < NALG; i++)
		if (strcmp(alg_names[i], s) == 0)
			return i;
	return -1;
}

/* Decodes base64url text (no padding) of n bytes into out (room for
 * n * 3 / 4 + 3 bytes). Returns the decoded length, or -1 on a bad byte or
 * non-zero trailing bits (so each value has one encoding). */
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
	if (acc & ((1u << bits) - 1))
		return -1;
	return o;
}

/* Decodes one base64url JSON segment into an object. NULL when malformed. */
static json_t *segment_json(const char *s, size_t n)
{
	unsigned char buf[AUTH_TOKEN_MAX];
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

/* ------------------------------------------------------------------------
 * Loading keys
 * ------------------------------------------------------------------------ */

/* Reads the key bytes source names ("env:VAR", "file:PATH" or "PATH") into
 * a malloc'd buffer (NUL-terminated, trailing newlines kept for PEM and cut
 * for secrets by the caller). Returns NULL with a message in err. */
static char *read_source(const char *source, size_t *len, char *err, size_t errlen)
{
	if (strncmp(source, "env:", 4) == 0) {
		const char *v = getenv(source + 4);
		if (!v || !*v) {
			snprintf(err, errlen, "environment variable %s is not set", source + 4);
			return NULL;
		}
		*len = strlen(v);
		char *copy = strdup(v);
		if (!copy)
			snprintf(err, errlen, "out of memory");
		return copy;
	}
	const char *path = strncmp(source, "file:", 5) == 0 ? source + 5 : source;
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = malloc(KEYFILE_MAX + 1);
	size_t n = buf ? fread(buf, 1, KEYFILE_MAX + 1, f) : 0;
	fclose(f);
	if (!buf || n == 0 || n > KEYFILE_MAX) {
		snprintf(err, errlen, "%s is empty or larger than %d bytes", path, KEYFILE_MAX);
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

/* Checks that an RS/ES public key suits alg. */
static bool pkey_fits(EVP_PKEY *pkey, enum alg alg, char *err, size_t errlen)
{
	int id = EVP_PKEY_get_base_id(pkey);
	if (alg == RS256 || alg == RS384 || alg == RS512) {
		if (id != EVP_PKEY_RSA) {
			snprintf(err, errlen, "%s needs an RSA public key", alg_names[alg]);
			return false;
		}
		if (EVP_PKEY_get_bits(pkey) < 2048) {
			snprintf(err, errlen, "RSA keys must have at least 2048 bits");
			return false;
		}
		return true;
	}
	char group[64] = "";
	const char *want = alg == ES256 ? "prime256v1" : "secp384r1";
	if (id != EVP_PKEY_EC ||
	    !EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
	                                    NULL) ||
	    strcmp(group, want) != 0) {
		snprintf(err, errlen, "%s needs an EC public key on %s", alg_names[alg],
		         alg == ES256 ? "P-256" : "P-384");
		return false;
	}
	return true;
}

/* Fills k from its algorithm and the bytes of its source. */
static int key_load(struct key *k, const char *source, char *err, size_t errlen)
{
	size_t len = 0;
	char *data = read_source(source, &len, err, errlen);
	if (!data)
		return -1;
	int rc = -1;
	if (alg_is_hmac(k->alg)) {
		while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
			len--;
		size_t min = (size_t)EVP_MD_get_size(alg_md(k->alg));
		if (len < min) {
			snprintf(err, errlen, "%s secrets must be at least %zu bytes",
			         alg_names[k->alg], min);
			goto out;
		}
		k->secret = malloc(len);
		if (!k->secret) {
			snprintf(err, errlen, "out of memory");
			goto out;
		}
		memcpy(k->secret, data, len);
		k->secret_len = len;
		rc = 0;
		goto out;
	}
	BIO *bio = BIO_new_mem_buf(data, (int)len);
	k->pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	if (!k->pkey)
		snprintf(err, errlen, "not a PEM public key (-----BEGIN PUBLIC KEY-----)");
	else if (pkey_fits(k->pkey, k->alg, err, errlen))
		rc = 0;
out:
	OPENSSL_cleanse(data, len);
	free(data);
	return rc;
}

/* Parses one "kid:ALG:SOURCE" entry (len bytes at s) into k. */
static int key_parse(struct key *k, const char *s, size_t len, char *err, size_t errlen)
{
	char entry[1024];
	if (len >= sizeof entry) {
		snprintf(err, errlen, "entry longer than %zu characters", sizeof entry - 1);
		return -1;
	}
	memcpy(entry, s, len);
	entry[len] = '\0';
	char *c1 = strchr(entry, ':');
	char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c1 || !c2 || !c2[1]) {
		snprintf(err, errlen, "not of the form kid:ALG:SOURCE");
		return -1;
	}
	*c1 = *c2 = '\0';
	if ((size_t)(c1 - entry) >= KID_MAX) {
		snprintf(err, errlen, "kid longer than %d characters", KID_MAX - 1);
		return -1;
	}
	int alg = alg_from_name(c1 + 1);
	if (alg < 0) {
		snprintf(err, errlen,
		         "algorithm \"%s\" is not one of HS256 HS384 HS512 RS256 RS384 RS512 ES256 "
		         "ES384",
		         c1 + 1);
		return -1;
	}
	k->alg = (enum alg)alg;
	strcpy(k->kid, entry);
	return key_load(k, c2 + 1, err, errlen);
}

static void key_clear(struct key *k)
{
	if (k->secret) {
		OPENSSL_cleanse(k->secret, k->secret_len);
		free(k->secret);
	}
	EVP_PKEY_free(k->pkey);
}

/* Loads cfg's keys: the legacy secret first (HS256, no kid), then every
 * entry of cfg->keys. */
static int load_keys(struct auth *a, const struct auth_config *cfg, char *err, size_t errlen)
{
	size_t n = cfg->secret && cfg->secret_len ? 1 : 0;
	const char *spec = cfg->keys ? cfg->keys : "";
	for (const char *p = spec; *p; p++)
		n += *p == ',';
	n += *spec ? 1 : 0;
	a->keys = calloc(n ? n : 1, sizeof *a->keys);
	if (!a->keys) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (cfg->secret && cfg->secret_len) {
		struct key *k = &a->keys[a->nkeys++];
		k->alg = HS256;
		k->secret = malloc(cfg->secret_len);
		if (!k->secret) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		memcpy(k->secret, cfg->secret, cfg->secret_len);
		k->secret_len = cfg->secret_len;
	}
	for (const char *p = spec; *spec && p;) {
		while (*p == ' ')
			p++;
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		while (len > 0 && p[len - 1] == ' ')
			len--;
		char why[300] = "";
		size_t idx = a->nkeys;
		if (key_parse(&a->keys[a->nkeys++], p, len, why, sizeof why)) {
			snprintf(err, errlen, "LIVEHUB_JWT_KEYS entry %zu: %s",
			         idx + (cfg->secret_len ? 0 : 1), why);
			return -1;
		}
		for (size_t i = 0; i < idx; i++) {
			if (a->keys[idx].kid[0] && strcmp(a->keys[i].kid, a->keys[idx].kid) == 0) {
				snprintf(err, errlen, "LIVEHUB_JWT_KEYS: kid \"%s\" appears twice",
				         a->keys[idx].kid);
				return -1;
			}
		}
		p = end ? end + 1 : NULL;
	}
	if (a->nkeys == 0) {
		snprintf(err, errlen,
		         "no JWT key configured (LIVEHUB_JWT_SECRET or LIVEHUB_JWT_KEYS)");
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * Patterns
 * ------------------------------------------------------------------------ */

/* A pattern is 1-160 channel characters and '*', not starting with '$'. */
static bool pattern_ok(const char *s, size_t n)
{
	char tmp[PATTERN_MAX + 1];
	if (n == 0 || n > PATTERN_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		tmp[i] = s[i] == '*' ? 'x' : s[i];
	return name_channel_ok(tmp, n);
}

bool auth_pattern_match(const char *p, const char *s)
{
	/* Greedy with one backtrack point: linear in practice, never
	 * exponential. */
	const char *star = NULL, *resume = NULL;
	while (*s) {
		if (*p == '*') {
			star = p++;
			resume = s;
		} else if (*p == *s) {
			p++;
			s++;
		} else if (star) {
			p = star + 1;
			s = ++resume;
		} else {
			return false;
		}
	}
	while (*p == '*')
		p++;
	return *p == '\0';
}

static bool any_match(const char *const *pat, size_t n, const char *channel)
{
	for (size_t i = 0; i < n; i++)
		if (auth_pattern_match(pat[i], channel))
			return true;
	return false;
}

bool auth_rights_allow(const struct auth_rights *r, enum auth_action act, const char *channel)
{
	if (!r)
		return true;
	const char *const *sub = r->pat, *const *guest = r->pat + r->nsub,
	                  *const *pub = guest + r->nguest;
	if (r->sub_listed && !any_match(sub, r->nsub, channel))
		return false;
	if (r->guest && !any_match(guest, r->nguest, channel))
		return false;
	if (act == AUTH_SUBSCRIBE)
		return true;
	if (r->guest || r->pub == PUB_NONE)
		return false;
	return r->pub == PUB_ALL || any_match(pub, r->npub, channel);
}

bool auth_allows(const struct auth_identity *id, enum auth_action act, const char *channel)
{
	return auth_rights_allow(id->rights, act, channel);
}

void auth_rights_free(struct auth_rights *r)
{
	free(r);
}

/* Checks that v is an array of at most PATTERNS_MAX valid patterns and
 * adds their count and bytes to *n and *bytes. */
static bool patterns_ok(const json_t *v, size_t *n, size_t *bytes)
{
	if (!json_is_array(v) || json_array_size(v) > PATTERNS_MAX)
		return false;
	size_t i;
	const json_t *e;
	json_array_foreach(v, i, e)
	{
		if (!json_is_string(e) || !pattern_ok(json_string_value(e), json_string_length(e)))
			return false;
		*bytes += json_string_length(e) + 1;
	}
	*n += json_array_size(v);
	return true;
}

/* Appends the strings of array v (or the NUL-separated list g of ng
 * strings) to r's pointers at *i and the text at *text. */
static void add_patterns(struct auth_rights *r, size_t *i, char **text, const json_t *v,
                         const char *g, size_t ng)
{
	size_t k;
	const json_t *e;
	if (v) {
		json_array_foreach(v, k, e)
		{
			size_t len = json_string_length(e) + 1;
			memcpy(*text, json_string_value(e), len);
			r->pat[(*i)++] = *text;
			*text += len;
		}
		return;
	}
	for (k = 0; k < ng; k++) {
		size_t len = strlen(g) + 1;
		memcpy(*text, g, len);
		r->pat[(*i)++] = *text;
		*text += len;
		g += len;
	}
}

/* Builds the rights of claims into *out (NULL: no restriction). Returns 0,
 * LH_EAUTH with *why set, or LH_ENOMEM. */
static int rights_from(const struct auth *a, json_t *claims, struct auth_rights **out,
                       const char **why)
{
	json_t *ch = json_object_get(claims, "channels");
	json_t *pub = json_object_get(claims, "publish");
	json_t *role = json_object_get(claims, "role");
	size_t nsub = 0, npub = 0, bytes = 0;
	*out = NULL;
	if (ch && !patterns_ok(ch, &nsub, &bytes)) {
		*why = "channels claim must be an array of channel patterns";
		return LH_EAUTH;
	}
	if (pub && !json_is_boolean(pub) && !patterns_ok(pub, &npub, &bytes)) {
		*why = "publish claim must be true, false or an array of channel patterns";
		return LH_EAUTH;
	}
	if (role && !json_is_string(role)) {
		*why = "role claim must be a string";
		return LH_EAUTH;
	}
	bool guest = role && strcmp(json_string_value(role), "guest") == 0;
	if (!ch && !guest && (!pub || json_is_true(pub)))
		return 0; /* the common case: no restriction, no allocation */
	size_t nguest = guest ? a->nguest : 0;
	if (guest) {
		for (size_t i = 0, off = 0; i < a->nguest; i++) {
			size_t len = strlen(a->guest + off) + 1;
			bytes += len;
			off += len;
		}
	}
	size_t n = nsub + nguest + npub;
	struct auth_rights *r = calloc(1, sizeof *r + n * sizeof(char *) + bytes);
	if (!r)
		return LH_ENOMEM;
	r->sub_listed = ch != NULL;
	r->guest = guest;
	r->pub = !pub || json_is_true(pub) ? PUB_ALL : json_is_false(pub) ? PUB_NONE : PUB_LISTED;
	r->nsub = (uint16_t)nsub;
	r->nguest = (uint16_t)nguest;
	r->npub = (uint16_t)npub;
	char *text = (char *)(r->pat + n);
	size_t i = 0;
	if (ch)
		add_patterns(r, &i, &text, ch, NULL, 0);
	if (guest)
		add_patterns(r, &i, &text, NULL, a->guest, nguest);
	if (r->pub == PUB_LISTED)
		add_patterns(r, &i, &text, pub, NULL, 0);
	*out = r;
	return 0;
}

/* Parses the comma-separated guest patterns into a->guest. */
static int load_guest(struct auth *a, const char *spec, char *err, size_t errlen)
{
	if (!spec || !*spec)
		return 0;
	size_t len = strlen(spec);
	a->guest = calloc(1, len + 2);
	if (!a->guest) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	char *o = a->guest;
	for (const char *p = spec; p;) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		while (n > 0 && *p == ' ')
			p++, n--;
		while (n > 0 && p[n - 1] == ' ')
			n--;
		if (!pattern_ok(p, n)) {
			snprintf(err, errlen,
			         "LIVEHUB_GUEST_CHANNELS: \"%.*s\" is not a channel pattern "
			         "(A-Z a-z 0-9 _ . : @ + = / - and *)",
			         (int)(n > 160 ? 160 : n), p);
			return -1;
		}
		memcpy(o, p, n);
		o[n] = '\0';
		o += n + 1;
		a->nguest++;
		p = end ? end + 1 : NULL;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * The auth context
 * ------------------------------------------------------------------------ */

static bool copy_text(char *dst, const char *src, const char *def, const char *what, char *err,
                      size_t errlen)
{
	const char *s = src && *src ? src : def;
	if (strlen(s) >= CLAIM_MAX) {
		snprintf(err, errlen, "%s longer than %d characters", what, CLAIM_MAX - 1);
		return false;
	}
	strcpy(dst, s);
	return true;
}

struct auth *auth_new(const struct auth_config *cfg, char *err, size_t errlen)
{
	char scratch[8];
	if (!err || errlen == 0) {
		err = scratch;
		errlen = sizeof scratch;
	}
	err[0] = '\0';
	struct auth *a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	a->leeway_s = cfg->leeway_s;
	if (!copy_text(a->tenant_claim, cfg->tenant_claim, "tenant_id", "tenant claim", err,
	               errlen) ||
	    !copy_text(a->user_claim, cfg->user_claim, "sub", "user claim", err, errlen) ||
	    !copy_text(a->issuer, cfg->issuer, "", "issuer", err, errlen) ||
	    !copy_text(a->audience, cfg->audience, "", "audience", err, errlen) ||
	    load_guest(a, cfg->guest_channels, err, errlen) || load_keys(a, cfg, err, errlen)) {
		auth_free(a);
		return NULL;
	}
	return a;
}

void auth_free(struct auth *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->nkeys; i++)
		key_clear(&a->keys[i]);
	free(a->keys);
	free(a->guest);
	free(a);
}

int auth_leeway(const struct auth *a)
{
	return a->leeway_s;
}

/* ------------------------------------------------------------------------
 * Signatures
 * ------------------------------------------------------------------------ */

static bool hmac_ok(const struct key *k, const unsigned char *msg, size_t n,
                    const unsigned char *sig, size_t sig_len)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	if (!HMAC(alg_md(k->alg), k->secret, (int)k->secret_len, msg, n, mac, &mac_len))
		return false;
	return sig_len == mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0;
}

/* JWS ES* signatures are r||s, each exactly the curve size; EVP wants DER.
 * Returns the DER length in der (room for 2 * 72 bytes), or 0. */
static size_t es_to_der(const unsigned char *sig, size_t sig_len, size_t half, unsigned char *der)
{
	if (sig_len != 2 * half)
		return 0;
	ECDSA_SIG *es = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
	size_t len = 0;
	if (es && r && s && ECDSA_SIG_set0(es, r, s)) {
		r = s = NULL; /* es owns them now */
		unsigned char *p = der;
		int n = i2d_ECDSA_SIG(es, &p);
		len = n > 0 ? (size_t)n : 0;
	}
	BN_free(r);
	BN_free(s);
	ECDSA_SIG_free(es);
	return len;
}

static bool pkey_ok(const struct key *k, const unsigned char *msg, size_t n,
                    const unsigned char *sig, size_t sig_len)
{
	unsigned char der[160];
	if (k->alg == ES256 || k->alg == ES384) {
		sig_len = es_to_der(sig, sig_len, k->alg == ES256 ? 32 : 48, der);
		if (sig_len == 0)
			return false;
		sig = der;
	} else if (sig_len != (size_t)EVP_PKEY_get_size(k->pkey)) {
		return false;
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, alg_md(k->alg), NULL, k->pkey) == 1 &&
	          EVP_DigestVerify(ctx, sig, sig_len, msg, n) == 1;
	EVP_MD_CTX_free(ctx);
	return ok;
}

static bool key_verifies(const struct key *k, const char *token, size_t signed_len,
                         const unsigned char *sig, size_t sig_len)
{
	const unsigned char *msg = (const unsigned char *)token;
	return alg_is_hmac(k->alg) ? hmac_ok(k, msg, signed_len, sig, sig_len)
	                           : pkey_ok(k, msg, signed_len, sig, sig_len);
}

/* Reads the header (alg, kid) and checks the signature with the key(s) it
 * may use. Returns 0 or LH_EAUTH with *why. */
static int check_signature(const struct auth *a, const char *token, size_t n, const char *dot1,
                           const char *dot2, const char **why)
{
	json_t *head = segment_json(token, (size_t)(dot1 - token));
	if (!head)
		return LH_EAUTH; /* "malformed token" */
	int rc = LH_EAUTH;
	json_t *jalg = json_object_get(head, "alg"), *jkid = json_object_get(head, "kid");
	int alg = json_is_string(jalg) ? alg_from_name(json_string_value(jalg)) : -1;
	if (alg < 0) {
		*why = "token algorithm not accepted";
		goto out;
	}
	if (jkid && !json_is_string(jkid)) {
		*why = "malformed token (kid)";
		goto out;
	}
	if (json_object_get(head, "crit")) {
		*why = "malformed token (crit header not supported)";
		goto out;
	}
	size_t sig_text = n - (size_t)(dot2 + 1 - token);
	unsigned char sig[SIG_MAX + 3];
	long sig_len =
	        sig_text <= SIG_MAX * 4 / 3 + 2 ? b64url_decode(dot2 + 1, sig_text, sig) : -1;
	if (sig_len < 0) {
		*why = "bad signature";
		goto out;
	}
	const char *kid = jkid ? json_string_value(jkid) : NULL;
	bool tried = false;
	for (size_t i = 0; i < a->nkeys; i++) {
		const struct key *k = &a->keys[i];
		if (kid && strcmp(k->kid, kid) != 0)
			continue;
		if (k->alg != (enum alg)alg) {
			if (kid) {
				*why = "token algorithm does not match its key";
				goto out;
			}
			continue;
		}
		tried = true;
		if (key_verifies(k, token, (size_t)(dot2 - token), sig, (size_t)sig_len)) {
			rc = 0;
			goto out;
		}
	}
	*why = tried ? "bad signature"
	       : kid ? "unknown key id (kid)"
	             : "token algorithm not accepted";
out:
	json_decref(head);
	return rc;
}

/* ------------------------------------------------------------------------
 * Claims
 * ------------------------------------------------------------------------ */

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

static int check_times(const struct auth *a, json_t *claims, int64_t *exp_out, const char **why)
{
	int64_t now = (int64_t)time(NULL), exp = 0, nbf = 0, iat = 0;
	int has_exp = numeric_claim(claims, "exp", &exp);
	int has_nbf = numeric_claim(claims, "nbf", &nbf);
	int has_iat = numeric_claim(claims, "iat", &iat);
	if (has_exp < 0 || has_nbf < 0 || has_iat < 0) {
		*why = "exp, nbf and iat must be numbers";
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
	if (has_iat && now + a->leeway_s < iat) {
		*why = "token not valid yet (iat in the future)";
		return LH_EAUTH;
	}
	*exp_out = has_exp ? exp : 0;
	return 0;
}

/* iss must equal the configured issuer; aud (a string or an array of
 * strings) must contain the configured audience. */
static int check_iss_aud(const struct auth *a, json_t *claims, const char **why)
{
	if (a->issuer[0]) {
		json_t *iss = json_object_get(claims, "iss");
		if (!json_is_string(iss) || strcmp(json_string_value(iss), a->issuer) != 0) {
			*why = "iss claim missing or not the configured issuer";
			return LH_EAUTH;
		}
	}
	if (a->audience[0]) {
		json_t *aud = json_object_get(claims, "aud"), *e;
		bool hit = json_is_string(aud) && strcmp(json_string_value(aud), a->audience) == 0;
		size_t i;
		if (json_is_array(aud)) {
			json_array_foreach(aud, i, e)
			{
				hit |= json_is_string(e) &&
				       strcmp(json_string_value(e), a->audience) == 0;
			}
		}
		if (!hit) {
			*why = "aud claim missing or not the configured audience";
			return LH_EAUTH;
		}
	}
	return 0;
}

static int check_claims(const struct auth *a, json_t *claims, struct auth_identity *id,
                        const char **why)
{
	int rc = check_times(a, claims, &id->exp, why);
	if (rc || (rc = check_iss_aud(a, claims, why)))
		return rc;
	if (!string_claim(claims, a->user_claim, name_user_ok, id->user, sizeof(id->user))) {
		*why = "user claim (sub) missing or not a valid user id";
		return LH_EAUTH;
	}
	if (!string_claim(claims, a->tenant_claim, name_tenant_ok, id->tenant,
	                  sizeof(id->tenant))) {
		*why = "tenant claim missing or not a valid tenant id";
		return LH_EAUTH;
	}
	rc = rights_from(a, claims, &id->rights, why);
	if (rc == LH_ENOMEM) {
		*why = "out of memory";
		rc = LH_EAUTH;
	}
	return rc;
}

int auth_verify(struct auth *a, const char *token, struct auth_identity *id, const char **why)
{
	memset(id, 0, sizeof(*id));
	*why = "malformed token";
	size_t n = token ? strnlen(token, AUTH_TOKEN_MAX + 1) : 0;
	if (n == 0 || n > AUTH_TOKEN_MAX)
		return LH_EAUTH;
	const char *dot1 = memchr(token, '.', n);
	const char *dot2 = dot1 ? memchr(dot1 + 1, '.', n - (size_t)(dot1 + 1 - token)) : NULL;
	if (!dot1 || !dot2 || memchr(dot2 + 1, '.', n - (size_t)(dot2 + 1 - token)))
		return LH_EAUTH;
	int rc = check_signature(a, token, n, dot1, dot2, why);
	if (rc)
		return rc;
	json_t *claims = segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
	if (!claims) {
		*why = "malformed token";
		return LH_EAUTH;
	}
	rc = check_claims(a, claims, id, why);
	json_decref(claims);
	if (rc) {
		auth_rights_free(id->rights);
		memset(id, 0, sizeof(*id));
	}
	return rc;
}

/* ------------------------------------------------------------------------
 * Minting and randomness
 * ------------------------------------------------------------------------ */

char *auth_mint(const char *secret, size_t secret_len, const char *tenant_claim,
                const char *user_claim, const char *tenant, const char *user, int64_t ttl_s)
{
	jwt_t *jwt = NULL;
	char *token = NULL;
	int64_t now = (int64_t)time(NULL);
	if (jwt_new(&jwt))
		return NULL;
	if (secret_len == 0)
		goto out;
	if (jwt_add_grant(jwt, user_claim && *user_claim ? user_claim : "sub", user) ||
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
