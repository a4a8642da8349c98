/*
 * history: the bounded per-channel history of published event frames, and
 * the per-kind settings that bound it.
 *
 * A channel's history is a FIFO of references to the event frames the hub
 * built when publishing (the very frames queued on subscribers), so storing
 * and replaying one costs no encoding. Every entry is also on one global
 * FIFO (the pool), oldest first over all channels, so that a global byte cap
 * can evict the oldest entries of the whole process. Entries leave a
 * channel's history oldest first, by count (the kind's size), by age (the
 * kind's TTL) or by the pool's byte cap.
 *
 * Threads: service thread only, like the hub that owns the histories.
 */
#ifndef LH_HISTORY_H
#define LH_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"

#define HIST_KIND_MAX   32 /* bytes of a kind name ("job", "$tenant") */
#define HIST_KINDS_MAX  16 /* per-kind overrides */
#define HIST_SPEC_MAX   512
#define HIST_SIZE_LIMIT 100000      /* entries per channel, at most */
#define HIST_TTL_LIMIT  (7 * 86400) /* seconds, at most */

/* Size (entries) and TTL (seconds) of one kind's history; size 0 = none. */
struct hist_kind {
	char name[HIST_KIND_MAX + 1];
	uint32_t size;
	uint32_t ttl_s;
};

/* Every history setting: the default for plain channels plus overrides. */
struct hist_limits {
	uint32_t size;      /* LIVEHUB_HISTORY_SIZE */
	uint32_t ttl_s;     /* LIVEHUB_HISTORY_TTL */
	uint64_t max_bytes; /* LIVEHUB_HISTORY_MAX_BYTES, over all channels */
	int nkinds;
	struct hist_kind kinds[HIST_KINDS_MAX];
};

/*
 * Parses a kinds spec, "job:50/600,price:0,$user:20" (kind:size[/ttl],
 * comma-separated; a missing ttl is the default ttl) into lim->kinds. A
 * channel's kind is its name up to the first ':' ("job" for "job:42"),
 * "$tenant" for the tenant channel and "$user" for user channels. Returns 0,
 * or LH_EINVAL with a message in err (errlen bytes).
 */
int hist_parse_kinds(const char *spec, struct hist_limits *lim, char *err, size_t errlen);

/* The size and TTL for the channel called name (as clients name it). */
void hist_kind_of(const struct hist_limits *lim, const char *name, size_t len, uint32_t *size,
                  uint32_t *ttl_s);

struct hist;

struct hist_entry {
	struct hist_entry *gprev, *gnext; /* the pool's FIFO */
	struct hist_entry *next;          /* the channel's FIFO, oldest first */
	struct hist *owner;
	struct frame *f; /* one reference */
	uint64_t offset;
	int64_t ts_ms;
};

/* One channel's history; zero-initialised is empty. */
struct hist {
	struct hist_entry *head, *tail;
	uint32_t n;
};

/* Every history of a hub; zero-initialise, then set max_bytes. */
struct hist_pool {
	struct hist_entry *head, *tail; /* oldest first over all channels */
	uint64_t bytes;                 /* memory of the entries and their frames */
	uint64_t entries;
	uint64_t max_bytes;
};

/* The bytes an entry holding f counts for. */
size_t hist_entry_bytes(const struct frame *f);

/* Appends f (taking a reference) at offset with publish time ts_ms, then
 * trims hs to max_n entries and the pool to its byte cap (which may evict
 * the new entry itself when it alone is over the cap). Returns 0 or
 * LH_ENOMEM (nothing stored). */
int hist_push(struct hist_pool *pool, struct hist *hs, struct frame *f, uint64_t offset,
              int64_t ts_ms, uint32_t max_n);
/* Drops hs's entries published before cutoff_ms, and any past max_n. */
void hist_trim(struct hist_pool *pool, struct hist *hs, int64_t cutoff_ms, uint32_t max_n);
/* Drops every entry of hs. */
void hist_clear(struct hist_pool *pool, struct hist *hs);

/*
 * The entries after offset `after`, up to and including offset `top`, when
 * hs holds every one of them: returns true with *first the entry at
 * after + 1 (NULL when after == top, nothing to replay) and *count their
 * number. Returns false when some are missing (trimmed, evicted, or never
 * stored) or after > top.
 */
bool hist_range(const struct hist *hs, uint64_t after, uint64_t top,
                const struct hist_entry **first, uint32_t *count);

#endif
