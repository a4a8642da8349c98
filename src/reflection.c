/*
 * reflection: an index of the embedded descriptor set and the answers to
 * reflection requests. See reflection.h.
 *
 * Each file's bytes are served exactly as protoc wrote them (slices of the
 * set), not re-encoded; the files are also decoded once with protobuf-c's
 * descriptor.proto code to learn their names, dependencies and symbols.
 */
#include "reflection.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "livehub.h"

/* gRPC status codes used in ErrorResponse. */
#define CODE_INVALID_ARGUMENT 3
#define CODE_NOT_FOUND        5
#define CODE_UNIMPLEMENTED    12

struct rfile {
	const uint8_t *bytes; /* a slice of the set */
	size_t len;
	Google__Protobuf__FileDescriptorProto *fdp; /* owned */
	int *deps;                                  /* owned; indices into files */
	size_t ndeps;
};

struct rsym {
	char *name; /* owned, full name without a leading dot */
	int file;
};

struct rext {
	const char *extendee; /* into fdp, leading dot skipped */
	int32_t number;
	int file;
};

struct reflection {
	struct rfile *files;
	size_t nfiles;
	struct rsym *syms;
	size_t nsyms, capsyms;
	struct rext *exts;
	size_t nexts, capexts;
	char **services; /* owned names, in file order */
	size_t nservices;
	bool oom;
};

/* ------------------------------------------------------------------------
 * Reading the set
 * ---------------------------------------------------------------------- */

/* Reads a varint at *p (< end); returns false when truncated. */
static bool varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	*v = 0;
	for (int shift = 0; shift < 64 && *p < end; shift += 7) {
		uint8_t b = *(*p)++;
		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return true;
	}
	return false;
}

/* Splits a FileDescriptorSet into its `repeated FileDescriptorProto file = 1`
 * entries, decoding each. Returns 0 or LH_EINVAL/LH_ENOMEM. */
static int split_set(struct reflection *r, const uint8_t *p, size_t len)
{
	const uint8_t *end = p + len;
	while (p < end) {
		uint64_t key, n;
		if (!varint(&p, end, &key) || key != ((1 << 3) | 2) || !varint(&p, end, &n) ||
		    n > (uint64_t)(end - p))
			return LH_EINVAL;
		struct rfile *f = realloc(r->files, (r->nfiles + 1) * sizeof *f);
		if (!f)
			return LH_ENOMEM;
		r->files = f;
		f = &r->files[r->nfiles];
		memset(f, 0, sizeof *f);
		f->bytes = p;
		f->len = (size_t)n;
		f->fdp = google__protobuf__file_descriptor_proto__unpack(NULL, f->len, f->bytes);
		if (!f->fdp || !f->fdp->name)
			return LH_EINVAL;
		r->nfiles++;
		p += n;
	}
	return 0;
}

static int find_file(const struct reflection *r, const char *name)
{
	for (size_t i = 0; i < r->nfiles; i++)
		if (strcmp(r->files[i].fdp->name, name) == 0)
			return (int)i;
	return -1;
}

/* Resolves each file's dependency names to indices (--include_imports
 * puts every dependency in the set). */
static int link_deps(struct reflection *r)
{
	for (size_t i = 0; i < r->nfiles; i++) {
		struct rfile *f = &r->files[i];
		f->deps = calloc(f->fdp->n_dependency + 1, sizeof *f->deps);
		if (!f->deps)
			return LH_ENOMEM;
		for (size_t k = 0; k < f->fdp->n_dependency; k++) {
			int d = find_file(r, f->fdp->dependency[k]);
			if (d < 0)
				return LH_EINVAL;
			f->deps[f->ndeps++] = d;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * Symbols
 * ---------------------------------------------------------------------- */

/* Adds prefix.name (or name when prefix is empty) for file; returns the
 * stored name (NULL when out of memory, which is remembered in r->oom). */
static const char *add_sym(struct reflection *r, const char *prefix, const char *name, int file)
{
	if (r->nsyms == r->capsyms) {
		size_t cap = r->capsyms ? r->capsyms * 2 : 256;
		struct rsym *s = realloc(r->syms, cap * sizeof *s);
		if (!s) {
			r->oom = true;
			return NULL;
		}
		r->syms = s;
		r->capsyms = cap;
	}
	size_t n = strlen(prefix) + strlen(name) + 2;
	char *full = malloc(n);
	if (!full) {
		r->oom = true;
		return NULL;
	}
	snprintf(full, n, "%s%s%s", prefix, prefix[0] ? "." : "", name);
	r->syms[r->nsyms++] = (struct rsym){full, file};
	return full;
}

static void add_ext(struct reflection *r, const Google__Protobuf__FieldDescriptorProto *fd,
                    int file)
{
	if (!fd->extendee)
		return;
	if (r->nexts == r->capexts) {
		size_t cap = r->capexts ? r->capexts * 2 : 16;
		struct rext *e = realloc(r->exts, cap * sizeof *e);
		if (!e) {
			r->oom = true;
			return;
		}
		r->exts = e;
		r->capexts = cap;
	}
	const char *t = fd->extendee[0] == '.' ? fd->extendee + 1 : fd->extendee;
	r->exts[r->nexts++] = (struct rext){t, fd->number, file};
}

static void add_enum(struct reflection *r, const char *prefix,
                     const Google__Protobuf__EnumDescriptorProto *e, int file)
{
	add_sym(r, prefix, e->name, file);
	/* Enum values live in the scope enclosing their enum (C++ rules). */
	for (size_t i = 0; i < e->n_value; i++)
		add_sym(r, prefix, e->value[i]->name, file);
}

/* Adds a message, its fields, nested messages, enums and extensions. */
static void add_message(struct reflection *r, const char *prefix,
                        const Google__Protobuf__DescriptorProto *m, int file)
{
	const char *full = add_sym(r, prefix, m->name, file);
	if (!full)
		return;
	for (size_t i = 0; i < m->n_field; i++)
		add_sym(r, full, m->field[i]->name, file);
	for (size_t i = 0; i < m->n_nested_type; i++)
		add_message(r, full, m->nested_type[i], file);
	for (size_t i = 0; i < m->n_enum_type; i++)
		add_enum(r, full, m->enum_type[i], file);
	for (size_t i = 0; i < m->n_extension; i++) {
		add_sym(r, full, m->extension[i]->name, file);
		add_ext(r, m->extension[i], file);
	}
}

static void add_service(struct reflection *r, const char *pkg,
                        const Google__Protobuf__ServiceDescriptorProto *s, int file)
{
	const char *full = add_sym(r, pkg, s->name, file);
	if (!full)
		return;
	char **sv = realloc(r->services, (r->nservices + 1) * sizeof *sv);
	char *copy = strdup(full);
	if (sv)
		r->services = sv;
	if (!sv || !copy) {
		free(copy);
		r->oom = true;
		return;
	}
	r->services[r->nservices++] = copy;
	for (size_t i = 0; i < s->n_method; i++)
		add_sym(r, full, s->method[i]->name, file);
}

static int cmp_sym(const void *a, const void *b)
{
	return strcmp(((const struct rsym *)a)->name, ((const struct rsym *)b)->name);
}

static int index_symbols(struct reflection *r)
{
	for (size_t i = 0; i < r->nfiles; i++) {
		const Google__Protobuf__FileDescriptorProto *f = r->files[i].fdp;
		const char *pkg = f->package ? f->package : "";
		for (size_t k = 0; k < f->n_message_type; k++)
			add_message(r, pkg, f->message_type[k], (int)i);
		for (size_t k = 0; k < f->n_enum_type; k++)
			add_enum(r, pkg, f->enum_type[k], (int)i);
		for (size_t k = 0; k < f->n_service; k++)
			add_service(r, pkg, f->service[k], (int)i);
		for (size_t k = 0; k < f->n_extension; k++) {
			add_sym(r, pkg, f->extension[k]->name, (int)i);
			add_ext(r, f->extension[k], (int)i);
		}
	}
	if (r->oom)
		return LH_ENOMEM;
	if (r->nsyms > 0)
		qsort(r->syms, r->nsyms, sizeof *r->syms, cmp_sym);
	return 0;
}

static int find_symbol(const struct reflection *r, const char *name)
{
	if (name[0] == '.')
		name++;
	if (r->nsyms == 0)
		return -1;
	struct rsym key = {(char *)name, 0};
	const struct rsym *s = bsearch(&key, r->syms, r->nsyms, sizeof *r->syms, cmp_sym);
	return s ? s->file : -1;
}

struct reflection *reflection_new(const uint8_t *set, size_t len)
{
	struct reflection *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	if (split_set(r, set, len) || link_deps(r) || index_symbols(r)) {
		reflection_free(r);
		return NULL;
	}
	return r;
}

void reflection_free(struct reflection *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->nfiles; i++) {
		google__protobuf__file_descriptor_proto__free_unpacked(r->files[i].fdp, NULL);
		free(r->files[i].deps);
	}
	for (size_t i = 0; i < r->nsyms; i++)
		free(r->syms[i].name);
	for (size_t i = 0; i < r->nservices; i++)
		free(r->services[i]);
	free(r->files);
	free(r->syms);
	free(r->exts);
	free(r->services);
	free(r);
}

size_t reflection_nservices(const struct reflection *r)
{
	return r->nservices;
}

const char *reflection_service(const struct reflection *r, size_t i)
{
	return i < r->nservices ? r->services[i] : NULL;
}

/* ------------------------------------------------------------------------
 * Answers
 * ---------------------------------------------------------------------- */

/* Appends file i and, depth first, everything it imports (each file once)
 * to out; seen has one flag per file. */
static void collect(const struct reflection *r, int i, bool *seen, ProtobufCBinaryData *out,
                    size_t *n)
{
	if (seen[i])
		return;
	seen[i] = true;
	out[(*n)++] = (ProtobufCBinaryData){r->files[i].len, (uint8_t *)r->files[i].bytes};
	for (size_t k = 0; k < r->files[i].ndeps; k++)
		collect(r, r->files[i].deps[k], seen, out, n);
}

/* Storage for one response; every pointer in msg points in here, into the
 * request, or into the index. */
struct answer {
	Grpc__Reflection__V1__ServerReflectionResponse msg;
	Grpc__Reflection__V1__FileDescriptorResponse files;
	Grpc__Reflection__V1__ListServiceResponse list;
	Grpc__Reflection__V1__ExtensionNumberResponse numbers;
	Grpc__Reflection__V1__ErrorResponse error;
	char errmsg[300];
	/* Heap arrays, freed after packing. */
	ProtobufCBinaryData *blobs;
	bool *seen;
	Grpc__Reflection__V1__ServiceResponse *svc;
	Grpc__Reflection__V1__ServiceResponse **svc_ptr;
	int32_t *nums;
};

static void set_error(struct answer *a, int code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Makes the response an ErrorResponse with code and a formatted message. */
static void set_error(struct answer *a, int code, const char *fmt, ...)
{
	va_list ap;
	grpc__reflection__v1__error_response__init(&a->error);
	va_start(ap, fmt);
	vsnprintf(a->errmsg, sizeof a->errmsg, fmt, ap);
	va_end(ap);
	a->error.error_code = code;
	a->error.error_message = a->errmsg;
	a->msg.message_response_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
	a->msg.error_response = &a->error;
}

static int answer_file(const struct reflection *r, struct answer *a, int file)
{
	a->blobs = calloc(r->nfiles, sizeof *a->blobs);
	a->seen = calloc(r->nfiles, sizeof *a->seen);
	if (!a->blobs || !a->seen)
		return LH_ENOMEM;
	grpc__reflection__v1__file_descriptor_response__init(&a->files);
	collect(r, file, a->seen, a->blobs, &a->files.n_file_descriptor_proto);
	a->files.file_descriptor_proto = a->blobs;
	a->msg.message_response_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
	a->msg.file_descriptor_response = &a->files;
	return 0;
}

static int answer_list(const struct reflection *r, struct answer *a)
{
	a->svc = calloc(r->nservices + 1, sizeof *a->svc);
	a->svc_ptr = calloc(r->nservices + 1, sizeof *a->svc_ptr);
	if (!a->svc || !a->svc_ptr)
		return LH_ENOMEM;
	grpc__reflection__v1__list_service_response__init(&a->list);
	for (size_t i = 0; i < r->nservices; i++) {
		grpc__reflection__v1__service_response__init(&a->svc[i]);
		a->svc[i].name = r->services[i];
		a->svc_ptr[i] = &a->svc[i];
	}
	a->list.n_service = r->nservices;
	a->list.service = a->svc_ptr;
	a->msg.message_response_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
	a->msg.list_services_response = &a->list;
	return 0;
}

static int answer_ext_numbers(const struct reflection *r, struct answer *a, const char *type)
{
	const char *t = type[0] == '.' ? type + 1 : type;
	if (find_symbol(r, t) < 0) {
		set_error(a, CODE_NOT_FOUND, "type %.200s is not known to this server", type);
		return 0;
	}
	a->nums = calloc(r->nexts + 1, sizeof *a->nums);
	if (!a->nums)
		return LH_ENOMEM;
	grpc__reflection__v1__extension_number_response__init(&a->numbers);
	a->numbers.base_type_name = (char *)t;
	for (size_t i = 0; i < r->nexts; i++)
		if (strcmp(r->exts[i].extendee, t) == 0)
			a->nums[a->numbers.n_extension_number++] = r->exts[i].number;
	a->numbers.extension_number = a->nums;
	a->msg.message_response_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
	a->msg.all_extension_numbers_response = &a->numbers;
	return 0;
}

static int answer_ext(const struct reflection *r, struct answer *a,
                      const Grpc__Reflection__V1__ExtensionRequest *e)
{
	const char *t = e->containing_type[0] == '.' ? e->containing_type + 1 : e->containing_type;
	for (size_t i = 0; i < r->nexts; i++)
		if (r->exts[i].number == e->extension_number && strcmp(r->exts[i].extendee, t) == 0)
			return answer_file(r, a, r->exts[i].file);
	set_error(a, CODE_NOT_FOUND, "no extension of %.200s with that number", t);
	return 0;
}

/* Fills a->msg for req. Returns 0 or LH_ENOMEM. */
static int dispatch(const struct reflection *r, struct answer *a,
                    const Grpc__Reflection__V1__ServerReflectionRequest *req)
{
	int f;
	switch (req->message_request_case) {
	case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
		return answer_list(r, a);
	case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
		f = find_file(r, req->file_by_filename);
		if (f < 0)
			set_error(a, CODE_NOT_FOUND, "file %.200s is not known to this server",
			          req->file_by_filename);
		return f < 0 ? 0 : answer_file(r, a, f);
	case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
		f = find_symbol(r, req->file_containing_symbol);
		if (f < 0)
			set_error(a, CODE_NOT_FOUND, "symbol %.200s is not known to this server",
			          req->file_containing_symbol);
		return f < 0 ? 0 : answer_file(r, a, f);
	case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
		return answer_ext(r, a, req->file_containing_extension);
	case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
		return answer_ext_numbers(r, a, req->all_extension_numbers_of_type);
	default:
		set_error(a, CODE_UNIMPLEMENTED, "%s",
		          "request kind not supported (expected list_services, file_by_filename, "
		          "file_containing_symbol, file_containing_extension or "
		          "all_extension_numbers_of_type)");
		return 0;
	}
}

int reflection_answer(const struct reflection *r, const uint8_t *req, size_t len, uint8_t **out,
                      size_t *out_len)
{
	Grpc__Reflection__V1__ServerReflectionRequest *rq =
	        grpc__reflection__v1__server_reflection_request__unpack(NULL, len, req);
	if (!rq)
		return LH_EINVAL;
	struct answer *a = calloc(1, sizeof *a);
	int rc = LH_ENOMEM;
	if (!a)
		goto out;
	grpc__reflection__v1__server_reflection_response__init(&a->msg);
	a->msg.valid_host = rq->host;
	a->msg.original_request = rq;
	rc = dispatch(r, a, rq);
	if (rc)
		goto out;
	*out_len = grpc__reflection__v1__server_reflection_response__get_packed_size(&a->msg);
	*out = malloc(*out_len ? *out_len : 1);
	if (!*out) {
		rc = LH_ENOMEM;
		goto out;
	}
	grpc__reflection__v1__server_reflection_response__pack(&a->msg, *out);
out:
	if (a) {
		free(a->blobs);
		free(a->seen);
		free(a->svc);
		free(a->svc_ptr);
		free(a->nums);
		free(a);
	}
	grpc__reflection__v1__server_reflection_request__free_unpacked(rq, NULL);
	return rc;
}
