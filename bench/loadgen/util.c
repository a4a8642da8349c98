/* util: clock, pipe I/O, the histogram, JWT minting and who each
 * connection is. */
#include "lg.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int read_all(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static unsigned bucket_of(uint64_t v)
{
	if (v < H_LINEAR)
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v);
	if (e >= H_MAX_EXP)
		return H_BUCKETS - 1;
	return H_LINEAR + (e - 7) * (1u << H_SUB_BITS) +
	       (unsigned)((v >> (e - H_SUB_BITS)) & ((1u << H_SUB_BITS) - 1));
}

/* The middle of bucket i, in ns. */
static uint64_t value_of(unsigned i)
{
	if (i < H_LINEAR)
		return i;
	unsigned e = 7 + (i - H_LINEAR) / (1u << H_SUB_BITS);
	uint64_t sub = (i - H_LINEAR) % (1u << H_SUB_BITS);
	uint64_t width = 1ull << (e - H_SUB_BITS);
	return (1ull << e) + sub * width + width / 2;
}

void hist_add(struct hist *h, uint64_t v)
{
	h->b[bucket_of(v)]++;
	h->count++;
	if (v > h->max)
		h->max = v;
}

void hist_merge(struct hist *into, const struct hist *from)
{
	for (unsigned i = 0; i < H_BUCKETS; i++)
		into->b[i] += from->b[i];
	into->count += from->count;
	if (from->max > into->max)
		into->max = from->max;
}

uint64_t hist_pct(const struct hist *h, double pct)
{
	if (!h->count)
		return 0;
	uint64_t want = (uint64_t)((double)h->count * pct / 100.0 + 0.5);
	if (want < 1)
		want = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < H_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= want) {
			uint64_t v = value_of(i);
			return v > h->max ? h->max : v;
		}
	}
	return h->max;
}

static size_t b64url(char *out, const unsigned char *in, size_t len)
{
	static const char tab[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0, i = 0;

	for (; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = tab[(v >> 6) & 63];
		out[o++] = tab[v & 63];
	}
	if (i < len) {
		uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		if (i + 1 < len)
			out[o++] = tab[(v >> 6) & 63];
	}
	out[o] = 0;
	return o;
}

int jwt_mint(char *out, size_t cap, const char *secret, const char *tenant, const char *user)
{
	static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	char claims[512];
	long now = (long)time(NULL);
	int cl = snprintf(claims, sizeof(claims),
	                  "{\"sub\":\"%s\",\"tenant_id\":\"%s\",\"iat\":%ld,\"exp\":%ld}", user,
	                  tenant, now, now + 3600);
	if (cl < 0 || (size_t)cl >= sizeof(claims))
		return -1;
	size_t need = (sizeof(hdr) + (size_t)cl + 32) * 4 / 3 + 16;
	if (cap < need)
		return -1;
	size_t n = b64url(out, (const unsigned char *)hdr, sizeof(hdr) - 1);
	out[n++] = '.';
	n += b64url(out + n, (const unsigned char *)claims, (size_t)cl);
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)out, n, mac,
	     &maclen);
	out[n++] = '.';
	n += b64url(out + n, mac, maclen);
	return (int)n;
}

bool conn_is_foreign(const struct lg_opts *o, int g)
{
	return g >= o->conns && g < o->conns + o->foreign;
}

/* Stalled connections come last: in the measured tenants, on the measured
 * channels, but they stop reading once ready (a browser tab that froze). */
bool conn_is_stalled(const struct lg_opts *o, int g)
{
	return g >= o->conns + o->foreign;
}

/* Measured connections are spread over tenants bt0..bt{T-1}; the foreign
 * ones are all in tenant bx, and subscribe to the same channel names as
 * measured ones, so a hub that mixed tenants up would show it. */
void conn_identity(const struct lg_opts *o, int g, char *tenant, size_t tcap, char *user,
                   size_t ucap)
{
	if (conn_is_foreign(o, g)) {
		snprintf(tenant, tcap, "bx");
		snprintf(user, ucap, "f%d", g);
	} else if (conn_is_stalled(o, g)) {
		snprintf(tenant, tcap, "bt%d", g % o->tenants);
		snprintf(user, ucap, "s%d", g);
	} else {
		snprintf(tenant, tcap, "bt%d", g % o->tenants);
		snprintf(user, ucap, "u%d", g);
	}
}
