/*
 * dict: a hash table from byte-string keys to pointers.
 *
 * Keys are (pointer, length) pairs and are NOT copied: the key bytes must
 * stay valid and unchanged while the entry is in the table (typically the
 * key lives inside the value). Values are non-NULL pointers; the dict never
 * frees keys or values.
 *
 * Open addressing with linear probing. Removal leaves a tombstone and never
 * moves other entries, so an iteration may remove the entry it is on (or
 * any other); inserting during an iteration is not allowed, since it may
 * rehash. The table grows (and, after many removals, shrinks) only inside
 * dict_put().
 *
 * Threads: none; the owner serializes every call.
 */
#ifndef LH_DICT_H
#define LH_DICT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dict;

struct dict_entry {
	const char *key;
	size_t len;
	void *val;
};

/* Returns an empty dict, or NULL when out of memory. seed varies the hash
 * (pass a random value so that keys chosen by clients cannot be made to
 * collide on purpose). Every key lives inside its value, key_off bytes in
 * (the dict keeps only the value): dict_put's key must be val + key_off and
 * stay unchanged while the entry is there. */
struct dict *dict_new(uint64_t seed, size_t key_off);
/* Frees the table (not the keys or values). NULL is a no-op. */
void dict_free(struct dict *d);

/* The value stored under key, or NULL. */
void *dict_get(const struct dict *d, const char *key, size_t len);
/* Adds key -> val. Returns 0, LH_EEXIST when key is already there (the old
 * value stays), LH_EINVAL when val is NULL or key is not val + key_off, or
 * LH_ENOMEM. */
int dict_put(struct dict *d, const char *key, size_t len, void *val);
/* Removes key; returns its value, or NULL when it was not there. */
void *dict_del(struct dict *d, const char *key, size_t len);
size_t dict_count(const struct dict *d);

/*
 * Iteration, in no particular order:
 *
 *	size_t pos = 0;
 *	struct dict_entry e;
 *	while (dict_next(d, &pos, &e))
 *		... dict_del(d, e.key, e.len) is allowed here ...
 *
 * Returns false when every entry has been visited.
 */
bool dict_next(const struct dict *d, size_t *pos, struct dict_entry *e);

#endif
