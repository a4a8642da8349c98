/* edge: origin allow-list, rate limit, per-address counts, JSON shape.
 * See edge.h. */
#include "edge.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dict.h"

/* ------------------------------------------------------------------------
 * Origins
 * ------------------------------------------------------------------------ */

#define ORIGIN_MAX 255

struct origins {
	size_t n;
	bool any;       /* the list holds "*" */
	char **pattern; /* lowercased, NUL-terminated */
};

static bool host_char(char c)
{
	return isalnum((unsigned char)c) || c == '.' || c == '-';
}

/* Glob match of a lowercased pattern against s[0..n), '*' taking one or
 * more host characters. Iterative with one backtrack point per star, as
 * patterns are short; case is folded on s as it is read. */
static bool glob(const char *p, const char *s, size_t n)
{
	const char *star = NULL;
	size_t i = 0, resume = 0;
	while (i < n) {
		char c = (char)tolower((unsigned char)s[i]);
		if (*p == '*' && host_char(c)) {
			star = p++;
			resume = ++i; /* the star took s[i]; it may take more later */
		} else if (*p && *p != '*' && *p == c) {
			p++;
			i++;
		} else if (star && host_char((char)tolower((unsigned char)s[resume]))) {
			/* Let the last star take one more host character. */
			p = star + 1;
			i = ++resume;
		} else {
			return false;
		}
	}
	return *p == '\0';
}

void origins_free(struct origins *o)
{
	if (!o)
		return;
	for (size_t i = 0; i < o->n; i++)
		free(o->pattern[i]);
	free(o->pattern);
	free(o);
}

/* Appends the entry s[0..n) to o (lowercased). Returns 0, or -1 with *err. */
static int origins_add(struct origins *o, const char *s, size_t n, const char **err)
{
	if (n == 0) {
		*err = "an empty entry (two commas in a row, or a trailing comma)";
		return -1;
	}
	if (n > ORIGIN_MAX) {
		*err = "an entry longer than 255 characters";
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (isspace((unsigned char)s[i]) || (unsigned char)s[i] < 0x21 ||
		    (unsigned char)s[i] > 0x7e) {
			*err = "an entry with a space or a non-ASCII character";
			return -1;
		}
	}
	if (n == 1 && s[0] == '*') {
		o->any = true;
		return 0;
	}
	char **grown = realloc(o->pattern, (o->n + 1) * sizeof *grown);
	if (!grown) {
		*err = "out of memory";
		return -1;
	}
	o->pattern = grown;
	char *p = malloc(n + 1);
	if (!p) {
		*err = "out of memory";
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		p[i] = (char)tolower((unsigned char)s[i]);
	p[n] = '\0';
	o->pattern[o->n++] = p;
	return 0;
}

struct origins *origins_new(const char *list, const char **err)
{
	*err = NULL;
	const char *s = list;
	while (*s && isspace((unsigned char)*s))
		s++;
	if (!*s)
		return NULL;
	struct origins *o = calloc(1, sizeof *o);
	if (!o) {
		*err = "out of memory";
		return NULL;
	}
	for (;;) {
		const char *end = strchr(s, ',');
		size_t n = end ? (size_t)(end - s) : strlen(s);
		const char *a = s, *b = s + n;
		while (a < b && isspace((unsigned char)*a))
			a++;
		while (b > a && isspace((unsigned char)b[-1]))
			b--;
		if (origins_add(o, a, (size_t)(b - a), err)) {
			origins_free(o);
			return NULL;
		}
		if (!end)
			break;
		s = end + 1;
	}
	return o;
}

bool origins_allowed(const struct origins *o, const char *origin, size_t len)
{
	if (!o || o->any)
		return true;
	if (len > ORIGIN_MAX)
		return false;
	for (size_t i = 0; i < o->n; i++)
		if (glob(o->pattern[i], origin, len))
			return true;
	return false;
}

size_t origins_count(const struct origins *o)
{
	return o ? o->n + (o->any ? 1 : 0) : 0;
}

/* ------------------------------------------------------------------------
 * Rate limit
 * ------------------------------------------------------------------------ */

enum rate_verdict rate_take(struct rate *r, const struct rate_cfg *cfg, uint32_t now_ms,
                            uint32_t *retry_ms)
{
	if (cfg->per_min == 0)
		return RATE_OK;
	uint64_t cap = (uint64_t)(cfg->burst ? cfg->burst : 1) * 1000;
	uint64_t have;
	if (r->milli == 0) {
		have = cap; /* a new connection starts with a full bucket */
	} else {
		/* per_min tokens a minute = per_min milli-tokens a 60 ms. */
		uint64_t dt = (uint32_t)(now_ms - r->last_ms);
		have = (uint64_t)(r->milli - 1) + dt * cfg->per_min / 60;
		if (have > cap)
			have = cap;
	}
	r->last_ms = now_ms;
	if (have >= 1000) {
		r->milli = (uint32_t)(have - 1000) + 1;
		r->strikes = 0;
		return RATE_OK;
	}
	r->milli = (uint32_t)have + 1;
	/* Milli-tokens missing, at per_min/60 milli-tokens per ms; rounded up. */
	*retry_ms = (uint32_t)(((1000 - have) * 60 + cfg->per_min - 1) / cfg->per_min);
	if (r->strikes < UINT16_MAX)
		r->strikes++;
	if (cfg->strikes && r->strikes >= cfg->strikes)
		return RATE_ABUSIVE;
	return RATE_REFUSE;
}

/* ------------------------------------------------------------------------
 * Connections per address
 * ------------------------------------------------------------------------ */

#define IP_TEXT_MAX EDGE_IP_KEY_MAX /* INET6_ADDRSTRLEN is 46 */

void edge_ip_key(const char *ip, char *out)
{
	struct in6_addr a6;
	struct in_addr a4;
	char text[INET6_ADDRSTRLEN];
	if (strncasecmp(ip, "::ffff:", 7) == 0 && inet_pton(AF_INET, ip + 7, &a4) == 1)
		ip += 7;
	if (strchr(ip, ':') && inet_pton(AF_INET6, ip, &a6) == 1) {
		memset(a6.s6_addr + 8, 0, 8);
		if (inet_ntop(AF_INET6, &a6, text, sizeof text)) {
			snprintf(out, EDGE_IP_KEY_MAX, "%s/64", text);
			return;
		}
	}
	snprintf(out, EDGE_IP_KEY_MAX, "%s", ip);
}

struct ip_slot {
	uint32_t n;
	uint8_t len;
	char ip[IP_TEXT_MAX];
};

struct ipcount {
	struct dict *d;
};

struct ipcount *ipcount_new(uint64_t seed)
{
	struct ipcount *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->d = dict_new(seed, offsetof(struct ip_slot, ip));
	if (!t->d) {
		free(t);
		return NULL;
	}
	return t;
}

void ipcount_free(struct ipcount *t)
{
	if (!t)
		return;
	/* Every slot should be gone; free leftovers rather than leak them. */
	size_t pos = 0;
	struct dict_entry e;
	while (dict_next(t->d, &pos, &e)) {
		dict_del(t->d, e.key, e.len);
		free(e.val);
	}
	dict_free(t->d);
	free(t);
}

static size_t ip_len(const char *ip)
{
	return strnlen(ip, IP_TEXT_MAX - 1);
}

uint32_t ipcount_get(const struct ipcount *t, const char *ip)
{
	const struct ip_slot *s = dict_get(t->d, ip, ip_len(ip));
	return s ? s->n : 0;
}

struct ip_slot *ipcount_acquire(struct ipcount *t, const char *ip)
{
	size_t n = ip_len(ip);
	struct ip_slot *s = dict_get(t->d, ip, n);
	if (!s) {
		s = calloc(1, sizeof *s);
		if (!s)
			return NULL;
		memcpy(s->ip, ip, n);
		s->len = (uint8_t)n;
		if (dict_put(t->d, s->ip, n, s) != 0) {
			free(s);
			return NULL;
		}
	}
	s->n++;
	return s;
}

void ipcount_release(struct ipcount *t, struct ip_slot *s)
{
	if (!s || --s->n > 0)
		return;
	dict_del(t->d, s->ip, s->len);
	free(s);
}

size_t ipcount_addresses(const struct ipcount *t)
{
	return dict_count(t->d);
}

/* ------------------------------------------------------------------------
 * JSON shape
 * ------------------------------------------------------------------------ */

/* The index of the quote that ends the string starting at buf[i] (after
 * its opening quote), or len when it does not end: memchr to the next
 * quote, which is escaped when an odd number of backslashes precede it. */
static size_t string_end(const char *buf, size_t len, size_t i)
{
	while (i < len) {
		const char *q = memchr(buf + i, '"', len - i);
		if (!q)
			return len;
		size_t at = (size_t)(q - buf), k = at;
		while (k > i && buf[k - 1] == '\\')
			k--;
		if ((at - k) % 2 == 0)
			return at;
		i = at + 1;
	}
	return len;
}

int edge_json_shape(const char *buf, size_t len, uint32_t max_depth, uint32_t max_elems,
                    const char **why)
{
	uint32_t depth = 0, elems = 0;
	bool empty = false; /* just after '[' or '{': no element yet */
	for (size_t i = 0; i < len; i++) {
		char c = buf[i];
		if (c == '"') {
			i = string_end(buf, len, i + 1);
			if (empty) {
				elems++;
				empty = false;
			}
			continue;
		}
		if (c == '[' || c == '{') {
			if (empty)
				elems++;
			if (++depth > max_depth) {
				*why = "the message is nested deeper than the limit";
				return -1;
			}
			empty = true;
		} else if (c == ']' || c == '}') {
			if (depth > 0)
				depth--;
			empty = false;
		} else if (c == ',') {
			elems++;
		} else if (empty && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
			elems++;
			empty = false;
		}
		if (elems > max_elems) {
			*why = "the message has more elements than the limit";
			return -1;
		}
	}
	return 0;
}
