/*
 * pbjson: a protobuf-c message as JSON text, following the proto3 JSON
 * mapping, generic over protobuf-c descriptors.
 *
 * - field names in lowerCamelCase (derived from the .proto names, since
 *   protobuf-c descriptors do not carry json_name);
 * - int64, uint64, sint64, fixed64, sfixed64 as JSON strings; other ints as
 *   numbers; float/double as numbers, "NaN"/"Infinity"/"-Infinity" as strings;
 * - enums by name (the number when the value has no name); bytes as base64;
 * - nested messages, repeated fields as arrays, maps as objects;
 * - well-known types: Timestamp as RFC 3339 text, Duration as "1.5s",
 *   Struct/Value/ListValue/NullValue as plain JSON, wrappers as their value,
 *   Empty as {}, FieldMask as "a.b,c";
 * - scalar, enum, string, bytes, repeated and map fields are always written,
 *   defaults included (the mapping's "emit defaults" option: a frontend sees
 *   `"progress": 0` rather than no field); unset message fields, unset oneof
 *   members and unset proto3 `optional` fields are left out.
 *
 * Strings are checked for UTF-8: bad UTF-8 is an error naming the field.
 */
#ifndef LH_PBJSON_H
#define LH_PBJSON_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "strbuf.h"

/* Appends the JSON form of msg to sb. Returns 0, LH_EUTF8 (a string field
 * holds invalid UTF-8), LH_EINVAL (a value JSON cannot hold, e.g. a NaN in a
 * Struct, a Timestamp out of range, or messages and Values nested more than
 * 64 deep) or LH_ENOMEM. On error, the dotted
 * path of the bad field in lowerCamelCase ("details.fields.name") is written
 * to errpath (NUL-terminated, truncated to errlen) when errpath is not NULL;
 * sb then holds partial output. */
int pbjson_write(struct strbuf *sb, const ProtobufCMessage *msg, char *errpath, size_t errlen);

/* Writes the lowerCamelCase JSON name of a .proto field name into out
 * ("job_id" -> "jobId"); returns its length. out must hold strlen(name)+1. */
size_t pbjson_camel(const char *name, char *out);

/* The deepest message nesting pbjson_check_depth accepts: protobuf's own
 * default recursion limit (C++, Java, Python). Map entries and the levels of a
 * Struct (Struct, its entry, Value) each count as one. */
#define PBJSON_WIRE_MAX_DEPTH 100
/* Serialized messages of at most this many bytes cannot nest deeper than
 * PBJSON_WIRE_MAX_DEPTH (every level below the top takes at least a tag byte
 * and a length byte), so their depth need not be checked. */
#define PBJSON_WIRE_SHALLOW_BYTES (2 * (PBJSON_WIRE_MAX_DEPTH - 1) - 1)

/* Checks, without recursion, that the serialized message data (len bytes) of
 * type d nests messages at most PBJSON_WIRE_MAX_DEPTH deep (the top message is
 * depth 1). Call it before protobuf_c_message_unpack on untrusted input:
 * protobuf-c 1.4.1 recurses once per level with no limit of its own, and a
 * 56 KB JobProgress whose details Struct nests 4,000 levels overflows an
 * 8 MB stack. Returns 0, or LH_EINVAL when too deep or when the
 * framing is broken (which unpack would reject too). */
int pbjson_check_depth(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len);

#endif
