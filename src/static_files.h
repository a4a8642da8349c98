/*
 * static_files: the files livehub serves over HTTP on the WebSocket port
 * (the demo page at "/" and the browser client at "/livehub.js"),
 * embedded in the binary at build time (cmake/embed.cmake). No I/O here:
 * ws.c writes the responses.
 */
#ifndef LH_STATIC_FILES_H
#define LH_STATIC_FILES_H

#include <stddef.h>

struct static_file {
	const char *path;          /* request path, e.g. "/livehub.js" */
	const char *content_type;  /* full Content-Type header value */
	const char *cache_control; /* Cache-Control header value */
	const unsigned char *data; /* the embedded bytes (static storage) */
	size_t len;
	const char *etag; /* strong ETag, quotes included: a hash of the bytes */
};

/* The file served at path (query string already removed), or NULL. Service
 * thread only (ETags are computed on first use). */
const struct static_file *static_file_find(const char *path);

/* Whether an If-None-Match header value (a list of ETags, or "*") matches
 * f's ETag, so the answer is 304 Not Modified. */
int static_file_not_modified(const struct static_file *f, const char *if_none_match);

#endif
