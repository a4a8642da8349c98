/* libFuzzer target: any bytes as a ServerReflectionRequest. The answer must
 * be produced or refused (LH_EINVAL) without a crash, leak or UB. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "reflection.h"

/* Built once, before any input, so its memory is not an input's leak. */
static struct reflection *r;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	r = reflection_new(lh_descriptor_set, lh_descriptor_set_len);
	if (!r)
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *out = NULL;
	size_t len = 0;
	if (reflection_answer(r, data, size, &out, &len) == 0)
		free(out);
	return 0;
}
