/*
 * pbjson: a protobuf-c message as proto3 JSON. See pbjson.h for the mapping.
 *
 * The writer walks protobuf-c descriptors generically: it reads each field
 * from the message struct at the offsets the descriptor gives. Choices the
 * header leaves open:
 * - fields are written in field-number order (protobuf-c sorts descriptors
 *   by number), not declaration order;
 * - a map field is a repeated message field whose entry type is the nested
 *   "<CamelName>Entry" message with fields key = 1 and value = 2, as protoc
 *   generates for `map<K, V>` (protobuf-c keeps no map flag);
 * - a Value with no kind set is written as null;
 * - an absent message in a map value (the wire allows it) is written as the
 *   type's default: {} for plain messages, null for a Value, and so on;
 * - a string field is read up to its first NUL (protobuf-c keeps strings
 *   NUL-terminated, so bytes after an embedded NUL are not visible);
 * - map entries are written in wire order; protobuf-c keeps repeated keys,
 *   so a map (or Struct) sent with a key twice repeats it in the JSON, where
 *   JSON.parse keeps the last one, as protobuf does;
 * - google.protobuf.Any is not special-cased (not among our generated WKTs);
 * - numbers go through snprintf("%g"), so LC_NUMERIC must stay "C".
 * Each message type's JSON keys ("\"jobId\":") and camel names are built once,
 * on first use, into a table that lives as long as the process (descriptors
 * are static); see keytab_get.
 * Nesting is limited to PBJSON_MAX_DEPTH levels, counting each message and
 * each google.protobuf.Value (not map entries); deeper input is LH_EINVAL.
 * pbjson_check_depth, at the end, guards protobuf-c's unpack, which has no
 * depth limit of its own.
 *
 * Error paths are dotted lowerCamelCase field names from the top message;
 * repeated and ListValue elements add "[i]", map values add ["key"] (string
 * keys) or [7] / [true] (integer and bool keys), and a Struct's entries add
 * ".fields.<key>": a bad string in details["note"] of a Struct field reads
 * "details.fields.note", in the third element of a list under it
 * "details.fields.tags[2]". A bad string map key names the map field itself.
 */
#include "pbjson.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/field_mask.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "livehub.h"
#include "utf8.h"

#define PBJSON_MAX_DEPTH 64
#define PATH_MAX_LEN     256

struct ctx {
	struct strbuf *sb;
	int depth;
	size_t plen;             /* bytes of path in use */
	char path[PATH_MAX_LEN]; /* the field being written, NUL-terminated */
};

static int write_message(struct ctx *c, const ProtobufCMessageDescriptor *d,
                         const ProtobufCMessage *m);

/* ---------------------------------------------------------------------------
 * Names and paths
 * ------------------------------------------------------------------------- */

/* protoc's ToJsonName: drop each '_' and upper-case the letter after it. At
 * most cap-1 bytes are written, then a NUL; returns the length written. */
static size_t camel_into(char *out, size_t cap, const char *name)
{
	size_t o = 0;
	bool up = false;
	if (cap == 0)
		return 0;
	for (const char *p = name; *p && o + 1 < cap; p++) {
		if (*p == '_') {
			up = true;
			continue;
		}
		char ch = *p;
		if (up && ch >= 'a' && ch <= 'z')
			ch = (char)(ch - 'a' + 'A');
		up = false;
		out[o++] = ch;
	}
	out[o] = '\0';
	return o;
}

size_t pbjson_camel(const char *name, char *out)
{
	return camel_into(out, strlen(name) + 1, name);
}

/* Appends text to the path (silently truncated when full); returns the old
 * length for path_pop. */
static size_t path_push(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_push(struct ctx *c, const char *fmt, ...)
{
	size_t old = c->plen;
	if (old + 1 >= sizeof(c->path))
		return old;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->path + old, sizeof(c->path) - old, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	c->plen = old + (size_t)n;
	if (c->plen >= sizeof(c->path))
		c->plen = sizeof(c->path) - 1;
	return old;
}

/* Appends ".name" (lowerCamelCase; no dot at the start of the path). */
static size_t path_push_field(struct ctx *c, const char *name)
{
	size_t old = c->plen;
	size_t room = sizeof(c->path) - old;
	if (room <= 2)
		return old;
	size_t at = old;
	if (old > 0)
		c->path[at++] = '.', room--;
	c->plen = at + camel_into(c->path + at, room, name);
	return old;
}

static void path_pop(struct ctx *c, size_t old)
{
	c->plen = old;
	c->path[old] = '\0';
}

/* Appends n bytes of s to the path, cut short (and NUL-terminated) when it is
 * full: the same text path_push's vsnprintf would leave, without the cost. */
static void path_add(struct ctx *c, const char *s, size_t n)
{
	size_t old = c->plen;
	if (old + 1 >= sizeof(c->path))
		return;
	size_t room = sizeof(c->path) - old - 1;
	if (n > room)
		n = room;
	memcpy(c->path + old, s, n);
	c->plen = old + n;
	c->path[c->plen] = '\0';
}

/* Appends "[i]" to the path; returns the old length for path_pop. */
static size_t path_push_index(struct ctx *c, size_t i)
{
	char tmp[24];
	size_t at = sizeof(tmp);
	size_t old = c->plen;
	tmp[--at] = ']';
	do {
		tmp[--at] = (char)('0' + i % 10);
		i /= 10;
	} while (i);
	tmp[--at] = '[';
	path_add(c, tmp + at, sizeof(tmp) - at);
	return old;
}

/* path_push_field for a name already in lowerCamelCase (n bytes). */
static size_t path_push_camel(struct ctx *c, const char *camel, size_t n)
{
	size_t old = c->plen;
	if (sizeof(c->path) - old <= 2)
		return old;
	if (old > 0)
		c->path[c->plen++] = '.';
	path_add(c, camel, n);
	return old;
}

/* Copies the path to errpath, cut back to a whole UTF-8 character when it
 * does not fit (map keys in it are valid UTF-8). */
static void copy_path(const struct ctx *c, char *errpath, size_t errlen)
{
	if (!errpath || errlen == 0)
		return;
	size_t n = c->plen < errlen - 1 ? c->plen : errlen - 1;
	while (n > 0 && n < c->plen && ((unsigned char)c->path[n] & 0xC0) == 0x80)
		n--;
	memcpy(errpath, c->path, n);
	errpath[n] = '\0';
}

/* Appends a quoted JSON string holding the lowerCamelCase form of name (n
 * bytes, valid UTF-8). The camel text is built in the strbuf's own spare room,
 * past where the escaped output can reach (at most 6 bytes per input byte plus
 * the opening quote), so no other buffer is needed for long names. */
static void add_camel_str(struct strbuf *sb, const char *name, size_t n)
{
	if (sb_reserve(sb, n * 7 + 3))
		return;
	char *scratch = sb->buf + sb->len + n * 6 + 2;
	size_t m = 0;
	bool up = false;
	for (size_t i = 0; i < n; i++) {
		char ch = name[i];
		if (ch == '_') {
			up = true;
			continue;
		}
		if (up && ch >= 'a' && ch <= 'z')
			ch = (char)(ch - 'a' + 'A');
		up = false;
		scratch[m++] = ch;
	}
	sb_add_json_str(sb, scratch, m);
}

/* Appends one byte; the common case (room already there) stays inline. */
static inline void add_ch(struct strbuf *sb, char ch)
{
	if (!sb->oom && sb->len + 2 <= sb->cap) {
		sb->buf[sb->len++] = ch;
		sb->buf[sb->len] = '\0';
		return;
	}
	sb_addc(sb, ch);
}

/* Appends n bytes; the common case stays inline. */
static inline void add_raw(struct strbuf *sb, const char *p, size_t n)
{
	if (!sb->oom && sb->len + n + 1 <= sb->cap) {
		memcpy(sb->buf + sb->len, p, n);
		sb->len += n;
		sb->buf[sb->len] = '\0';
		return;
	}
	sb_add(sb, p, n);
}

/* Whether all eight bytes of x are plain: printable ASCII other than '"' and
 * '\\'. (v - ones * k) & ~v & highs is non-zero exactly when some byte of v
 * is below k (k <= 0x80), so a zero byte in x ^ ones * c means a byte equals c;
 * borrows can only misreport when some byte is already not plain. */
static inline bool plain8(uint64_t x)
{
	const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\'), d = x ^ (ones * 0x7f);
	uint64_t bad = ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b) |
	               ((d - ones) & ~d) | x;
	return !(bad & highs);
}

/* Whether s (n bytes) is printable ASCII with no '"' or '\\': valid UTF-8
 * that sb_add_json_str would copy unchanged between its quotes. */
static bool plain_ascii(const char *s, size_t n)
{
	uint64_t x = 0x6161616161616161ull; /* "aaaaaaaa" pads a short string */
	if (n == 0)
		return true;
	if (n < 8) {
		memcpy(&x, s, n);
		return plain8(x);
	}
	/* Eight bytes at a time; the last load overlaps the one before it. */
	for (size_t i = 0; i + 8 < n; i += 8) {
		memcpy(&x, s + i, 8);
		if (!plain8(x))
			return false;
	}
	memcpy(&x, s + n - 8, 8);
	return plain8(x);
}

/* Appends s (n bytes, valid UTF-8) quoted, exactly as sb_add_json_str does;
 * plain says plain_ascii(s, n) holds, so the bytes are copied in one go. */
static void add_quoted(struct strbuf *sb, const char *s, size_t n, bool plain)
{
	if (!plain) {
		sb_add_json_str(sb, s, n);
		return;
	}
	if (sb_reserve(sb, n + 2))
		return;
	char *o = sb->buf + sb->len;
	*o++ = '"';
	memcpy(o, s, n);
	o += n;
	*o++ = '"';
	sb->len = (size_t)(o - sb->buf);
	sb->buf[sb->len] = '\0';
}

/* ---------------------------------------------------------------------------
 * Per-type key cache
 * ------------------------------------------------------------------------- */

/* One field's cached names: its JSON key with quotes and colon, and its
 * lowerCamelCase name for error paths. */
struct fkey {
	const char *key;
	const char *camel;
	uint32_t key_len;
	uint32_t camel_len;
};

/* The cached names of one message type's fields, in descriptor order. */
struct keytab {
	const ProtobufCMessageDescriptor *d;
	struct fkey f[];
};

/* Open addressing over descriptor addresses. A slot goes from NULL to a table
 * once (compare-and-swap) and never changes again; tables are never freed,
 * since descriptors live as long as the process. A full array only means the
 * uncached path is taken. */
#define KEYTAB_SLOTS 256
static _Atomic(struct keytab *) keytabs[KEYTAB_SLOTS];

/* Builds the key table of d in one allocation (owned by keytabs once
 * published); NULL when out of memory or a name is absurdly long. */
static struct keytab *keytab_build(const ProtobufCMessageDescriptor *d)
{
	struct strbuf txt = STRBUF_INIT;
	struct keytab *t = NULL;
	size_t head = sizeof(*t) + d->n_fields * sizeof(t->f[0]);
	for (unsigned i = 0; i < d->n_fields; i++) {
		const char *name = d->fields[i].name;
		size_t n = strlen(name);
		if (n > UINT16_MAX || sb_reserve(&txt, n + 1))
			goto out;
		size_t at = txt.len;
		txt.len += camel_into(txt.buf + at, n + 1, name) + 1;
		add_camel_str(&txt, name, n);
		sb_add(&txt, ":", 2); /* the ':' and a NUL */
	}
	if (txt.oom || !(t = malloc(head + txt.len)))
		goto out;
	t->d = d;
	char *p = (char *)t + head;
	if (txt.len)
		memcpy(p, txt.buf, txt.len);
	for (unsigned i = 0; i < d->n_fields; i++) {
		t->f[i].camel = p;
		t->f[i].camel_len = (uint32_t)strlen(p);
		p += t->f[i].camel_len + 1;
		t->f[i].key = p;
		t->f[i].key_len = (uint32_t)strlen(p);
		p += t->f[i].key_len + 1;
	}
out:
	sb_free(&txt);
	return t;
}

/* Returns the key table of d, building and publishing it on first use; NULL
 * (use the uncached path) when it cannot be built or the array is full. Safe
 * from any number of threads: a lost publishing race frees its own copy. */
static const struct keytab *keytab_get(const ProtobufCMessageDescriptor *d)
{
	size_t h = (size_t)(((uintptr_t)d >> 4) * 0x9E3779B97F4A7C15ull >> 32);
	for (size_t i = 0; i < KEYTAB_SLOTS; i++) {
		_Atomic(struct keytab *) *slot = &keytabs[(h + i) & (KEYTAB_SLOTS - 1)];
		struct keytab *t = atomic_load_explicit(slot, memory_order_acquire);
		if (!t) {
			struct keytab *nt = keytab_build(d);
			if (!nt)
				return NULL;
			if (atomic_compare_exchange_strong_explicit(
			            slot, &t, nt, memory_order_acq_rel, memory_order_acquire))
				return nt;
			free(nt); /* t is now the winner's table */
		}
		if (t->d == d)
			return t;
	}
	return NULL;
}

/* ---------------------------------------------------------------------------
 * Scalars
 * ------------------------------------------------------------------------- */

/* Writes a finite double as the shortest %.Ng text that reads back exactly. */
static void add_double(struct strbuf *sb, double v)
{
	char tmp[40];
	/* Whole numbers below 1e15 print the same as %.15g would, faster. */
	if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v && !(v == 0 && signbit(v))) {
		sb_add_i64(sb, (int64_t)v);
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
		if (prec == 17 || strtod(tmp, NULL) == v)
			break;
	}
	sb_adds(sb, tmp);
}

/* Writes a finite float as the shortest text that reads back as that float. */
static void add_float(struct strbuf *sb, float v)
{
	char tmp[40];
	for (int prec = 6; prec <= 9; prec++) {
		snprintf(tmp, sizeof(tmp), "%.*g", prec, (double)v);
		if (prec == 9 || strtof(tmp, NULL) == v)
			break;
	}
	sb_adds(sb, tmp);
}

/* Writes a double or float value: a number, or "NaN"/"Infinity"/"-Infinity". */
static void add_fp(struct strbuf *sb, double v, bool is_float)
{
	if (isnan(v))
		sb_adds(sb, "\"NaN\"");
	else if (isinf(v))
		sb_adds(sb, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
	else if (is_float)
		add_float(sb, (float)v);
	else
		add_double(sb, v);
}

static void add_base64(struct strbuf *sb, const uint8_t *p, size_t n)
{
	static const char tab[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	if (sb_reserve(sb, (n + 2) / 3 * 4 + 2))
		return;
	char *o = sb->buf + sb->len;
	*o++ = '"';
	size_t i = 0;
	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = tab[(v >> 6) & 63];
		*o++ = tab[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		*o++ = '=';
	}
	*o++ = '"';
	sb->len = (size_t)(o - sb->buf);
	sb->buf[sb->len] = '\0';
}

/* Writes a string after checking its UTF-8; NULL counts as "". */
static int add_string(struct ctx *c, const char *s)
{
	if (!s)
		s = "";
	size_t n = strlen(s);
	bool plain = plain_ascii(s, n);
	if (!plain && !utf8_valid(s, n))
		return LH_EUTF8;
	add_quoted(c->sb, s, n, plain);
	return 0;
}

static void add_enum(struct strbuf *sb, const ProtobufCEnumDescriptor *ed, int v)
{
	const ProtobufCEnumValue *ev = ed ? protobuf_c_enum_descriptor_get_value(ed, v) : NULL;
	if (ed && strcmp(ed->name, "google.protobuf.NullValue") == 0) {
		sb_adds(sb, "null");
	} else if (ev) {
		size_t n = strlen(ev->name);
		add_quoted(sb, ev->name, n, plain_ascii(ev->name, n));
	} else {
		sb_add_i64(sb, v);
	}
}

/* Size of one element of a repeated field of type t in protobuf-c's arrays. */
static size_t elem_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64: return 8;
	case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
	default: return 4;
	}
}

/* Writes one value of field f stored at p (a member or array element). */
static int write_value(struct ctx *c, const ProtobufCFieldDescriptor *f, const void *p)
{
	struct strbuf *sb = c->sb;
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32: sb_add_i64(sb, *(const int32_t *)p); break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32: sb_add_u64(sb, *(const uint32_t *)p); break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		add_ch(sb, '"');
		sb_add_i64(sb, *(const int64_t *)p);
		add_ch(sb, '"');
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		add_ch(sb, '"');
		sb_add_u64(sb, *(const uint64_t *)p);
		add_ch(sb, '"');
		break;
	case PROTOBUF_C_TYPE_FLOAT: add_fp(sb, *(const float *)p, true); break;
	case PROTOBUF_C_TYPE_DOUBLE: add_fp(sb, *(const double *)p, false); break;
	case PROTOBUF_C_TYPE_BOOL:
		sb_adds(sb, *(const protobuf_c_boolean *)p ? "true" : "false");
		break;
	case PROTOBUF_C_TYPE_ENUM: add_enum(sb, f->descriptor, *(const int *)p); break;
	case PROTOBUF_C_TYPE_STRING: return add_string(c, *(char *const *)p);
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *b = p;
		add_base64(sb, b->data, b->len);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		return write_message(c, f->descriptor, *(ProtobufCMessage *const *)p);
	}
	return 0;
}

/* ---------------------------------------------------------------------------
 * Repeated fields and maps
 * ------------------------------------------------------------------------- */

/* Whether f (a repeated message field of message d) is a protoc map field:
 * its entry type is d's nested "<CamelName>Entry" with key = 1, value = 2. */
static bool is_map_field(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f)
{
	const ProtobufCMessageDescriptor *e = f->descriptor;
	if (f->type != PROTOBUF_C_TYPE_MESSAGE || !e || e->n_fields != 2)
		return false;
	if (e->fields[0].id != 1 || strcmp(e->fields[0].name, "key") != 0 || e->fields[1].id != 2 ||
	    strcmp(e->fields[1].name, "value") != 0)
		return false;
	size_t dn = strlen(d->name);
	if (strncmp(e->name, d->name, dn) != 0 || e->name[dn] != '.')
		return false;
	/* protoc's entry name: the field name with each letter after '_' (and
	 * the first) upper-cased, underscores dropped, then "Entry". */
	const char *q = e->name + dn + 1;
	bool up = true;
	for (const char *p = f->name; *p; p++) {
		if (*p == '_') {
			up = true;
			continue;
		}
		char ch = *p;
		if (up && ch >= 'a' && ch <= 'z')
			ch = (char)(ch - 'a' + 'A');
		up = false;
		if (*q++ != ch)
			return false;
	}
	return strcmp(q, "Entry") == 0;
}

/* Writes a map key as a JSON object key and extends the path with it. */
static int write_map_key(struct ctx *c, const ProtobufCFieldDescriptor *kf, const void *p,
                         size_t *old)
{
	struct strbuf *sb = c->sb;
	if (kf->type == PROTOBUF_C_TYPE_STRING) {
		const char *k = *(char *const *)p;
		if (!k)
			k = "";
		size_t n = strlen(k);
		bool plain = plain_ascii(k, n);
		if (!plain && !utf8_valid(k, n))
			return LH_EUTF8;
		*old = c->plen;
		path_add(c, "[\"", 2);
		path_add(c, k, n);
		path_add(c, "\"]", 2);
		add_quoted(sb, k, n, plain);
	} else if (kf->type == PROTOBUF_C_TYPE_BOOL) {
		bool b = *(const protobuf_c_boolean *)p;
		*old = path_push(c, "[%s]", b ? "true" : "false");
		sb_adds(sb, b ? "\"true\"" : "\"false\"");
	} else {
		/* Integer keys: the value form, quoted when it is not already. */
		size_t at = sb->len;
		int rc = write_value(c, kf, p);
		if (rc)
			return rc;
		if (sb->oom)
			return LH_ENOMEM;
		if (sb->buf[at] != '"') {
			add_ch(sb, '"');
			memmove(sb->buf + at + 1, sb->buf + at, sb->len - at - 1);
			sb->buf[at] = '"';
			add_ch(sb, '"');
		}
		*old = path_push(c, "[%.*s]", (int)(sb->len - at - 2), sb->buf + at + 1);
	}
	add_ch(sb, ':');
	return 0;
}

/* Writes n map entries (an array of entry message pointers) as an object. */
static int write_map(struct ctx *c, const ProtobufCFieldDescriptor *f,
                     ProtobufCMessage *const *entries, size_t n)
{
	const ProtobufCMessageDescriptor *e = f->descriptor;
	add_ch(c->sb, '{');
	for (size_t i = 0, out = 0; i < n; i++) {
		const char *base = (const char *)entries[i];
		if (!base)
			continue;
		if (out++ > 0)
			add_ch(c->sb, ',');
		size_t old;
		int rc = write_map_key(c, &e->fields[0], base + e->fields[0].offset, &old);
		if (rc)
			return rc;
		rc = write_value(c, &e->fields[1], base + e->fields[1].offset);
		if (rc)
			return rc;
		path_pop(c, old);
	}
	add_ch(c->sb, '}');
	return 0;
}

/* Writes a repeated field: an object for maps, else an array. */
static int write_repeated(struct ctx *c, const ProtobufCMessageDescriptor *d,
                          const ProtobufCFieldDescriptor *f, const char *base)
{
	size_t n = *(const size_t *)(base + f->quantifier_offset);
	const char *arr = *(const char *const *)(base + f->offset);
	if (n > 0 && !arr)
		n = 0;
	if (is_map_field(d, f))
		return write_map(c, f, (ProtobufCMessage *const *)(const void *)arr, n);
	size_t sz = elem_size(f->type);
	add_ch(c->sb, '[');
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			add_ch(c->sb, ',');
		size_t old = path_push_index(c, i);
		int rc = write_value(c, f, arr + i * sz);
		if (rc)
			return rc;
		path_pop(c, old);
	}
	add_ch(c->sb, ']');
	return 0;
}

/* ---------------------------------------------------------------------------
 * Well-known types
 * ------------------------------------------------------------------------- */

/* Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
 * civil_from_days). */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* Appends ".nnn", ".nnnnnn" or ".nnnnnnnnn" (or nothing for 0), as the
 * mapping asks: 3, 6 or 9 digits, whichever is the fewest that is exact. */
static void add_nanos(struct strbuf *sb, uint32_t nanos)
{
	if (nanos == 0)
		return;
	if (nanos % 1000000 == 0)
		sb_addf(sb, ".%03" PRIu32, nanos / 1000000);
	else if (nanos % 1000 == 0)
		sb_addf(sb, ".%06" PRIu32, nanos / 1000);
	else
		sb_addf(sb, ".%09" PRIu32, nanos);
}

/* Timestamp: RFC 3339 in UTC, years 0001 to 9999. */
static int write_timestamp(struct ctx *c, const Google__Protobuf__Timestamp *t)
{
	const int64_t min = -62135596800LL, max = 253402300799LL;
	int64_t s = t ? t->seconds : 0;
	int32_t ns = t ? t->nanos : 0;
	if (s < min || s > max || ns < 0 || ns > 999999999)
		return LH_EINVAL;
	int64_t days = (s >= 0 ? s : s - 86399) / 86400;
	int64_t secs = s - days * 86400;
	int64_t y;
	unsigned mo, d;
	civil_from_days(days, &y, &mo, &d);
	sb_addf(c->sb, "\"%04" PRId64 "-%02u-%02uT%02u:%02u:%02u", y, mo, d,
	        (unsigned)(secs / 3600), (unsigned)(secs / 60 % 60), (unsigned)(secs % 60));
	add_nanos(c->sb, (uint32_t)ns);
	sb_adds(c->sb, "Z\"");
	return 0;
}

/* Duration: "-1.500s"; seconds and nanos must agree in sign. */
static int write_duration(struct ctx *c, const Google__Protobuf__Duration *t)
{
	const int64_t lim = 315576000000LL;
	int64_t s = t ? t->seconds : 0;
	int32_t ns = t ? t->nanos : 0;
	if (s < -lim || s > lim || ns < -999999999 || ns > 999999999 || (s > 0 && ns < 0) ||
	    (s < 0 && ns > 0))
		return LH_EINVAL;
	bool neg = s < 0 || ns < 0;
	sb_addf(c->sb, "\"%s%" PRIu64, neg ? "-" : "", neg ? (uint64_t)-s : (uint64_t)s);
	add_nanos(c->sb, (uint32_t)(ns < 0 ? -ns : ns));
	sb_adds(c->sb, "s\"");
	return 0;
}

static int write_value_wkt(struct ctx *c, const Google__Protobuf__Value *v);

/* Struct: a plain JSON object; a field's path is <struct>.fields.<key>. */
static int write_struct(struct ctx *c, const Google__Protobuf__Struct *st)
{
	size_t n = st ? st->n_fields : 0;
	add_ch(c->sb, '{');
	for (size_t i = 0, out = 0; i < n; i++) {
		const Google__Protobuf__Struct__FieldsEntry *e = st->fields[i];
		if (!e)
			continue;
		const char *k = e->key ? e->key : "";
		size_t kn = strlen(k);
		bool plain = plain_ascii(k, kn);
		if (!plain && !utf8_valid(k, kn))
			return LH_EUTF8;
		if (out++ > 0)
			add_ch(c->sb, ',');
		add_quoted(c->sb, k, kn, plain);
		add_ch(c->sb, ':');
		size_t old = c->plen;
		if (old)
			path_add(c, ".", 1);
		path_add(c, "fields.", 7);
		path_add(c, k, kn);
		int rc = write_value_wkt(c, e->value);
		if (rc)
			return rc;
		path_pop(c, old);
	}
	add_ch(c->sb, '}');
	return 0;
}

/* ListValue: a plain JSON array; an element's path is <list>[i]. */
static int write_list(struct ctx *c, const Google__Protobuf__ListValue *l)
{
	size_t n = l ? l->n_values : 0;
	add_ch(c->sb, '[');
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			add_ch(c->sb, ',');
		size_t old = path_push_index(c, i);
		int rc = write_value_wkt(c, l->values[i]);
		if (rc)
			return rc;
		path_pop(c, old);
	}
	add_ch(c->sb, ']');
	return 0;
}

/* Value: whichever kind is set, as plain JSON; no kind is null. A NaN or
 * infinite number has no JSON form here (it is not a string), so LH_EINVAL. */
static int write_value_wkt(struct ctx *c, const Google__Protobuf__Value *v)
{
	int rc = 0;
	if (++c->depth > PBJSON_MAX_DEPTH)
		return LH_EINVAL;
	switch (v ? v->kind_case : GOOGLE__PROTOBUF__VALUE__KIND__NOT_SET) {
	case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
		if (!isfinite(v->number_value))
			return LH_EINVAL;
		add_double(c->sb, v->number_value);
		break;
	case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE: rc = add_string(c, v->string_value); break;
	case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
		sb_adds(c->sb, v->bool_value ? "true" : "false");
		break;
	case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
		rc = write_struct(c, v->struct_value);
		break;
	case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: rc = write_list(c, v->list_value); break;
	default: /* NULL_VALUE, NOT_SET, or a kind this version does not know */
		sb_adds(c->sb, "null");
		break;
	}
	c->depth--;
	return rc;
}

/* FieldMask: the paths in lowerCamelCase, joined with commas. */
static int write_field_mask(struct ctx *c, const Google__Protobuf__FieldMask *fm)
{
	size_t n = fm ? fm->n_paths : 0;
	struct strbuf *sb = c->sb;
	add_ch(sb, '"');
	for (size_t i = 0; i < n; i++) {
		const char *p = fm->paths[i] ? fm->paths[i] : "";
		size_t len = strlen(p);
		if (!utf8_valid(p, len)) {
			path_push(c, "%spaths[%zu]", c->plen ? "." : "", i);
			return LH_EUTF8;
		}
		if (i > 0)
			add_ch(sb, ',');
		/* Reuse the quoted writer, then drop its quotes. */
		size_t at = sb->len;
		add_camel_str(sb, p, len);
		if (sb->oom)
			return LH_ENOMEM;
		memmove(sb->buf + at, sb->buf + at + 1, sb->len - at - 2);
		sb->len -= 2;
		sb->buf[sb->len] = '\0';
	}
	add_ch(sb, '"');
	return 0;
}

/* Writes m if d is a well-known type with a special JSON form; returns 1
 * when d is not one (the caller writes it as a plain message). */
static int write_wkt(struct ctx *c, const ProtobufCMessageDescriptor *d, const ProtobufCMessage *m)
{
	static const char pfx[] = "google.protobuf.";
	if (strncmp(d->name, pfx, sizeof(pfx) - 1) != 0)
		return 1;
	const char *n = d->name + sizeof(pfx) - 1;
	if (strcmp(n, "Timestamp") == 0)
		return write_timestamp(c, (const void *)m);
	if (strcmp(n, "Duration") == 0)
		return write_duration(c, (const void *)m);
	if (strcmp(n, "Struct") == 0)
		return write_struct(c, (const void *)m);
	if (strcmp(n, "ListValue") == 0)
		return write_list(c, (const void *)m);
	if (strcmp(n, "Value") == 0) {
		/* write_value_wkt counts its own depth level. */
		c->depth--;
		int rc = write_value_wkt(c, (const void *)m);
		c->depth++;
		return rc;
	}
	if (strcmp(n, "FieldMask") == 0)
		return write_field_mask(c, (const void *)m);
	if (strcmp(n, "Empty") == 0) {
		sb_adds(c->sb, "{}");
		return 0;
	}
	size_t nl = strlen(n);
	if (nl > 5 && strcmp(n + nl - 5, "Value") == 0 && d->n_fields == 1 &&
	    strcmp(d->fields[0].name, "value") == 0) {
		/* The wrappers (DoubleValue … BytesValue): their one field's value. */
		if (!m) {
			/* An absent wrapper in a map value: the wrapped default. */
			static const uint64_t zero[2];
			return write_value(c, &d->fields[0], zero);
		}
		return write_value(c, &d->fields[0], (const char *)m + d->fields[0].offset);
	}
	return 1;
}

/* ---------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------- */

/* Whether singular field f of the message at base is written: message
 * fields and members of oneofs and of proto2/proto3 `optional` only when set;
 * everything else always (defaults included). */
static bool field_present(const ProtobufCFieldDescriptor *f, const char *base)
{
	const void *member = base + f->offset;
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
			return false;
	} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL) {
		if (f->type == PROTOBUF_C_TYPE_STRING) {
			const void *s = *(const void *const *)member;
			return s && s != f->default_value;
		}
		if (f->type != PROTOBUF_C_TYPE_MESSAGE &&
		    !*(const protobuf_c_boolean *)(base + f->quantifier_offset))
			return false;
	}
	if (f->type == PROTOBUF_C_TYPE_MESSAGE)
		return *(const void *const *)member != NULL;
	return true;
}

/* Writes the fields of the (non-WKT) message at base as a JSON object. */
static int write_fields(struct ctx *c, const ProtobufCMessageDescriptor *d, const char *base)
{
	const struct keytab *kt = keytab_get(d);
	bool first = true;
	add_ch(c->sb, '{');
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		bool rep = f->label == PROTOBUF_C_LABEL_REPEATED;
		if (!rep && !field_present(f, base))
			continue;
		if (!first)
			add_ch(c->sb, ',');
		first = false;
		size_t old;
		if (kt) {
			add_raw(c->sb, kt->f[i].key, kt->f[i].key_len);
			old = path_push_camel(c, kt->f[i].camel, kt->f[i].camel_len);
		} else {
			add_camel_str(c->sb, f->name, strlen(f->name));
			add_ch(c->sb, ':');
			old = path_push_field(c, f->name);
		}
		int rc = rep ? write_repeated(c, d, f, base) : write_value(c, f, base + f->offset);
		if (rc)
			return rc;
		path_pop(c, old);
	}
	add_ch(c->sb, '}');
	return 0;
}

/* Writes the default instance of plain message type d (for an absent map
 * value). Kept out of line so the stack buffer is only used on this path. */
static __attribute__((noinline)) int write_default(struct ctx *c,
                                                   const ProtobufCMessageDescriptor *d)
{
	_Alignas(max_align_t) unsigned char tmp[512];
	if (d->sizeof_message > sizeof(tmp) || !d->message_init) {
		sb_adds(c->sb, "{}");
		return 0;
	}
	d->message_init((ProtobufCMessage *)(void *)tmp);
	return write_fields(c, d, (const char *)tmp);
}

/* Writes message m of type d (NULL: the type's default) at one more level of
 * nesting; LH_EINVAL past PBJSON_MAX_DEPTH. */
static int write_message(struct ctx *c, const ProtobufCMessageDescriptor *d,
                         const ProtobufCMessage *m)
{
	if (!d)
		return LH_EINVAL;
	if (++c->depth > PBJSON_MAX_DEPTH)
		return LH_EINVAL;
	int rc = write_wkt(c, d, m);
	if (rc == 1)
		rc = m ? write_fields(c, d, (const char *)m) : write_default(c, d);
	c->depth--;
	return rc;
}

int pbjson_write(struct strbuf *sb, const ProtobufCMessage *msg, char *errpath, size_t errlen)
{
	struct ctx c = {.sb = sb};
	if (errpath && errlen)
		errpath[0] = '\0';
	if (!msg)
		return LH_EINVAL;
	int rc = write_message(&c, msg->descriptor, msg);
	if (rc == 0 && sb->oom)
		rc = LH_ENOMEM;
	if (rc)
		copy_path(&c, errpath, errlen);
	return rc;
}

/* ---------------------------------------------------------------------------
 * Wire depth check
 * ------------------------------------------------------------------------- */

/* Reads a varint at *pos (below end) into *v; returns false when it is cut
 * short or longer than 10 bytes. */
static bool read_varint(const uint8_t *data, size_t end, size_t *pos, uint64_t *v)
{
	uint64_t r = 0;
	for (unsigned shift = 0; shift < 70 && *pos < end; shift += 7) {
		uint8_t b = data[(*pos)++];
		r |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*v = r;
			return true;
		}
	}
	return false;
}

/* Skips the value of a field with wire type wt at *pos (below end), except a
 * length-delimited one, which the caller handles. */
static bool skip_scalar(const uint8_t *data, size_t end, size_t *pos, unsigned wt)
{
	uint64_t v;
	size_t n = wt == 1 ? 8 : 4;
	switch (wt) {
	case 0: return read_varint(data, end, pos, &v);
	case 1:
	case 5:
		if (end - *pos < n)
			return false;
		*pos += n;
		return true;
	default: return false; /* groups and reserved types: protobuf-c rejects them */
	}
}

int pbjson_check_depth(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len)
{
	struct {
		const ProtobufCMessageDescriptor *d;
		size_t end;
	} st[PBJSON_WIRE_MAX_DEPTH];
	int top = 0;
	size_t pos = 0;
	st[0].d = d;
	st[0].end = len;
	for (;;) {
		while (pos == st[top].end) {
			if (top == 0)
				return 0;
			top--;
		}
		uint64_t tag, n;
		if (!read_varint(data, st[top].end, &pos, &tag) || (tag >> 3) == 0 ||
		    (tag >> 3) > UINT32_MAX)
			return LH_EINVAL;
		if ((tag & 7) != 2) {
			if (!skip_scalar(data, st[top].end, &pos, (unsigned)(tag & 7)))
				return LH_EINVAL;
			continue;
		}
		if (!read_varint(data, st[top].end, &pos, &n) || n > st[top].end - pos)
			return LH_EINVAL;
		const ProtobufCFieldDescriptor *f =
		        st[top].d ? protobuf_c_message_descriptor_get_field(st[top].d,
		                                                            (unsigned)(tag >> 3))
		                  : NULL;
		if (!f || f->type != PROTOBUF_C_TYPE_MESSAGE) {
			pos += n;
			continue;
		}
		if (top + 1 >= PBJSON_WIRE_MAX_DEPTH)
			return LH_EINVAL;
		top++;
		st[top].d = f->descriptor;
		st[top].end = pos + (size_t)n;
	}
}
