/* libFuzzer target: the bytes the Redis broker parses itself (broker_url.c):
 * LIVEHUB_REDIS_URL (from the environment or a configuration file), channel
 * messages read from Redis pub/sub, and event frames read back from a
 * stream. The first byte picks the parser. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const char *p = (const char *)data + 1;
	size_t n = size - 1;
	switch (data[0] % 3) {
	case 0: {
		char *s = malloc(n + 1);
		if (!s)
			return 0;
		memcpy(s, p, n);
		s[n] = '\0';
		struct broker_url u;
		const char *why;
		broker_url_parse(s, &u, &why);
		free(s);
		break;
	}
	case 1: {
		/* Exactly n bytes, no terminator: reads past it are caught. */
		char *s = malloc(n ? n : 1);
		if (!s)
			return 0;
		memcpy(s, p, n);
		struct broker_msg m;
		if (broker_msg_parse(s, n, &m) == 0 && m.frame + m.frame_len != s + n)
			abort();
		free(s);
		break;
	}
	default: {
		char *s = malloc(n ? n : 1);
		if (!s)
			return 0;
		memcpy(s, p, n);
		struct broker_frame f;
		if (broker_frame_parts(s, n, &f) == 0 && f.data + f.data_len > s + n)
			abort();
		free(s);
		break;
	}
	}
	return 0;
}
