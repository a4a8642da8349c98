/*
 * handoff: the bounded queue from publisher threads (gRPC) to the service
 * thread. Many producers, one consumer, FIFO.
 *
 * A producer pushes and, when the queue was empty, calls the wake function
 * (lws_cancel_service) so the service thread drains it; the consumer takes
 * the whole list at once, so a burst costs one wake-up. A producer that
 * pushes in bursts (the gRPC queue thread) can defer that wake to the end of
 * its burst with handoff_push_lazy and handoff_wake.
 *
 * Pushing and taking are lock-free (a stack swapped out whole and reversed),
 * so a producer and the consumer sharing one core never sleep on a lock.
 */
#ifndef LH_HANDOFF_H
#define LH_HANDOFF_H

#include <stdbool.h>
#include <stddef.h>

struct publication;
struct handoff;

/* Returns a queue holding at most max publications and max_bytes bytes of
 * them (their data plus the struct; one publication is always let into an
 * empty queue), or NULL. */
struct handoff *handoff_new(size_t max, size_t max_bytes);
/* Frees the queue; it must be empty. */
void handoff_free(struct handoff *q);
/* Sets the function called (from a producer thread) when work arrives. */
void handoff_set_wake(struct handoff *q, void (*wake)(void *), void *arg);
/* Any thread. Queues p; returns 0, or LH_EFULL when the queue is full or
 * closed (then ownership stays with the caller). */
int handoff_push(struct handoff *q, struct publication *p);
/* Any thread. Like handoff_push, but does not wake the consumer: returns 1
 * when a wake is owed (the queue was empty), which the caller must pay
 * soon with handoff_wake (once for any number of pushes); 0 when none is;
 * LH_EFULL as handoff_push. */
int handoff_push_lazy(struct handoff *q, struct publication *p);
/* Any thread. Calls the wake function (see handoff_push_lazy). */
void handoff_wake(struct handoff *q);
/* Consumer. Takes every queued publication, oldest first (linked by ->next);
 * NULL when empty. */
struct publication *handoff_take(struct handoff *q);
/* Consumer. Brackets a drain (a loop of handoff_take until it comes back
 * empty): in between, a push onto the empty queue owes no wake-up, since
 * the consumer will take it anyway (a producer on another core would
 * otherwise wake a thread that is already busy, and it would turn its loop
 * once for nothing). handoff_drain_end returns true when something was
 * pushed after the last take: the consumer must then take again (or wake
 * itself), as no producer will. */
void handoff_drain_begin(struct handoff *q);
bool handoff_drain_end(struct handoff *q);
/* Any thread. How many are queued now (for stats). */
size_t handoff_depth(struct handoff *q);
/* Any thread. How many bytes are queued now (for stats). */
size_t handoff_bytes(struct handoff *q);
/* The bytes p counts for in the queue's byte bound. */
size_t handoff_cost(const struct publication *p);
/* After close, pushes fail with LH_EFULL. A push racing with the close may
 * still land; close once producers have stopped when that matters. */
void handoff_close(struct handoff *q);

#endif
