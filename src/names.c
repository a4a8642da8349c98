/* names: what tenant ids, user ids, channel names and event types may be. */
#include "names.h"

#include <stdint.h>

/* Character classes, one bit per kind of name. */
enum { C_TENANT = 1, C_USER = 2, C_CHANNEL = 4, C_TYPE = 8, C_ALL = 15 };

/* Which kinds of name may contain each byte: letters and digits in all;
 * tenants "_.-", users "_.:@+-", channels "_.:@+=/-", event types "_.:-".
 * A table rather than strchr over the extra characters: names are checked
 * several times per publish. */
static const uint8_t classes[256] = {
        ['0'] = C_ALL,
        ['1'] = C_ALL,
        ['2'] = C_ALL,
        ['3'] = C_ALL,
        ['4'] = C_ALL,
        ['5'] = C_ALL,
        ['6'] = C_ALL,
        ['7'] = C_ALL,
        ['8'] = C_ALL,
        ['9'] = C_ALL,
        ['a'] = C_ALL,
        ['b'] = C_ALL,
        ['c'] = C_ALL,
        ['d'] = C_ALL,
        ['e'] = C_ALL,
        ['f'] = C_ALL,
        ['g'] = C_ALL,
        ['h'] = C_ALL,
        ['i'] = C_ALL,
        ['j'] = C_ALL,
        ['k'] = C_ALL,
        ['l'] = C_ALL,
        ['m'] = C_ALL,
        ['n'] = C_ALL,
        ['o'] = C_ALL,
        ['p'] = C_ALL,
        ['q'] = C_ALL,
        ['r'] = C_ALL,
        ['s'] = C_ALL,
        ['t'] = C_ALL,
        ['u'] = C_ALL,
        ['v'] = C_ALL,
        ['w'] = C_ALL,
        ['x'] = C_ALL,
        ['y'] = C_ALL,
        ['z'] = C_ALL,
        ['A'] = C_ALL,
        ['B'] = C_ALL,
        ['C'] = C_ALL,
        ['D'] = C_ALL,
        ['E'] = C_ALL,
        ['F'] = C_ALL,
        ['G'] = C_ALL,
        ['H'] = C_ALL,
        ['I'] = C_ALL,
        ['J'] = C_ALL,
        ['K'] = C_ALL,
        ['L'] = C_ALL,
        ['M'] = C_ALL,
        ['N'] = C_ALL,
        ['O'] = C_ALL,
        ['P'] = C_ALL,
        ['Q'] = C_ALL,
        ['R'] = C_ALL,
        ['S'] = C_ALL,
        ['T'] = C_ALL,
        ['U'] = C_ALL,
        ['V'] = C_ALL,
        ['W'] = C_ALL,
        ['X'] = C_ALL,
        ['Y'] = C_ALL,
        ['Z'] = C_ALL,
        ['_'] = C_ALL,
        ['.'] = C_ALL,
        ['-'] = C_ALL,
        [':'] = C_USER | C_CHANNEL | C_TYPE,
        ['@'] = C_USER | C_CHANNEL,
        ['+'] = C_USER | C_CHANNEL,
        ['='] = C_CHANNEL,
        ['/'] = C_CHANNEL,
};

/* True when s[0..n) is 1..max bytes, each allowed in names of class cls. */
static bool charset_ok(const char *s, size_t n, size_t max, uint8_t cls)
{
	if (!s || n == 0 || n > max)
		return false;
	uint8_t all = cls;
	for (size_t i = 0; i < n; i++)
		all &= classes[(unsigned char)s[i]];
	return all != 0;
}

bool name_tenant_ok(const char *s, size_t n)
{
	return charset_ok(s, n, LH_TENANT_MAX, C_TENANT);
}

bool name_user_ok(const char *s, size_t n)
{
	return charset_ok(s, n, LH_USER_MAX, C_USER);
}

bool name_channel_any_ok(const char *s, size_t n)
{
	if (n > 0 && s[0] == '$')
		return n > 1 && charset_ok(s + 1, n - 1, LH_CHANNEL_MAX - 1, C_CHANNEL);
	return charset_ok(s, n, LH_CHANNEL_MAX, C_CHANNEL);
}

bool name_channel_ok(const char *s, size_t n)
{
	return n > 0 && s[0] != '$' && name_channel_any_ok(s, n);
}

bool name_type_ok(const char *s, size_t n)
{
	return charset_ok(s, n, LH_TYPE_MAX, C_TYPE);
}
