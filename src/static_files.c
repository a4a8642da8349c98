/*
 * static_files: the embedded demo page and browser client. See
 * static_files.h. The bytes come from files generated at build time from
 * clients/demo/ and clients/js/ (CMakeLists.txt, cmake/embed.cmake).
 */
#include "static_files.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

extern const unsigned char lh_demo_index_html[];
extern const size_t lh_demo_index_html_len;
extern const unsigned char lh_demo_js[];
extern const size_t lh_demo_js_len;
extern const unsigned char lh_livehub_js[];
extern const size_t lh_livehub_js_len;

#define HTML "text/html; charset=utf-8"
#define JS   "text/javascript; charset=utf-8"
/* Revalidate every time: the files change with the binary, and a 304 costs
 * one round trip. */
#define REVALIDATE "no-cache"

struct entry {
	struct static_file file;
	char etag[24]; /* "\"" + 16 hex digits + "\"" */
};

static struct entry entries[] = {
        {{"/", HTML, REVALIDATE, lh_demo_index_html, 0, NULL}, ""},
        {{"/index.html", HTML, REVALIDATE, lh_demo_index_html, 0, NULL}, ""},
        {{"/demo.js", JS, REVALIDATE, lh_demo_js, 0, NULL}, ""},
        {{"/livehub.js", JS, REVALIDATE, lh_livehub_js, 0, NULL}, ""},
};

/* FNV-1a, 64 bits: enough to tell two builds' files apart. */
static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Lengths are not constant expressions in C: filled in on first use. */
static void init_entries(void)
{
	static int done;
	if (done)
		return;
	const size_t lens[] = {lh_demo_index_html_len, lh_demo_index_html_len, lh_demo_js_len,
	                       lh_livehub_js_len};
	for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
		struct entry *e = &entries[i];
		e->file.len = lens[i];
		snprintf(e->etag, sizeof e->etag, "\"%016llx\"",
		         (unsigned long long)fnv1a(e->file.data, e->file.len));
		e->file.etag = e->etag;
	}
	done = 1;
}

const struct static_file *static_file_find(const char *path)
{
	init_entries();
	for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++)
		if (strcmp(entries[i].file.path, path) == 0)
			return &entries[i].file;
	return NULL;
}

int static_file_not_modified(const struct static_file *f, const char *inm)
{
	if (!inm || !*inm)
		return 0;
	size_t n = strlen(f->etag);
	for (const char *p = inm; *p;) {
		while (*p == ' ' || *p == ',' || *p == '\t')
			p++;
		if (*p == '*')
			return 1;
		if (strncmp(p, "W/", 2) == 0)
			p += 2; /* weak comparison, as If-None-Match asks */
		if (strncmp(p, f->etag, n) == 0 && (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
			return 1;
		while (*p && *p != ',')
			p++;
	}
	return 0;
}
