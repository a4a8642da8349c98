/* handoff: the bounded queue from publisher threads to the service thread.
 * See handoff.h.
 *
 * The list itself is mpsc.h's lock-free stack; this file adds the bounds
 * and the wake-up. count is raised before a push links its node and
 * lowered by the take, so it may briefly count a node not linked yet,
 * never the reverse. */
#include "handoff.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "livehub.h"
#include "mpsc.h"
#include "publication.h"

/* mpsc.h links a node through its first member. */
_Static_assert(offsetof(struct publication, next) == 0, "next is the mpsc link");

struct handoff {
	struct mpsc list;
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
	mpsc_init(&q->list);
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
	if (!mpsc_push(&q->list, (struct mpsc_node *)p))
		return 0;
	/* The list was empty: a wake-up is owed, unless the consumer is
	 * draining (it takes p, or learns of it from handoff_drain_end). The
	 * push and this load, against drain_end's store and its load of the
	 * head, each with a seq_cst fence between: one side always sees the
	 * other. */
	atomic_thread_fence(memory_order_seq_cst);
	return !atomic_load_explicit(&q->draining, memory_order_relaxed);
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
	size_t n = 0, bytes = 0;
	struct publication *fifo = (struct publication *)mpsc_take(&q->list, &n);
	for (struct publication *p = fifo; p; p = p->next)
		bytes += handoff_cost(p);
	if (n) {
		atomic_fetch_sub_explicit(&q->count, n, memory_order_relaxed);
		atomic_fetch_sub_explicit(&q->bytes, bytes, memory_order_relaxed);
	}
	return fifo;
}

void handoff_drain_begin(struct handoff *q)
{
	atomic_store_explicit(&q->draining, true, memory_order_relaxed);
}

bool handoff_drain_end(struct handoff *q)
{
	atomic_store_explicit(&q->draining, false, memory_order_relaxed);
	atomic_thread_fence(memory_order_seq_cst); /* see handoff_push_lazy */
	return atomic_load_explicit(&q->list.head, memory_order_relaxed) != NULL;
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
