/*
 * libFuzzer target for pbjson: the input's first byte picks a message type,
 * the rest is depth-checked and unpacked as that type with protobuf-c (as
 * the gRPC front does) and written as JSON.
 * Whatever pbjson writes on success must parse with jansson and be valid
 * UTF-8; errors are fine (they are answers to bad input), crashes are not.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/struct.pb-c.h"
#include "livehub.h"
#include "livehub/v1/events.pb-c.h"
#include "pbjson.h"
#include "pbjson_test.pb-c.h"
#include "utf8.h"

static const ProtobufCMessageDescriptor *const types[] = {
        &lhtest__everything__descriptor,
        &livehub__v1__job_progress__descriptor,
        &livehub__v1__price_updated__descriptor,
        &google__protobuf__struct__descriptor,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const ProtobufCMessageDescriptor *d = types[data[0] % (sizeof(types) / sizeof(types[0]))];
	if (pbjson_check_depth(d, data + 1, size - 1) != 0)
		return 0;
	ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, size - 1, data + 1);
	if (!m)
		return 0;
	struct strbuf sb = STRBUF_INIT;
	char path[128];
	int rc = pbjson_write(&sb, m, path, sizeof(path));
	if (rc == 0) {
		json_error_t err;
		json_t *j = json_loadb(sb.buf, sb.len, JSON_DECODE_ANY, &err);
		if (!j || !utf8_valid(sb.buf, sb.len)) {
			fprintf(stderr, "bad JSON (%s): %.*s\n", j ? "utf8" : err.text, (int)sb.len,
			        sb.buf);
			abort();
		}
		json_decref(j);
	} else if (rc != LH_EUTF8 && rc != LH_EINVAL) {
		fprintf(stderr, "unexpected rc %d at %s\n", rc, path);
		abort();
	} else if (!utf8_valid(path, strlen(path))) {
		fprintf(stderr, "errpath is not UTF-8\n");
		abort();
	}
	sb_free(&sb);
	protobuf_c_message_free_unpacked(m, NULL);
	return 0;
}
