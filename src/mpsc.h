/*
 * mpsc: the lock-free many-producer, one-consumer list under the hand-off
 * queue (handoff.c) and the Redis broker's queues (broker.c).
 *
 * Producers push onto a stack with compare-and-swap on its head; the
 * consumer swaps the whole stack out and reverses it, which gives every
 * producer's nodes back in the order it pushed them. Only whole-stack takes
 * exist, so a head seen again after a swap (ABA) is harmless.
 *
 * A node is any struct whose first member is its `next` link: callers
 * cast to struct mpsc_node (the code is built with -fno-strict-aliasing).
 */
#ifndef LH_MPSC_H
#define LH_MPSC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct mpsc_node {
	struct mpsc_node *next;
};

struct mpsc {
	_Atomic(struct mpsc_node *) head; /* newest first */
};

static inline void mpsc_init(struct mpsc *q)
{
	atomic_init(&q->head, NULL);
}

/* Any thread. Pushes n; returns true when the list was empty, i.e. when
 * the consumer needs a wake-up (a non-empty list already has one on its
 * way, because the consumer always takes the whole list). */
static inline bool mpsc_push(struct mpsc *q, struct mpsc_node *n)
{
	struct mpsc_node *old = atomic_load_explicit(&q->head, memory_order_relaxed);
	do
		n->next = old;
	while (!atomic_compare_exchange_weak_explicit(&q->head, &old, n, memory_order_release,
	                                              memory_order_relaxed));
	return old == NULL;
}

/* Consumer. Takes every node, oldest first (linked by ->next); NULL when
 * empty. *count (when not NULL) gets how many. */
static inline struct mpsc_node *mpsc_take(struct mpsc *q, size_t *count)
{
	struct mpsc_node *p = atomic_exchange_explicit(&q->head, NULL, memory_order_acquire);
	struct mpsc_node *fifo = NULL;
	size_t n = 0;
	while (p) {
		struct mpsc_node *next = p->next;
		p->next = fifo;
		fifo = p;
		p = next;
		n++;
	}
	if (count)
		*count = n;
	return fifo;
}

#endif
