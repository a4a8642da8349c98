/*
 * b64url: base64url encoding (no padding) for code that builds JWTs by
 * hand: the auth unit tests and the token fuzz target. livehub itself only
 * decodes (src/auth.c).
 */
#ifndef LH_TEST_B64URL_H
#define LH_TEST_B64URL_H

#include <stddef.h>
#include <stdint.h>

/* Encodes the n bytes at in into out (room for 4n/3 + 2 bytes); returns
 * the length, out NUL-terminated. */
static inline size_t b64url(const unsigned char *in, size_t n, char *out)
{
	static const char tbl[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = tbl[(v >> 18) & 63];
		out[o++] = tbl[(v >> 12) & 63];
		if (i + 1 < n)
			out[o++] = tbl[(v >> 6) & 63];
		if (i + 2 < n)
			out[o++] = tbl[v & 63];
	}
	out[o] = '\0';
	return o;
}

#endif
