/*
 * idem: the idempotency table of publish calls. A publish that carries an
 * idempotency key records its result under (tenant, key); a retry with the
 * same pair inside the window gets that result back instead of publishing
 * again.
 *
 * Entries are kept in insertion order (a FIFO) beside a dict, so that both
 * expiry (every entry lives for the same window) and the count bound evict
 * from the oldest end in O(1).
 *
 * Threads: service thread only (the hub owns the table).
 */
#ifndef LH_IDEM_H
#define LH_IDEM_H

#include <stdint.h>

#include "publication.h"

struct idem;

/* What a retry gets back: the first call's result. */
struct idem_result {
	uint64_t digest; /* of the publication (type, channels, data): a retry must match */
	int nchannels;
	uint32_t subscribers;
	struct pub_position pos[LH_PUB_MAX_CHANNELS];
};

/* Returns an empty table (seed varies the hash), or NULL. */
struct idem *idem_new(uint64_t seed);
/* Frees the table and its entries. NULL is a no-op. */
void idem_free(struct idem *t);

/* The result recorded for (tenant, key) at or after since_ms, or NULL.
 * The pointer is valid until the next idem_put or idem_expire. */
const struct idem_result *idem_get(struct idem *t, const char *tenant, const char *key,
                                   int64_t since_ms);
/* Records r under (tenant, key) at now_ms (the pair must not be there),
 * evicting the oldest entries so that at most max remain. Returns 0 or
 * LH_ENOMEM. max 0 records nothing. */
int idem_put(struct idem *t, const char *tenant, const char *key, const struct idem_result *r,
             int64_t now_ms, uint32_t max);
/* Drops entries recorded before cutoff_ms. */
void idem_expire(struct idem *t, int64_t cutoff_ms);
/* Entries held. */
uint64_t idem_count(const struct idem *t);

/* A digest of what makes a publication the same one: its type, channels and
 * data (not its time). A retry must match the first call's. Stored in Redis
 * by the Redis broker, so it must not change between versions. */
uint64_t idem_digest(const struct publication *p);

#endif
