/* idem: idempotency keys of publish calls. See idem.h. */
#include "idem.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "livehub.h"
#include "names.h"

struct idem_entry {
	struct idem_entry *next; /* FIFO, oldest first */
	int64_t at_ms;
	struct idem_result r;
	uint16_t klen;
	char key[]; /* "tenant\x1fkey" */
};

struct idem {
	struct dict *d;
	struct idem_entry *head, *tail;
	uint64_t n;
};

#define IDEM_KEYBUF (LH_TENANT_MAX + 1 + LH_IDEM_KEY_MAX)

/* Writes "tenant\x1fkey" into buf; returns its length, 0 when too long. */
static size_t make_key(char *buf, const char *tenant, const char *key)
{
	size_t tl = strnlen(tenant, LH_TENANT_MAX + 1), kl = strnlen(key, LH_IDEM_KEY_MAX + 1);
	if (tl > LH_TENANT_MAX || kl > LH_IDEM_KEY_MAX)
		return 0;
	memcpy(buf, tenant, tl);
	buf[tl] = LH_KEY_SEP;
	memcpy(buf + tl + 1, key, kl);
	return tl + 1 + kl;
}

struct idem *idem_new(uint64_t seed)
{
	struct idem *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->d = dict_new(seed, offsetof(struct idem_entry, key));
	if (!t->d) {
		free(t);
		return NULL;
	}
	return t;
}

static void drop_oldest(struct idem *t)
{
	struct idem_entry *e = t->head;
	/* A replaced entry is no longer in the dict; its key now names the
	 * entry that replaced it. */
	if (dict_get(t->d, e->key, e->klen) == e)
		dict_del(t->d, e->key, e->klen);
	t->head = e->next;
	if (!t->head)
		t->tail = NULL;
	t->n--;
	free(e);
}

void idem_free(struct idem *t)
{
	if (!t)
		return;
	while (t->head)
		drop_oldest(t);
	dict_free(t->d);
	free(t);
}

const struct idem_result *idem_get(struct idem *t, const char *tenant, const char *key,
                                   int64_t since_ms)
{
	char buf[IDEM_KEYBUF];
	size_t n = make_key(buf, tenant, key);
	if (!n)
		return NULL;
	struct idem_entry *e = dict_get(t->d, buf, n);
	return e && e->at_ms >= since_ms ? &e->r : NULL;
}

int idem_put(struct idem *t, const char *tenant, const char *key, const struct idem_result *r,
             int64_t now_ms, uint32_t max)
{
	char buf[IDEM_KEYBUF];
	size_t n = make_key(buf, tenant, key);
	if (!n)
		return LH_EINVAL;
	if (max == 0)
		return 0;
	/* An expired entry still in the table (not swept yet) is replaced. */
	struct idem_entry *old = dict_get(t->d, buf, n);
	if (old)
		old->at_ms = INT64_MIN; /* looks expired; freed when it reaches the head */
	while (t->n >= max && t->head)
		drop_oldest(t);
	if (old && dict_get(t->d, buf, n) == old)
		dict_del(t->d, buf, n);
	struct idem_entry *e = malloc(sizeof(*e) + n);
	if (!e)
		return LH_ENOMEM;
	e->next = NULL;
	e->at_ms = now_ms;
	e->r = *r;
	e->klen = (uint16_t)n;
	memcpy(e->key, buf, n);
	if (dict_put(t->d, e->key, n, e)) {
		free(e);
		return LH_ENOMEM;
	}
	if (t->tail)
		t->tail->next = e;
	else
		t->head = e;
	t->tail = e;
	t->n++;
	return 0;
}

void idem_expire(struct idem *t, int64_t cutoff_ms)
{
	while (t->head && t->head->at_ms < cutoff_ms)
		drop_oldest(t);
}

uint64_t idem_count(const struct idem *t)
{
	return t->n;
}

/* FNV-1a over what makes a publication the same one: its type, channels
 * and data (not its time). */
uint64_t idem_digest(const struct publication *p)
{
	uint64_t x = 14695981039346656037ULL;
	const char *parts[2 + LH_PUB_MAX_CHANNELS] = {p->type, NULL};
	size_t lens[2 + LH_PUB_MAX_CHANNELS] = {strlen(p->type), 0};
	for (int i = 0; i < p->nchannels; i++) {
		parts[1 + i] = p->channels[i];
		lens[1 + i] = strlen(p->channels[i]);
	}
	parts[1 + p->nchannels] = p->data ? p->data : "";
	lens[1 + p->nchannels] = p->data ? p->data_len : 0;
	for (int k = 0; k < 2 + p->nchannels; k++) {
		for (size_t i = 0; i < lens[k]; i++)
			x = (x ^ (unsigned char)parts[k][i]) * 1099511628211ULL;
		x = (x ^ LH_KEY_SEP) * 1099511628211ULL;
	}
	return x;
}
