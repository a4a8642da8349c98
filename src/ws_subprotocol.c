/*
 * ws_subprotocol: lets a client offer its token as a WebSocket subprotocol
 * ("Sec-WebSocket-Protocol: livehub.v1, bearer.JWT", the only way a browser
 * can send a credential with the upgrade besides the URL).
 *
 * Why this file exists: lws 4.1.6 picks the subprotocol in
 * lws_process_ws_upgrade(), which copies the whole Sec-WebSocket-Protocol
 * header into a 128-byte stack buffer with lws_hdr_copy() and drops the
 * connection (no HTTP answer at all) when the header is longer, as any
 * header with a JWT in it is. lws offers no hook between its header parser
 * and that copy, so livehub interposes lws_hdr_copy() itself: this
 * definition in the executable takes the place of the library's for every
 * caller (lws calls it through the PLT; checked with objdump on the Debian
 * build), forwards every call unchanged to the library's own function, and
 * only when a caller's buffer is too small for the subprotocol header
 * returns the header without its "bearer.*" entries. lws then matches
 * "livehub.v1" and echoes it in the 101 response, as browsers require. The
 * token itself is read by ws.c with a buffer large enough for the whole
 * header, which gets the unfiltered text. Everything else about lws is
 * untouched. tests/integration/test_tokens.py covers it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libwebsockets.h>
#include <string.h>

#define PROTOCOLS_MAX 8192 /* the request header limit (WS_HEADER_MAX) */
#define BEARER        "bearer."

typedef int (*hdr_copy_fn)(struct lws *, char *, int, enum lws_token_indexes);

/* The library's lws_hdr_copy. Resolved on first use: only the lws service
 * thread calls it. */
static hdr_copy_fn real_hdr_copy(void)
{
	static hdr_copy_fn real;
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "lws_hdr_copy");
	return real;
}

/* Copies the comma-separated list in src to dst (len bytes) without its
 * bearer.* entries. Returns the length, or -1 when even that does not fit. */
static int without_bearer(const char *src, char *dst, int len)
{
	int o = 0;
	const char *p = src;
	if (len <= 0)
		return -1;
	while (*p) {
		while (*p == ' ' || *p == ',')
			p++;
		size_t n = strcspn(p, ",");
		size_t t = n;
		while (t > 0 && p[t - 1] == ' ')
			t--;
		if (t > 0 && strncmp(p, BEARER, strlen(BEARER)) != 0) {
			if (o + (o ? 2 : 0) + (int)t + 1 > len)
				return -1;
			if (o) {
				dst[o++] = ',';
				dst[o++] = ' ';
			}
			memcpy(dst + o, p, t);
			o += (int)t;
		}
		p += n;
	}
	dst[o] = '\0';
	return o;
}

int lws_hdr_copy(struct lws *wsi, char *dst, int len, enum lws_token_indexes h)
{
	hdr_copy_fn real = real_hdr_copy();
	if (!real)
		return -1;
	if (h != WSI_TOKEN_PROTOCOL || lws_hdr_total_length(wsi, h) < len)
		return real(wsi, dst, len, h);
	static char all[PROTOCOLS_MAX];
	if (real(wsi, all, (int)sizeof all, h) < 0)
		return -1;
	int n = without_bearer(all, dst, len);
	explicit_bzero(all, sizeof all);
	return n;
}
