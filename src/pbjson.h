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

#include "strbuf.h"

/* Appends the JSON form of msg to sb. Returns 0, LH_EUTF8 (a string field
 * holds invalid UTF-8), LH_EINVAL (a value JSON cannot hold, e.g. a NaN in a
 * Struct, or a Timestamp out of range) or LH_ENOMEM. On error, the dotted
 * path of the bad field in lowerCamelCase ("details.fields.name") is written
 * to errpath (NUL-terminated, truncated to errlen) when errpath is not NULL;
 * sb then holds partial output. */
int pbjson_write(struct strbuf *sb, const ProtobufCMessage *msg, char *errpath, size_t errlen);

/* Writes the lowerCamelCase JSON name of a .proto field name into out
 * ("job_id" -> "jobId"); returns its length. out must hold strlen(name)+1. */
size_t pbjson_camel(const char *name, char *out);

#endif
