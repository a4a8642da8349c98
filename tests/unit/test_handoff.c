/* Unit tests of the hand-off queue: order, bound, wake-ups, close, and a
 * many-producer stress run. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "handoff.h"
#include "livehub.h"
#include "publication.h"

static _Atomic int wakes;

static void wake(void *arg)
{
	atomic_fetch_add(&wakes, 1);
	if (arg)
		atomic_fetch_add((_Atomic int *)arg, 1);
}

static void test_fifo_and_wake(void **state)
{
	struct handoff *q = handoff_new(8, SIZE_MAX);
	assert_non_null(q);
	_Atomic int mine = 0;
	handoff_set_wake(q, wake, &mine);
	atomic_store(&wakes, 0);
	struct publication p[5];
	memset(p, 0, sizeof(p));

	assert_null(handoff_take(q));
	for (int i = 0; i < 3; i++)
		assert_int_equal(handoff_push(q, &p[i]), 0);
	assert_int_equal(atomic_load(&mine), 1); /* only empty -> non-empty */
	assert_int_equal(handoff_depth(q), 3);

	struct publication *l = handoff_take(q);
	assert_int_equal(handoff_depth(q), 0);
	assert_ptr_equal(l, &p[0]);
	assert_ptr_equal(l->next, &p[1]);
	assert_ptr_equal(l->next->next, &p[2]);
	assert_null(l->next->next->next);
	assert_null(handoff_take(q));

	assert_int_equal(handoff_push(q, &p[3]), 0);
	assert_int_equal(atomic_load(&mine), 2);
	assert_int_equal(handoff_push(q, &p[4]), 0);
	assert_int_equal(atomic_load(&mine), 2);
	l = handoff_take(q);
	assert_ptr_equal(l, &p[3]);
	assert_ptr_equal(l->next, &p[4]);
	assert_null(l->next->next);
	handoff_free(q);
}

static void test_bound(void **state)
{
	struct handoff *q = handoff_new(2, SIZE_MAX);
	struct publication p[3];
	memset(p, 0, sizeof(p));
	/* No wake function set: pushes still work. */
	assert_int_equal(handoff_push(q, &p[0]), 0);
	assert_int_equal(handoff_push(q, &p[1]), 0);
	assert_int_equal(handoff_push(q, &p[2]), LH_EFULL);
	assert_int_equal(handoff_depth(q), 2);
	struct publication *l = handoff_take(q);
	assert_ptr_equal(l, &p[0]);
	assert_null(l->next->next);
	assert_int_equal(handoff_push(q, &p[2]), 0);
	assert_ptr_equal(handoff_take(q), &p[2]);
	handoff_free(q);
}

/* The byte bound counts each publication's data plus its struct; one
 * publication always fits an empty queue, whatever its size. */
static void test_byte_bound(void **state)
{
	struct publication p[4];
	memset(p, 0, sizeof(p));
	for (int i = 0; i < 4; i++)
		p[i].data_len = 1000;
	size_t one = handoff_cost(&p[0]);
	assert_int_equal(one, sizeof(struct publication) + 1000);
	struct handoff *q = handoff_new(100, 2 * one + 10);
	assert_int_equal(handoff_push(q, &p[0]), 0);
	assert_int_equal(handoff_push(q, &p[1]), 0);
	assert_int_equal(handoff_push(q, &p[2]), LH_EFULL);
	assert_int_equal(handoff_bytes(q), 2 * one);
	assert_int_equal(handoff_depth(q), 2);
	assert_non_null(handoff_take(q));
	assert_int_equal(handoff_bytes(q), 0);
	p[3].data_len = 1 << 20; /* over the bound alone */
	assert_int_equal(handoff_push(q, &p[3]), 0);
	assert_int_equal(handoff_push(q, &p[2]), LH_EFULL);
	assert_ptr_equal(handoff_take(q), &p[3]);
	handoff_free(q);
}

static void test_close(void **state)
{
	struct handoff *q = handoff_new(4, SIZE_MAX);
	_Atomic int mine = 0;
	handoff_set_wake(q, wake, &mine);
	struct publication p[2];
	memset(p, 0, sizeof(p));
	assert_int_equal(handoff_push(q, &p[0]), 0);
	handoff_close(q);
	assert_int_equal(handoff_push(q, &p[1]), LH_EFULL);
	assert_int_equal(atomic_load(&mine), 1);
	/* What was queued before the close can still be taken. */
	assert_ptr_equal(handoff_take(q), &p[0]);
	assert_int_equal(handoff_push(q, &p[1]), LH_EFULL);
	handoff_free(q);
}

/* ------------------------------------------------------------------------
 * Stress: 4 producers, one consumer, a small bound so that producers meet
 * LH_EFULL and retry. Every publication must arrive exactly once and each
 * producer's publications in the order it pushed them.
 * ------------------------------------------------------------------------ */

enum { PRODUCERS = 4, PER_PRODUCER = 50000 };

struct producer {
	struct handoff *q;
	int id;
	struct publication *pubs;
};

static void *produce(void *arg)
{
	struct producer *pr = arg;
	for (int i = 0; i < PER_PRODUCER; i++) {
		struct publication *p = &pr->pubs[i];
		p->nchannels = pr->id; /* which producer */
		p->ts_ms = i;          /* its sequence number */
		while (handoff_push(pr->q, p) == LH_EFULL)
			sched_yield();
	}
	return NULL;
}

static void test_stress(void **state)
{
	struct handoff *q = handoff_new(64, SIZE_MAX);
	_Atomic int mine = 0;
	handoff_set_wake(q, wake, &mine);
	pthread_t th[PRODUCERS];
	struct producer pr[PRODUCERS];
	for (int i = 0; i < PRODUCERS; i++) {
		pr[i] = (struct producer){q, i, calloc(PER_PRODUCER, sizeof(struct publication))};
		assert_non_null(pr[i].pubs);
	}
	for (int i = 0; i < PRODUCERS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, produce, &pr[i]), 0);

	int64_t next[PRODUCERS] = {0};
	long total = 0, takes = 0;
	while (total < (long)PRODUCERS * PER_PRODUCER) {
		struct publication *p = handoff_take(q);
		if (!p) {
			sched_yield();
			continue;
		}
		takes++;
		for (; p; p = p->next) {
			int id = p->nchannels;
			assert_true(id >= 0 && id < PRODUCERS);
			assert_ptr_equal(p, &pr[id].pubs[p->ts_ms]);
			assert_int_equal(p->ts_ms, next[id]);
			next[id]++;
			total++;
		}
	}
	for (int i = 0; i < PRODUCERS; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(next[i], PER_PRODUCER);
		free(pr[i].pubs);
	}
	assert_null(handoff_take(q));
	assert_int_equal(handoff_depth(q), 0);
	/* Every batch taken began with a push onto an empty queue, which woke
	 * the consumer once: one wake per batch, however long the batch. */
	assert_int_equal(atomic_load(&mine), takes);
	handoff_free(q);
}

/* A lazy push owes the wake-up instead of making it: 1 for the push onto an
 * empty queue, 0 after; handoff_wake pays it; the bound and FIFO order are
 * those of handoff_push. */
static void test_lazy_push(void **state)
{
	struct handoff *q = handoff_new(2, SIZE_MAX);
	_Atomic int mine = 0;
	handoff_set_wake(q, wake, &mine);
	struct publication p[3];
	memset(p, 0, sizeof(p));

	assert_int_equal(handoff_push_lazy(q, &p[0]), 1);
	assert_int_equal(handoff_push_lazy(q, &p[1]), 0);
	assert_int_equal(handoff_push_lazy(q, &p[2]), LH_EFULL);
	assert_int_equal(atomic_load(&mine), 0);
	handoff_wake(q);
	assert_int_equal(atomic_load(&mine), 1);
	struct publication *l = handoff_take(q);
	assert_ptr_equal(l, &p[0]);
	assert_ptr_equal(l->next, &p[1]);
	assert_null(l->next->next);
	assert_int_equal(handoff_push_lazy(q, &p[2]), 1);
	assert_ptr_equal(handoff_take(q), &p[2]);
	handoff_close(q);
	assert_int_equal(handoff_push_lazy(q, &p[0]), LH_EFULL);
	handoff_free(q);
}

/* While the consumer drains, a push onto the empty queue owes no wake-up;
 * handoff_drain_end reports what came in after the last take. */
static void test_drain_flag(void **state)
{
	struct handoff *q = handoff_new(8, SIZE_MAX);
	_Atomic int mine = 0;
	handoff_set_wake(q, wake, &mine);
	struct publication p[4];
	memset(p, 0, sizeof(p));

	assert_int_equal(handoff_push(q, &p[0]), 0);
	assert_int_equal(atomic_load(&mine), 1);
	handoff_drain_begin(q);
	assert_ptr_equal(handoff_take(q), &p[0]);
	assert_int_equal(handoff_push(q, &p[1]), 0);      /* empty, but draining */
	assert_int_equal(handoff_push_lazy(q, &p[2]), 0); /* no wake owed either */
	assert_int_equal(atomic_load(&mine), 1);
	struct publication *l = handoff_take(q);
	assert_ptr_equal(l, &p[1]);
	assert_ptr_equal(l->next, &p[2]);
	assert_int_equal(handoff_push(q, &p[3]), 0);
	assert_true(handoff_drain_end(q)); /* p[3] came after the last take */
	assert_int_equal(atomic_load(&mine), 1);
	assert_ptr_equal(handoff_take(q), &p[3]);

	handoff_drain_begin(q);
	assert_null(handoff_take(q));
	assert_false(handoff_drain_end(q));
	assert_int_equal(handoff_push(q, &p[0]), 0); /* not draining: wakes */
	assert_int_equal(atomic_load(&mine), 2);
	assert_int_equal(handoff_push_lazy(q, &p[1]), 0);
	handoff_free(q);
}

/* Producers against a consumer that sleeps until woken and drains with
 * the flag: no wake-up may be lost (a lost one leaves the consumer asleep
 * with publications queued, and the timed wait fails the test). */
static pthread_mutex_t dmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t dcv = PTHREAD_COND_INITIALIZER;
static int dwoken; /* dmu */

static void drain_wake(void *arg)
{
	pthread_mutex_lock(&dmu);
	dwoken++;
	pthread_cond_signal(&dcv);
	pthread_mutex_unlock(&dmu);
}

static void test_drain_no_lost_wake(void **state)
{
	struct handoff *q = handoff_new(64, SIZE_MAX);
	handoff_set_wake(q, drain_wake, NULL);
	dwoken = 0;
	pthread_t th[PRODUCERS];
	struct producer pr[PRODUCERS];
	for (int i = 0; i < PRODUCERS; i++) {
		pr[i] = (struct producer){q, i, calloc(PER_PRODUCER, sizeof(struct publication))};
		assert_non_null(pr[i].pubs);
	}
	for (int i = 0; i < PRODUCERS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, produce, &pr[i]), 0);
	long total = 0;
	while (total < (long)PRODUCERS * PER_PRODUCER) {
		pthread_mutex_lock(&dmu);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 10;
		while (dwoken == 0)
			assert_int_equal(pthread_cond_timedwait(&dcv, &dmu, &ts), 0);
		dwoken = 0;
		pthread_mutex_unlock(&dmu);
		bool more;
		do {
			handoff_drain_begin(q);
			for (struct publication *p; (p = handoff_take(q)) != NULL;)
				for (; p; p = p->next)
					total++;
			more = handoff_drain_end(q);
		} while (more);
	}
	for (int i = 0; i < PRODUCERS; i++) {
		pthread_join(th[i], NULL);
		free(pr[i].pubs);
	}
	assert_int_equal(total, (long)PRODUCERS * PER_PRODUCER);
	assert_null(handoff_take(q));
	handoff_free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_fifo_and_wake), cmocka_unit_test(test_bound),
	        cmocka_unit_test(test_close),         cmocka_unit_test(test_stress),
	        cmocka_unit_test(test_lazy_push),     cmocka_unit_test(test_byte_bound),
	        cmocka_unit_test(test_drain_flag),    cmocka_unit_test(test_drain_no_lost_wake),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
