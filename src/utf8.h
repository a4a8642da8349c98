/* utf8: strict UTF-8 validation (no overlongs, no surrogates, <= U+10FFFF). */
#ifndef LH_UTF8_H
#define LH_UTF8_H

#include <stdbool.h>
#include <stddef.h>

bool utf8_valid(const void *s, size_t n);

#endif
