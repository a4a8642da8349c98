/* dict: a hash table from byte-string keys to pointers. See dict.h. */
#include "dict.h"

#include <stdlib.h>
#include <string.h>

#include "livehub.h"

#define MIN_CAP 8

/* A slot is empty (key NULL), a tombstone (key == TOMB) or an entry. */
struct slot {
	const char *key;
	void *val;
	uint32_t len;
	uint32_t hash;
};

struct dict {
	struct slot *slots;
	size_t cap;   /* a power of two */
	size_t count; /* entries */
	size_t used;  /* entries + tombstones */
	uint64_t seed;
};

static const char tomb_mark;
#define TOMB (&tomb_mark)

static uint64_t fmix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* A seeded multiply-xorshift hash over 8-byte words; keys are short
 * (channel keys are under 230 bytes), so this is a few multiplications. */
static uint32_t hash_bytes(const char *s, size_t n, uint64_t seed)
{
	uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ULL);
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, s, 8);
		h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
		h ^= h >> 31;
		s += 8;
		n -= 8;
	}
	uint64_t w = 0;
	memcpy(&w, s, n);
	h = (h ^ w) * 0x94d049bb133111ebULL;
	return (uint32_t)fmix64(h);
}

static bool is_entry(const struct slot *s)
{
	return s->key && s->key != TOMB;
}

struct dict *dict_new(uint64_t seed)
{
	struct dict *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->slots = calloc(MIN_CAP, sizeof(*d->slots));
	if (!d->slots) {
		free(d);
		return NULL;
	}
	d->cap = MIN_CAP;
	d->seed = seed;
	return d;
}

void dict_free(struct dict *d)
{
	if (!d)
		return;
	free(d->slots);
	free(d);
}

/* Index of key's entry, or of the empty slot where the probe ended. */
static size_t probe(const struct dict *d, const char *key, size_t len, uint32_t hash)
{
	size_t mask = d->cap - 1;
	for (size_t i = hash & mask;; i = (i + 1) & mask) {
		const struct slot *s = &d->slots[i];
		if (!s->key)
			return i;
		if (s->key != TOMB && s->hash == hash && s->len == len &&
		    memcmp(s->key, key, len) == 0)
			return i;
	}
}

void *dict_get(const struct dict *d, const char *key, size_t len)
{
	if (len > UINT32_MAX)
		return NULL;
	const struct slot *s = &d->slots[probe(d, key, len, hash_bytes(key, len, d->seed))];
	return s->key ? s->val : NULL;
}

/* Moves every entry into a table of newcap slots, dropping tombstones. */
static int rehash(struct dict *d, size_t newcap)
{
	struct slot *ns = calloc(newcap, sizeof(*ns));
	if (!ns)
		return LH_ENOMEM;
	size_t mask = newcap - 1;
	for (size_t i = 0; i < d->cap; i++) {
		struct slot *s = &d->slots[i];
		if (!is_entry(s))
			continue;
		size_t j = s->hash & mask;
		while (ns[j].key)
			j = (j + 1) & mask;
		ns[j] = *s;
	}
	free(d->slots);
	d->slots = ns;
	d->cap = newcap;
	d->used = d->count;
	return 0;
}

/* Keeps entries plus tombstones under 3/4 of the slots. The new size gives
 * the live entries at least half the table, so it also shrinks a table
 * emptied by removals. */
static int make_room(struct dict *d)
{
	if ((d->used + 1) * 4 <= d->cap * 3)
		return 0;
	size_t newcap = MIN_CAP;
	while (newcap < (d->count + 1) * 2) {
		if (newcap > SIZE_MAX / 2 / sizeof(struct slot))
			return LH_ENOMEM;
		newcap *= 2;
	}
	return rehash(d, newcap);
}

int dict_put(struct dict *d, const char *key, size_t len, void *val)
{
	if (!val || !key || len > UINT32_MAX)
		return LH_EINVAL;
	uint32_t hash = hash_bytes(key, len, d->seed);
	if (d->slots[probe(d, key, len, hash)].key)
		return LH_EEXIST;
	int rc = make_room(d);
	if (rc)
		return rc;
	/* Reuse the first tombstone on the probe path, else the empty slot. */
	size_t mask = d->cap - 1;
	size_t i = hash & mask;
	while (is_entry(&d->slots[i]))
		i = (i + 1) & mask;
	struct slot *s = &d->slots[i];
	if (!s->key)
		d->used++;
	s->key = key;
	s->len = (uint32_t)len;
	s->hash = hash;
	s->val = val;
	d->count++;
	return 0;
}

void *dict_del(struct dict *d, const char *key, size_t len)
{
	if (len > UINT32_MAX)
		return NULL;
	size_t mask = d->cap - 1;
	size_t i = probe(d, key, len, hash_bytes(key, len, d->seed));
	struct slot *s = &d->slots[i];
	if (!s->key)
		return NULL;
	void *val = s->val;
	s->key = TOMB;
	s->val = NULL;
	d->count--;
	/* A tombstone right before an empty slot ends no probe that would not
	 * end anyway: turn it, and the run of tombstones before it, empty. */
	if (!d->slots[(i + 1) & mask].key) {
		while (d->slots[i].key == TOMB) {
			d->slots[i].key = NULL;
			d->used--;
			i = (i - 1) & mask;
		}
	}
	return val;
}

size_t dict_count(const struct dict *d)
{
	return d->count;
}

bool dict_next(const struct dict *d, size_t *pos, struct dict_entry *e)
{
	for (size_t i = *pos; i < d->cap; i++) {
		const struct slot *s = &d->slots[i];
		if (is_entry(s)) {
			e->key = s->key;
			e->len = s->len;
			e->val = s->val;
			*pos = i + 1;
			return true;
		}
	}
	*pos = d->cap;
	return false;
}
