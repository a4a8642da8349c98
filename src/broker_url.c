/* broker_url: the pure parts of the Redis broker (no I/O, no hiredis):
 * the LIVEHUB_REDIS_URL parser and the channel message format. See
 * broker.h. */
#define _GNU_SOURCE 1 /* memmem */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "livehub.h"

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Copies the n bytes at s into out (cap bytes), decoding %XX escapes.
 * Returns 0, or -1 when it does not fit or an escape is bad or NUL. */
static int unescape(const char *s, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)s[i];
		if (c == '%') {
			int hi = i + 1 < n ? hexval(s[i + 1]) : -1;
			int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return -1;
			c = hi * 16 + lo;
			i += 2;
		}
		if (o + 1 >= cap)
			return -1;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return 0;
}

/* Parses the decimal in [s, s+n) into *v within [lo, hi]. */
static int number(const char *s, size_t n, long lo, long hi, int *v)
{
	if (n == 0 || n > 9)
		return -1;
	long x = 0;
	for (size_t i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		x = x * 10 + (s[i] - '0');
	}
	if (x < lo || x > hi)
		return -1;
	*v = (int)x;
	return 0;
}

static int fail(const char **why, const char *text)
{
	if (why)
		*why = text;
	return LH_EINVAL;
}

/* The userinfo part "[user]:password" or "password" (redis-cli accepts
 * both; "user:" alone is no password). */
static int userinfo(const char *s, size_t n, struct broker_url *out, const char **why)
{
	const char *colon = memchr(s, ':', n);
	if (!colon) {
		if (unescape(s, n, out->password, sizeof(out->password)))
			return fail(why, "bad or too long password");
		return 0;
	}
	size_t ulen = (size_t)(colon - s);
	if (unescape(s, ulen, out->user, sizeof(out->user)))
		return fail(why, "bad or too long user name");
	if (unescape(colon + 1, n - ulen - 1, out->password, sizeof(out->password)))
		return fail(why, "bad or too long password");
	if (out->user[0] && !out->password[0])
		return fail(why, "a user name needs a password");
	return 0;
}

/* host[:port] or [v6]:port. */
static int hostport(const char *s, size_t n, struct broker_url *out, const char **why)
{
	const char *host = s, *port = NULL;
	size_t hlen = n, plen = 0;
	if (n && s[0] == '[') {
		const char *close = memchr(s, ']', n);
		if (!close)
			return fail(why, "unclosed [ in the host");
		host = s + 1;
		hlen = (size_t)(close - host);
		size_t rest = n - (size_t)(close + 1 - s);
		if (rest) {
			if (close[1] != ':')
				return fail(why, "junk after ]");
			port = close + 2;
			plen = rest - 1;
		}
	} else {
		const char *colon = memchr(s, ':', n);
		if (colon) {
			hlen = (size_t)(colon - s);
			port = colon + 1;
			plen = n - hlen - 1;
		}
	}
	if (hlen == 0)
		return fail(why, "no host");
	if (hlen >= sizeof(out->host))
		return fail(why, "host name too long");
	for (size_t i = 0; i < hlen; i++) {
		unsigned char c = (unsigned char)host[i];
		if (!isalnum(c) && !strchr("-._:%", c))
			return fail(why, "bad character in the host");
	}
	memcpy(out->host, host, hlen);
	out->host[hlen] = '\0';
	if (port && number(port, plen, 1, 65535, &out->port))
		return fail(why, "port is not a number in 1-65535");
	return 0;
}

int broker_url_parse(const char *url, struct broker_url *out, const char **why)
{
	memset(out, 0, sizeof(*out));
	out->port = 6379;
	if (!url)
		return fail(why, "no URL");
	size_t n = strlen(url);
	static const char unix_scheme[] = "unix://", redis_scheme[] = "redis://";
	if (strncmp(url, unix_scheme, sizeof(unix_scheme) - 1) == 0) {
		const char *path = url + sizeof(unix_scheme) - 1;
		size_t plen = n - (sizeof(unix_scheme) - 1);
		if (plen == 0 || path[0] != '/')
			return fail(why, "unix:// needs an absolute path (unix:///run/redis.sock)");
		if (plen >= 108)
			return fail(why, "socket path too long");
		memcpy(out->host, path, plen + 1);
		out->unix_socket = true;
		out->port = 0;
		return 0;
	}
	if (strncmp(url, redis_scheme, sizeof(redis_scheme) - 1) != 0)
		return fail(why, "must start with redis:// or unix://");
	const char *s = url + sizeof(redis_scheme) - 1;
	const char *end = url + n;
	const char *slash = memchr(s, '/', (size_t)(end - s));
	const char *auth_end = slash ? slash : end;
	/* The last '@' before the path: a password may hold '@' escaped or not. */
	const char *at = NULL;
	for (const char *p = s; p < auth_end; p++)
		if (*p == '@')
			at = p;
	if (at) {
		if (userinfo(s, (size_t)(at - s), out, why))
			return LH_EINVAL;
		s = at + 1;
	}
	if (hostport(s, (size_t)(auth_end - s), out, why))
		return LH_EINVAL;
	if (slash && slash + 1 < end &&
	    number(slash + 1, (size_t)(end - slash - 1), 0, 100000, &out->db))
		return fail(why, "database is not a number");
	return 0;
}

/* ------------------------------------------------------------------------
 * Channel messages
 *
 *   "E <offset> <epoch> <conflate key hex> <node>\n<frame>"  an event
 *   "R <node>\n<frame>"                                       a raw frame
 * ------------------------------------------------------------------------ */

/* Reads one space- or newline-terminated field starting at *p. */
static int field(const char **p, const char *end, const char **f, size_t *flen)
{
	const char *s = *p;
	const char *e = s;
	while (e < end && *e != ' ' && *e != '\n')
		e++;
	if (e == end || e == s)
		return -1;
	*f = s;
	*flen = (size_t)(e - s);
	*p = e + 1;
	return 0;
}

static int parse_u64(const char *s, size_t n, int base, uint64_t *v)
{
	if (n == 0 || n > 20)
		return -1;
	char tmp[24];
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	char *e;
	errno = 0;
	unsigned long long x = strtoull(tmp, &e, base);
	if (errno || *e || tmp[0] == '-' || tmp[0] == '+' || tmp[0] == ' ')
		return -1;
	*v = x;
	return 0;
}

int broker_msg_parse(const char *msg, size_t len, struct broker_msg *out)
{
	memset(out, 0, sizeof(*out));
	if (len < 3 || msg[1] != ' ' || (msg[0] != 'E' && msg[0] != 'R'))
		return LH_EINVAL;
	out->kind = msg[0];
	const char *p = msg + 2, *end = msg + len;
	const char *f;
	size_t flen;
	if (out->kind == 'E') {
		if (field(&p, end, &f, &flen) || parse_u64(f, flen, 10, &out->offset) ||
		    out->offset == 0)
			return LH_EINVAL;
		if (field(&p, end, &f, &flen) || flen != 16)
			return LH_EINVAL;
		for (size_t i = 0; i < 16; i++)
			if (hexval(f[i]) < 0)
				return LH_EINVAL;
		memcpy(out->epoch, f, 16);
		out->epoch[16] = '\0';
		if (field(&p, end, &f, &flen) || parse_u64(f, flen, 16, &out->conflate_key))
			return LH_EINVAL;
	}
	if (field(&p, end, &f, &flen) || flen >= sizeof(out->node) || p[-1] != '\n')
		return LH_EINVAL;
	memcpy(out->node, f, flen);
	out->node[flen] = '\0';
	out->frame = p;
	out->frame_len = (size_t)(end - p);
	return out->frame_len ? 0 : LH_EINVAL;
}

/* ------------------------------------------------------------------------
 * Event frames read back from a stream
 * ------------------------------------------------------------------------ */

bool broker_epoch_ok(const char *s, size_t len)
{
	if (len != 16)
		return false;
	for (size_t i = 0; i < 16; i++)
		if (hexval((unsigned char)s[i]) < 0)
			return false;
	return true;
}

int broker_frame_parts(const char *f, size_t len, struct broker_frame *out)
{
	static const char tkey[] = "{\"type\":\"",
	                  okey[] = ",\"offset\":", skey[] = ",\"ts\":", dkey[] = ",\"data\":";
	memset(out, 0, sizeof(*out));
	if (len < sizeof(tkey) || memcmp(f, tkey, sizeof(tkey) - 1) != 0 || f[len - 1] != '}')
		return LH_EINVAL;
	const char *end = f + len;
	const char *t = f + sizeof(tkey) - 1;
	const char *q = memchr(t, '"', (size_t)(end - t));
	if (!q)
		return LH_EINVAL;
	out->type = t;
	out->type_len = (size_t)(q - t);
	/* Names never hold '"', so the first keys after the type are ours;
	 * the data comes last. */
	const char *o = memmem(q, (size_t)(end - q), okey, sizeof(okey) - 1);
	const char *s = o ? memmem(o, (size_t)(end - o), skey, sizeof(skey) - 1) : NULL;
	const char *d = s ? memmem(s, (size_t)(end - s), dkey, sizeof(dkey) - 1) : NULL;
	if (!d)
		return LH_EINVAL;
	const char *on = o + sizeof(okey) - 1, *oe = on;
	while (oe < end && *oe >= '0' && *oe <= '9')
		oe++;
	if (parse_u64(on, (size_t)(oe - on), 10, &out->offset))
		return LH_EINVAL;
	const char *sn = s + sizeof(skey) - 1, *se = sn;
	bool neg = se < end && *se == '-';
	if (neg)
		se++, sn++;
	while (se < end && *se >= '0' && *se <= '9')
		se++;
	uint64_t ts;
	if (parse_u64(sn, (size_t)(se - sn), 10, &ts))
		return LH_EINVAL;
	out->ts_ms = neg ? -(int64_t)ts : (int64_t)ts;
	out->data = d + sizeof(dkey) - 1;
	out->data_len = (size_t)(end - 1 - out->data);
	return out->data_len ? 0 : LH_EINVAL;
}
