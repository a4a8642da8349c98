/*
 * strbuf: a growable byte buffer for building JSON text.
 *
 * Appends never fail loudly: on allocation failure the buffer is marked
 * (sb->oom) and later appends do nothing, so a builder checks once at the end.
 */
#ifndef LH_STRBUF_H
#define LH_STRBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct strbuf {
	char *buf; /* NUL-terminated when len > 0 or after sb_cstr() */
	size_t len;
	size_t cap;
	int oom;
};

#define STRBUF_INIT           \
	{                     \
		NULL, 0, 0, 0 \
	}

void sb_free(struct strbuf *sb);
void sb_reset(struct strbuf *sb); /* len = 0, keeps memory */
/* Makes room for n more bytes; returns 0 or LH_ENOMEM. */
int sb_reserve(struct strbuf *sb, size_t n);
void sb_add(struct strbuf *sb, const void *p, size_t n);
void sb_adds(struct strbuf *sb, const char *s);
void sb_addc(struct strbuf *sb, char c);
void sb_addf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_add_i64(struct strbuf *sb, int64_t v);
void sb_add_u64(struct strbuf *sb, uint64_t v);
/* Appends s (n bytes, assumed valid UTF-8) as a quoted JSON string. */
void sb_add_json_str(struct strbuf *sb, const char *s, size_t n);
/* Appends key (raw text, e.g. ",\"user\":") and then s as a JSON string. */
void sb_add_key_str(struct strbuf *sb, const char *key, const char *s);
/* Returns the NUL-terminated text (never NULL unless oom). */
const char *sb_cstr(struct strbuf *sb);

#endif
