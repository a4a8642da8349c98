/* dict: a hash table from byte-string keys to pointers. See dict.h. */
#include "dict.h"

#include <stdlib.h>
#include <string.h>

#include "livehub.h"

#define MIN_CAP 8

/* A slot is empty (val NULL), a tombstone (val == TOMB) or an entry. The
 * key is not stored: it lies inside the value, key_off bytes in, so a slot
 * is 16 bytes instead of 24 (the hub's channel table has about two slots per
 * connection: docs/PERFORMANCE.md, "Memory per connection"). */
struct slot {
	void *val;
	uint32_t len;
	uint32_t hash;
};

struct dict {
	struct slot *slots;
	size_t cap;   /* a power of two */
	size_t count; /* entries */
	size_t used;  /* entries + tombstones */
	size_t key_off;
	uint64_t seed;
};

static char tomb_mark;
#define TOMB ((void *)&tomb_mark)

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
	return s->val && s->val != TOMB;
}

static const char *key_of(const struct dict *d, const struct slot *s)
{
	return (const char *)s->val + d->key_off;
}

struct dict *dict_new(uint64_t seed, size_t key_off)
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
	d->key_off = key_off;
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
		if (!s->val)
			return i;
		if (s->val != TOMB && s->hash == hash && s->len == len &&
		    memcmp(key_of(d, s), key, len) == 0)
			return i;
	}
}

void *dict_get(const struct dict *d, const char *key, size_t len)
{
	if (len > UINT32_MAX)
		return NULL;
	const struct slot *s = &d->slots[probe(d, key, len, hash_bytes(key, len, d->seed))];
	return s->val;
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
		while (ns[j].val)
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
	if (!val || !key || len > UINT32_MAX || key != (const char *)val + d->key_off)
		return LH_EINVAL;
	uint32_t hash = hash_bytes(key, len, d->seed);
	if (d->slots[probe(d, key, len, hash)].val)
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
	if (!s->val)
		d->used++;
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
	if (!s->val)
		return NULL;
	void *val = s->val;
	s->val = TOMB;
	d->count--;
	/* A tombstone right before an empty slot ends no probe that would not
	 * end anyway: turn it, and the run of tombstones before it, empty. */
	if (!d->slots[(i + 1) & mask].val) {
		while (d->slots[i].val == TOMB) {
			d->slots[i].val = NULL;
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
			e->key = key_of(d, s);
			e->len = s->len;
			e->val = s->val;
			*pos = i + 1;
			return true;
		}
	}
	*pos = d->cap;
	return false;
}
