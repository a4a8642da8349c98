/*
 * libFuzzer target: one client message through the ws_protocol parser and,
 * when it parses, through the builder of its reply; a refused message gets
 * its error frame built. Must never crash or leak.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ws_protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wsp_request req;
	struct wsp_error err;
	struct frame *f;
	if (wsp_parse(data, size, &req, &err) == 0) {
		/* Every request that parses has a reply; auth and refresh get
		 * theirs from the WebSocket front (connected, refreshed). */
		if (req.type == WSP_AUTH)
			f = wsp_connected_req("c1", "t", "u", 30, 90, &req);
		else if (req.type == WSP_REFRESH)
			f = wsp_refreshed(&req, 0);
		else
			f = wsp_reply(&req);
	} else {
		f = wsp_error(err.code, err.message, true, &req);
	}
	if (!f)
		abort();
	frame_unref(f);
	return 0;
}
