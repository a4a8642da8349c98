/* frame: a shared, reference-counted WebSocket message. See frame.h. */
#include "frame.h"

#include "strbuf.h"

#include <stdlib.h>
#include <string.h>

struct frame *frame_new(size_t cap)
{
	if (cap > UINT32_MAX - LH_FRAME_HEADROOM)
		return NULL;
	struct frame *f = malloc(sizeof(*f) + LH_FRAME_HEADROOM + cap);
	if (!f)
		return NULL;
	f->refs = 1;
	f->len = 0;
	f->cap = (uint32_t)cap;
	f->flags = 0;
	f->key = 0;
	f->t0_us = 0;
	return f;
}

struct frame *frame_from(const void *p, size_t len)
{
	struct frame *f = frame_new(len);
	if (!f)
		return NULL;
	memcpy(frame_payload(f), p, len);
	f->len = (uint32_t)len;
	return f;
}

void frame_unref(struct frame *f)
{
	if (f && --f->refs == 0)
		free(f);
}

struct frame *frame_from_sb(struct strbuf *sb)
{
	struct frame *f = sb->oom ? NULL : frame_from(sb->buf, sb->len);
	sb_free(sb);
	return f;
}
