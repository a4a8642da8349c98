/* handoff: the bounded queue from publisher threads to the service thread.
 * See handoff.h. */
#include "handoff.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "livehub.h"
#include "publication.h"

struct handoff {
	pthread_mutex_t lock;
	struct publication *head; /* lock */
	struct publication *tail; /* lock */
	_Atomic size_t count;     /* written under lock, read by anyone */
	size_t max;
	bool closed;          /* lock */
	void (*wake)(void *); /* lock */
	void *wake_arg;       /* lock */
};

struct handoff *handoff_new(size_t max)
{
	struct handoff *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	if (pthread_mutex_init(&q->lock, NULL) != 0) {
		free(q);
		return NULL;
	}
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

/* Appends p; wakes the consumer, outside the lock, only when the queue was
 * empty: a non-empty queue already has a wake-up on its way, because the
 * consumer always takes the whole list. */
int handoff_push(struct handoff *q, struct publication *p)
{
	pthread_mutex_lock(&q->lock);
	size_t n = atomic_load_explicit(&q->count, memory_order_relaxed);
	if (q->closed || n >= q->max) {
		pthread_mutex_unlock(&q->lock);
		return LH_EFULL;
	}
	p->next = NULL;
	if (q->tail)
		q->tail->next = p;
	else
		q->head = p;
	q->tail = p;
	atomic_store_explicit(&q->count, n + 1, memory_order_relaxed);
	void (*wake)(void *) = n == 0 ? q->wake : NULL;
	void *arg = q->wake_arg;
	pthread_mutex_unlock(&q->lock);
	if (wake)
		wake(arg);
	return 0;
}

struct publication *handoff_take(struct handoff *q)
{
	pthread_mutex_lock(&q->lock);
	struct publication *p = q->head;
	q->head = q->tail = NULL;
	atomic_store_explicit(&q->count, 0, memory_order_relaxed);
	pthread_mutex_unlock(&q->lock);
	return p;
}

size_t handoff_depth(struct handoff *q)
{
	return atomic_load_explicit(&q->count, memory_order_relaxed);
}

void handoff_close(struct handoff *q)
{
	pthread_mutex_lock(&q->lock);
	q->closed = true;
	pthread_mutex_unlock(&q->lock);
}
