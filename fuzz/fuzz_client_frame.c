/*
 * libFuzzer target: one client message through the ws_protocol parser and,
 * when it parses, through the builder of its reply; a refused message gets
 * its error frame built. The same bytes also go through the edge checks
 * that see raw client input first: the JSON shape scan and the Origin
 * allow-list. Must never crash or leak.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "edge.h"
#include "ws_protocol.h"

/* Built once: an allow-list with exact and wildcard entries. */
static struct origins *fuzz_origins(void)
{
	static struct origins *o;
	const char *err;
	if (!o)
		o = origins_new("https://app.example.com, https://*.example.org, http://*:*, null",
		                &err);
	return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wsp_request req;
	struct wsp_error err;
	struct frame *f;
	const char *why;
	(void)edge_json_shape((const char *)data, size, 16, 1000, &why);
	(void)edge_json_shape((const char *)data, size, 2, 3, &why);
	(void)origins_allowed(fuzz_origins(), (const char *)data, size);
	if (wsp_parse(data, size, &req, &err) == 0) {
		/* Every request that parses has a reply; auth and refresh get
		 * theirs from the WebSocket front (connected, refreshed), presence
		 * and publish from presence.c. */
		if (req.type == WSP_AUTH)
			f = wsp_connected_req("c1", "t", "u", 30, 90, &req);
		else if (req.type == WSP_REFRESH)
			f = wsp_refreshed(&req, 0);
		else
			f = wsp_reply(&req);
		if (!f && (req.type == WSP_PRESENCE || req.type == WSP_PUBLISH))
			f = wsp_pong(&req);
	} else {
		f = wsp_error(err.code, err.message, true, &req);
	}
	if (!f)
		abort();
	frame_unref(f);
	return 0;
}
