/* history: per-channel event history and its settings. See history.h. */
#include "history.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "livehub.h"

/* ------------------------------------------------------------------------
 * Settings
 * ------------------------------------------------------------------------ */

/* Parses a whole number in [0, max] from s[0..n). */
static bool parse_u32(const char *s, size_t n, uint32_t max, uint32_t *out)
{
	if (n == 0 || n > 10)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > max)
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool kind_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '.' || c == '-' || c == '@' || c == '+' || c == '=' || c == '/';
}

/* Parses one "kind:size[/ttl]" entry of n bytes into k. */
static int parse_entry(const char *s, size_t n, uint32_t ttl_default, struct hist_kind *k,
                       char *err, size_t errlen)
{
	const char *colon = memchr(s, ':', n);
	size_t klen = colon ? (size_t)(colon - s) : 0;
	bool name_ok = colon && klen > 0 && klen <= HIST_KIND_MAX;
	for (size_t i = 0; name_ok && i < klen; i++)
		name_ok = kind_char_ok(s[i]) || (i == 0 && s[i] == '$');
	if (!name_ok) {
		snprintf(err, errlen, "\"%.*s\": expected kind:size[/ttl], e.g. job:50/600", (int)n,
		         s);
		return LH_EINVAL;
	}
	memcpy(k->name, s, klen);
	k->name[klen] = '\0';
	const char *v = colon + 1, *end = s + n;
	const char *slash = memchr(v, '/', (size_t)(end - v));
	const char *size_end = slash ? slash : end;
	k->ttl_s = ttl_default;
	if (!parse_u32(v, (size_t)(size_end - v), HIST_SIZE_LIMIT, &k->size) ||
	    (slash &&
	     !parse_u32(slash + 1, (size_t)(end - slash - 1), HIST_TTL_LIMIT, &k->ttl_s))) {
		snprintf(err, errlen, "\"%.*s\": size must be 0-%d and ttl 0-%d seconds", (int)n, s,
		         HIST_SIZE_LIMIT, HIST_TTL_LIMIT);
		return LH_EINVAL;
	}
	return 0;
}

int hist_parse_kinds(const char *spec, struct hist_limits *lim, char *err, size_t errlen)
{
	lim->nkinds = 0;
	const char *s = spec;
	while (*s) {
		size_t n = strcspn(s, ",");
		if (n > 0) {
			if (lim->nkinds == HIST_KINDS_MAX) {
				snprintf(err, errlen, "at most %d kinds", HIST_KINDS_MAX);
				return LH_EINVAL;
			}
			struct hist_kind *k = &lim->kinds[lim->nkinds];
			if (parse_entry(s, n, lim->ttl_s, k, err, errlen))
				return LH_EINVAL;
			/* A kind named twice: the later entry wins. */
			int i = 0;
			while (i < lim->nkinds && strcmp(lim->kinds[i].name, k->name) != 0)
				i++;
			if (i < lim->nkinds)
				lim->kinds[i] = *k;
			else
				lim->nkinds++;
		}
		s += n;
		if (*s == ',')
			s++;
	}
	return 0;
}

void hist_kind_of(const struct hist_limits *lim, const char *name, size_t len, uint32_t *size,
                  uint32_t *ttl_s)
{
	size_t klen = len;
	const char *colon = memchr(name, ':', len);
	if (colon)
		klen = (size_t)(colon - name);
	for (int i = 0; i < lim->nkinds; i++) {
		const struct hist_kind *k = &lim->kinds[i];
		if (strlen(k->name) == klen && memcmp(k->name, name, klen) == 0) {
			*size = k->size;
			*ttl_s = k->ttl_s;
			return;
		}
	}
	*size = lim->size;
	*ttl_s = lim->ttl_s;
}

/* ------------------------------------------------------------------------
 * Entries
 * ------------------------------------------------------------------------ */

size_t hist_entry_bytes(const struct frame *f)
{
	return sizeof(struct hist_entry) + sizeof(*f) + LH_FRAME_HEADROOM + f->cap;
}

/* Unlinks and frees e, which is the oldest entry of its channel. */
static void drop_oldest(struct hist_pool *pool, struct hist_entry *e)
{
	struct hist *hs = e->owner;
	hs->head = e->next;
	if (!hs->head)
		hs->tail = NULL;
	hs->n--;
	if (e->gprev)
		e->gprev->gnext = e->gnext;
	else
		pool->head = e->gnext;
	if (e->gnext)
		e->gnext->gprev = e->gprev;
	else
		pool->tail = e->gprev;
	pool->bytes -= hist_entry_bytes(e->f);
	pool->entries--;
	frame_unref(e->f);
	free(e);
}

int hist_push(struct hist_pool *pool, struct hist *hs, struct frame *f, uint64_t offset,
              int64_t ts_ms, uint32_t max_n)
{
	struct hist_entry *e = malloc(sizeof(*e));
	if (!e)
		return LH_ENOMEM;
	*e = (struct hist_entry){.gprev = pool->tail,
	                         .owner = hs,
	                         .f = frame_ref(f),
	                         .offset = offset,
	                         .ts_ms = ts_ms};
	if (pool->tail)
		pool->tail->gnext = e;
	else
		pool->head = e;
	pool->tail = e;
	if (hs->tail)
		hs->tail->next = e;
	else
		hs->head = e;
	hs->tail = e;
	hs->n++;
	pool->bytes += hist_entry_bytes(f);
	pool->entries++;
	while (hs->n > max_n)
		drop_oldest(pool, hs->head);
	/* The pool's oldest entry is always the oldest of its own channel:
	 * both lists are in publish order. */
	while (pool->bytes > pool->max_bytes && pool->head)
		drop_oldest(pool, pool->head);
	return 0;
}

void hist_trim(struct hist_pool *pool, struct hist *hs, int64_t cutoff_ms, uint32_t max_n)
{
	while (hs->head && (hs->n > max_n || hs->head->ts_ms < cutoff_ms))
		drop_oldest(pool, hs->head);
}

void hist_clear(struct hist_pool *pool, struct hist *hs)
{
	while (hs->head)
		drop_oldest(pool, hs->head);
}

bool hist_range(const struct hist *hs, uint64_t after, uint64_t top,
                const struct hist_entry **first, uint32_t *count)
{
	*first = NULL;
	*count = 0;
	if (after > top)
		return false;
	if (after == top)
		return true;
	/* Entries are in offset order; offsets are contiguous unless a period
	 * without history (size 0 after a reload) left a hole. */
	const struct hist_entry *e = hs->head;
	while (e && e->offset <= after)
		e = e->next;
	if (!e || e->offset != after + 1 || !hs->tail || hs->tail->offset != top)
		return false;
	uint64_t want = top - after;
	uint64_t n = 0, expect = after + 1;
	for (const struct hist_entry *x = e; x; x = x->next, expect++, n++)
		if (x->offset != expect)
			return false;
	if (n != want)
		return false;
	*first = e;
	*count = (uint32_t)n;
	return true;
}
