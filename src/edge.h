/*
 * edge: the edge checks of the WebSocket front, without any I/O library
 * (docs/SECURITY.md "Origins, connection limits and rate limits", "Input
 * size and shape"). Unit-tested alone (tests/unit/test_edge.c).
 *
 * - origins: the Origin allow-list, with '*' wildcards for host labels.
 * - rate: a per-connection token bucket in three small integers.
 * - ipcount: open connections per client address.
 * - edge_json_shape: nesting depth and element count of a client
 *   message, checked before the JSON parser sees it.
 *
 * Threads: none of these lock; the service thread owns every instance.
 */
#ifndef LH_EDGE_H
#define LH_EDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------
 * Origins
 * ------------------------------------------------------------------------ */

struct origins;

/* Parses a comma-separated allow-list of origins, e.g. the exact
 * "https://app.example.com" and, with a wildcard, "*.example.com" after
 * "https://". Entries are trimmed and compared without regard
 * to case; '*' in an entry stands for one or more characters of
 * [A-Za-z0-9.-] (host labels: it never matches ':' or '/', so a port or
 * scheme cannot be smuggled in); an entry that is just "*" allows every
 * origin. An empty list returns NULL with *err NULL (allow all). A bad
 * entry (empty between commas, spaces inside, longer than 255) returns
 * NULL with *err set to a static message. Caller frees with
 * origins_free(). */
struct origins *origins_new(const char *list, const char **err);
void origins_free(struct origins *o);
/* Whether origin (len bytes, not NUL-terminated) is on the list. A NULL
 * list allows everything. */
bool origins_allowed(const struct origins *o, const char *origin, size_t len);
/* Entries on the list (0 for NULL). */
size_t origins_count(const struct origins *o);

/* ------------------------------------------------------------------------
 * Rate limit: a token bucket per connection
 * ------------------------------------------------------------------------ */

/* The bucket holds at most burst tokens and gains per_min tokens a minute,
 * continuously (one every 60000/per_min ms); each client message takes one.
 * A full bucket lets a client send burst messages at once. */
struct rate_cfg {
	uint32_t per_min; /* 0: no rate limit */
	uint32_t burst;   /* bucket capacity, >= 1 */
	uint32_t strikes; /* refusals in a row that close the connection; 0: never */
};

/* Per-connection state: 10 bytes. Zeroed = not started (full bucket at the
 * first message). */
struct rate {
	uint32_t milli;   /* tokens * 1000, plus 1 so that 0 means "new" */
	uint32_t last_ms; /* the caller's clock at the last refill (wraps) */
	uint16_t strikes; /* refusals since the last accepted message */
};

enum rate_verdict {
	RATE_OK,      /* take the message */
	RATE_REFUSE,  /* refuse it: RATE_LIMITED with *retry_ms */
	RATE_ABUSIVE, /* refuse it and close the connection (strikes reached) */
};

/* Takes one token at now_ms (any millisecond clock that only moves
 * forward; differences are taken modulo 2^32). On refusal *retry_ms is the
 * wait until a token is there. */
enum rate_verdict rate_take(struct rate *r, const struct rate_cfg *cfg, uint32_t now_ms,
                            uint32_t *retry_ms);

/* ------------------------------------------------------------------------
 * Connections per client address
 * ------------------------------------------------------------------------ */

struct ipcount;
struct ip_slot;

#define EDGE_IP_KEY_MAX 64

/* The key a client address is counted under, into out (EDGE_IP_KEY_MAX
 * bytes): an IPv4 address as it is (also when written IPv4-mapped,
 * "::ffff:1.2.3.4"), an IPv6 address as its /64 prefix ("2001:db8:1:2::/64"),
 * since one subscriber usually holds a whole /64 and picks addresses from
 * it at will. Text that is neither is used as it is (cut to fit). */
void edge_ip_key(const char *ip, char *out);

/* Returns an empty table, or NULL when out of memory. */
struct ipcount *ipcount_new(uint64_t seed);
/* Frees the table; every slot must have been released. */
void ipcount_free(struct ipcount *t);
/* Open connections from ip (NUL-terminated text). */
uint32_t ipcount_get(const struct ipcount *t, const char *ip);
/* Counts one more connection from ip; returns its slot (pass it to
 * ipcount_release when the connection ends) or NULL when out of memory. */
struct ip_slot *ipcount_acquire(struct ipcount *t, const char *ip);
/* Counts one connection less; frees the address's entry at zero. */
void ipcount_release(struct ipcount *t, struct ip_slot *s);
/* Addresses with at least one connection. */
size_t ipcount_addresses(const struct ipcount *t);

/* ------------------------------------------------------------------------
 * JSON shape
 * ------------------------------------------------------------------------ */

/* Checks the nesting depth and the number of elements (object members plus
 * array elements, at every level) of the JSON text in buf, without parsing
 * it: a scan that skips strings. Malformed text passes (the parser reports
 * it). Returns 0, or -1 with *why set to a static message ("nested deeper
 * than the limit" or "more elements than the limit"). */
int edge_json_shape(const char *buf, size_t len, uint32_t max_depth, uint32_t max_elems,
                    const char **why);

#endif
