/*
 * names: what tenant ids, user ids, channel names and event types may be.
 *
 * The charsets exclude '"', '\\' and control bytes, so a valid name can be
 * put into JSON without escaping, and exclude the internal separator 0x1f,
 * so the internal channel key "tenant\x1fchannel" is unambiguous: no tenant
 * can ever name another tenant's channel.
 */
#ifndef LH_NAMES_H
#define LH_NAMES_H

#include <stdbool.h>
#include <stddef.h>

#define LH_TENANT_MAX  64  /* [A-Za-z0-9_.-] */
#define LH_USER_MAX    128 /* [A-Za-z0-9_.:@+-] */
#define LH_CHANNEL_MAX 160 /* [A-Za-z0-9_.:@+=/-], '$' only as first byte */
#define LH_TYPE_MAX    64  /* [A-Za-z0-9_.:-] */
#define LH_KEY_SEP     '\x1f'

bool name_tenant_ok(const char *s, size_t n);
bool name_user_ok(const char *s, size_t n);
/* A channel name a client may subscribe to: valid and not reserved ('$'). */
bool name_channel_ok(const char *s, size_t n);
/* Any channel name, reserved ones ("$tenant", "$user:alice") included. */
bool name_channel_any_ok(const char *s, size_t n);
bool name_type_ok(const char *s, size_t n);

#endif
