/*
 * A frame: one WebSocket text message, built once and shared by reference
 * by every connection it is queued on.
 *
 * The payload is preceded by LH_FRAME_HEADROOM bytes in which the WebSocket
 * layer writes the frame header in place (lws needs LWS_PRE bytes; ws.c
 * checks at compile time that they fit). Server frames are unmasked, so the
 * header bytes written are the same for every subscriber and one buffer
 * serves them all.
 *
 * Threads: a frame is built on one thread and handed to the service thread
 * through the hand-off queue; from then on only the service thread touches
 * it, so the reference count is a plain integer.
 */
#ifndef LH_FRAME_H
#define LH_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define LH_FRAME_HEADROOM 16

struct frame {
	uint32_t refs;       /* service thread */
	uint32_t len;        /* payload bytes */
	uint32_t cap;        /* payload capacity */
	uint32_t flags;      /* FRAME_F_* */
	uint64_t key;        /* conflation key (0 = none) */
	int64_t t0_us;       /* CLOCK_MONOTONIC µs its publish call arrived; 0 for replies */
	unsigned char mem[]; /* LH_FRAME_HEADROOM bytes, then cap payload bytes */
};

/* Returns a frame with one reference and room for cap payload bytes, or
 * NULL when out of memory. The caller owns the reference. */
struct frame *frame_new(size_t cap);

/* Returns a new frame holding a copy of the len bytes at p (one reference). */
struct frame *frame_from(const void *p, size_t len);
struct strbuf;
/* A frame holding the text built in sb (NULL when sb ran out of memory or
 * the frame cannot be allocated); frees sb's buffer either way. */
struct frame *frame_from_sb(struct strbuf *sb);

static inline unsigned char *frame_payload(struct frame *f)
{
	return f->mem + LH_FRAME_HEADROOM;
}

static inline struct frame *frame_ref(struct frame *f)
{
	f->refs++;
	return f;
}

/* Drops one reference; frees the frame when it was the last. NULL is a no-op. */
void frame_unref(struct frame *f);

#endif
