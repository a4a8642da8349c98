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
		/* Every request that parses has a reply here (auth/refresh never
		 * parse), except presence and publish, which presence.c answers. */
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
