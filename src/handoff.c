/* handoff: the bounded queue from publisher threads to the service thread.
 * See handoff.h.
 *
 * Producers push onto a lock-free stack (compare-and-swap on head); the
 * consumer swaps the whole stack out and reverses it, which gives every
 * producer's publications back in the order it pushed them. Only whole-stack
 * takes exist, so a head seen again after a swap (ABA) is harmless. count
 * is raised before a push links its node and lowered by the take, so it
 * may briefly count a node not linked yet, never the reverse. */
#include "handoff.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "livehub.h"
#include "publication.h"

struct handoff {
	_Atomic(struct publication *) head; /* newest first */
	_Atomic size_t count;
	_Atomic size_t bytes;
	size_t max;
	size_t max_bytes;
	_Atomic bool closed;
	_Atomic bool draining; /* the consumer is between drain_begin and drain_end */
	pthread_mutex_t lock;
	void (*wake)(void *); /* lock */
	void *wake_arg;       /* lock */
};

struct handoff *handoff_new(size_t max, size_t max_bytes)
{
	struct handoff *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	if (pthread_mutex_init(&q->lock, NULL) != 0) {
		free(q);
		return NULL;
	}
	atomic_init(&q->head, NULL);
	atomic_init(&q->count, 0);
	atomic_init(&q->bytes, 0);
	q->max_bytes = max_bytes;
	atomic_init(&q->closed, false);
	atomic_init(&q->draining, false);
	q->max = max;
	return q;
}

void handoff_free(struct handoff *q)
{
	if (!q)
		return;
	pthread_mutex_destroy(&q->lock);
	free(q);
}

void handoff_set_wake(struct handoff *q, void (*wake)(void *), void *arg)
{
	pthread_mutex_lock(&q->lock);
	q->wake = wake;
	q->wake_arg = arg;
	pthread_mutex_unlock(&q->lock);
}

void handoff_wake(struct handoff *q)
{
	/* The lock is taken once per wake-up, not per push: it only keeps
	 * wake and wake_arg consistent against handoff_set_wake. */
	pthread_mutex_lock(&q->lock);
	void (*wake)(void *) = q->wake;
	void *arg = q->wake_arg;
	pthread_mutex_unlock(&q->lock);
	if (wake)
		wake(arg);
}

int handoff_push_lazy(struct handoff *q, struct publication *p)
{
	if (atomic_load_explicit(&q->closed, memory_order_acquire))
		return LH_EFULL;
	size_t n = atomic_fetch_add_explicit(&q->count, 1, memory_order_relaxed);
	if (n >= q->max) {
		atomic_fetch_sub_explicit(&q->count, 1, memory_order_relaxed);
		return LH_EFULL;
	}
	size_t cost = handoff_cost(p);
	size_t b = atomic_fetch_add_explicit(&q->bytes, cost, memory_order_relaxed);
	if (b > 0 && b + cost > q->max_bytes) {
		atomic_fetch_sub_explicit(&q->bytes, cost, memory_order_relaxed);
		atomic_fetch_sub_explicit(&q->count, 1, memory_order_relaxed);
		return LH_EFULL;
	}
	struct publication *old = atomic_load_explicit(&q->head, memory_order_relaxed);
	do
		p->next = old;
	while (!atomic_compare_exchange_weak_explicit(&q->head, &old, p, memory_order_seq_cst,
	                                              memory_order_relaxed));
	/* A non-empty stack already has a wake-up on its way, because the
	 * consumer always takes the whole stack; a draining consumer takes it
	 * or learns of it from handoff_drain_end. The CAS above and this load
	 * against drain_end's store and load (all seq_cst): one side always
	 * sees the other. */
	return old == NULL && !atomic_load(&q->draining);
}

int handoff_push(struct handoff *q, struct publication *p)
{
	int rc = handoff_push_lazy(q, p);
	if (rc < 0)
		return rc;
	if (rc == 1)
		handoff_wake(q);
	return 0;
}

struct publication *handoff_take(struct handoff *q)
{
	struct publication *p = atomic_exchange_explicit(&q->head, NULL, memory_order_acquire);
	struct publication *fifo = NULL;
	size_t n = 0, bytes = 0;
	while (p) {
		bytes += handoff_cost(p);
		struct publication *next = p->next;
		p->next = fifo;
		fifo = p;
		p = next;
		n++;
	}
	if (n) {
		atomic_fetch_sub_explicit(&q->count, n, memory_order_relaxed);
		atomic_fetch_sub_explicit(&q->bytes, bytes, memory_order_relaxed);
	}
	return fifo;
}

void handoff_drain_begin(struct handoff *q)
{
	atomic_store(&q->draining, true);
}

bool handoff_drain_end(struct handoff *q)
{
	atomic_store(&q->draining, false);
	return atomic_load(&q->head) != NULL;
}

size_t handoff_depth(struct handoff *q)
{
	return atomic_load_explicit(&q->count, memory_order_relaxed);
}

size_t handoff_bytes(struct handoff *q)
{
	return atomic_load_explicit(&q->bytes, memory_order_relaxed);
}

size_t handoff_cost(const struct publication *p)
{
	return sizeof(*p) + p->data_len;
}

void handoff_close(struct handoff *q)
{
	atomic_store_explicit(&q->closed, true, memory_order_release);
}
