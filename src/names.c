/* names: what tenant ids, user ids, channel names and event types may be. */
#include "names.h"

#include <string.h>

static bool alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* True when s[0..n) is 1..max bytes, each alphanumeric or in extra. */
static bool charset_ok(const char *s, size_t n, size_t max, const char *extra)
{
	if (!s || n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!alnum(c) && (c == '\0' || !strchr(extra, c)))
			return false;
	}
	return true;
}

bool name_tenant_ok(const char *s, size_t n)
{
	return charset_ok(s, n, LH_TENANT_MAX, "_.-");
}

bool name_user_ok(const char *s, size_t n)
{
	return charset_ok(s, n, LH_USER_MAX, "_.:@+-");
}

bool name_channel_any_ok(const char *s, size_t n)
{
	if (n > 0 && s[0] == '$')
		return n > 1 && charset_ok(s + 1, n - 1, LH_CHANNEL_MAX - 1, "_.:@+=/-");
	return charset_ok(s, n, LH_CHANNEL_MAX, "_.:@+=/-");
}

bool name_channel_ok(const char *s, size_t n)
{
	return n > 0 && s[0] != '$' && name_channel_any_ok(s, n);
}

bool name_type_ok(const char *s, size_t n)
{
	return charset_ok(s, n, LH_TYPE_MAX, "_.:-");
}
