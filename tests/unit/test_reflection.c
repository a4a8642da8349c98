/* Unit tests of the reflection answers, against the descriptor set the
 * build embeds: services listed, files with their imports, symbols of every
 * kind, and the errors for what is unknown or unsupported. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "livehub.h"
#include "reflection.h"

typedef Grpc__Reflection__V1__ServerReflectionRequest Req;
typedef Grpc__Reflection__V1__ServerReflectionResponse Resp;

static struct reflection *refl;

static int setup(void **state)
{
	refl = reflection_new(lh_descriptor_set, lh_descriptor_set_len);
	return refl ? 0 : -1;
}

static int teardown(void **state)
{
	reflection_free(refl);
	return 0;
}

/* Packs req, answers it and returns the decoded response. */
static Resp *ask(Req *req)
{
	size_t len = grpc__reflection__v1__server_reflection_request__get_packed_size(req);
	uint8_t *buf = malloc(len + 1);
	grpc__reflection__v1__server_reflection_request__pack(req, buf);
	uint8_t *out = NULL;
	size_t out_len = 0;
	assert_int_equal(reflection_answer(refl, buf, len, &out, &out_len), 0);
	free(buf);
	Resp *resp = grpc__reflection__v1__server_reflection_response__unpack(NULL, out_len, out);
	free(out);
	assert_non_null(resp);
	assert_non_null(resp->original_request);
	return resp;
}

/* The names of the files in a FileDescriptorResponse, in order. */
static void file_names(const Resp *resp, char names[][64], size_t *n)
{
	assert_int_equal(
	        resp->message_response_case,
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
	const Grpc__Reflection__V1__FileDescriptorResponse *f = resp->file_descriptor_response;
	*n = f->n_file_descriptor_proto;
	for (size_t i = 0; i < *n; i++) {
		Google__Protobuf__FileDescriptorProto *fd =
		        google__protobuf__file_descriptor_proto__unpack(
		                NULL, f->file_descriptor_proto[i].len,
		                f->file_descriptor_proto[i].data);
		assert_non_null(fd);
		snprintf(names[i], 64, "%s", fd->name);
		google__protobuf__file_descriptor_proto__free_unpacked(fd, NULL);
	}
}

static bool has(char names[][64], size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(names[i], name) == 0)
			return true;
	return false;
}

static void test_list_services(void **state)
{
	Req req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
	req.message_request_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
	req.list_services = "";
	req.host = "localhost";
	Resp *resp = ask(&req);
	assert_int_equal(
	        resp->message_response_case,
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
	const char *want[] = {"livehub.v1.HubService", "grpc.health.v1.Health",
	                      "grpc.reflection.v1.ServerReflection",
	                      "grpc.reflection.v1alpha.ServerReflection"};
	assert_int_equal(resp->list_services_response->n_service, 4);
	for (size_t w = 0; w < 4; w++) {
		bool found = false;
		for (size_t i = 0; i < 4; i++)
			found |= strcmp(resp->list_services_response->service[i]->name, want[w]) ==
			         0;
		assert_true(found);
	}
	assert_string_equal(resp->valid_host, "localhost");
	grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
}

static void test_file_by_name_with_imports(void **state)
{
	Req req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
	req.message_request_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
	req.file_by_filename = "livehub/v1/hub.proto";
	Resp *resp = ask(&req);
	char names[32][64];
	size_t n;
	file_names(resp, names, &n);
	assert_string_equal(names[0], "livehub/v1/hub.proto");
	assert_true(has(names, n, "livehub/v1/events.proto"));
	assert_true(has(names, n, "google/protobuf/struct.proto"));
	assert_true(has(names, n, "google/protobuf/timestamp.proto"));
	/* Each file once. */
	for (size_t i = 0; i < n; i++)
		for (size_t k = i + 1; k < n; k++)
			assert_string_not_equal(names[i], names[k]);
	grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
}

/* Every kind of symbol leads to its file. */
static void test_symbols(void **state)
{
	static const struct {
		const char *symbol, *file;
	} cases[] = {
	        {"livehub.v1.HubService", "livehub/v1/hub.proto"},
	        {"livehub.v1.HubService.GetStats", "livehub/v1/hub.proto"},
	        {".livehub.v1.GetStatsResponse", "livehub/v1/hub.proto"},
	        {"livehub.v1.GetStatsResponse.top_tenants", "livehub/v1/hub.proto"},
	        {"google.protobuf.Struct", "google/protobuf/struct.proto"},
	        {"google.protobuf.NullValue", "google/protobuf/struct.proto"},
	        {"grpc.health.v1.HealthCheckResponse.ServingStatus", "grpc/health/v1/health.proto"},
	        {"grpc.health.v1.Health.Watch", "grpc/health/v1/health.proto"},
	        {"grpc.reflection.v1alpha.ServerReflection",
	         "grpc/reflection/v1alpha/reflection.proto"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		Req req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
		req.message_request_case =
		        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
		req.file_containing_symbol = (char *)cases[i].symbol;
		Resp *resp = ask(&req);
		char names[32][64];
		size_t n;
		file_names(resp, names, &n);
		assert_string_equal(names[0], cases[i].file);
		grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
	}
}

static void expect_error(Req *req, int code)
{
	Resp *resp = ask(req);
	assert_int_equal(
	        resp->message_response_case,
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
	assert_int_equal(resp->error_response->error_code, code);
	assert_true(strlen(resp->error_response->error_message) > 0);
	grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
}

static void test_errors(void **state)
{
	Req req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
	req.message_request_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
	req.file_containing_symbol = "livehub.v1.Nope";
	expect_error(&req, 5);
	req.message_request_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
	req.file_by_filename = "nope.proto";
	expect_error(&req, 5);
	Grpc__Reflection__V1__ExtensionRequest ext = GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
	ext.containing_type = "livehub.v1.GetStatsRequest";
	ext.extension_number = 100;
	req.message_request_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION;
	req.file_containing_extension = &ext;
	expect_error(&req, 5);
	Req empty = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
	expect_error(&empty, 12);
	req.message_request_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE;
	req.all_extension_numbers_of_type = "no.Such";
	expect_error(&req, 5);

	/* Not a request at all: a truncated varint. */
	uint8_t junk[] = {0x1a, 0xff};
	uint8_t *out = NULL;
	size_t len;
	assert_int_equal(reflection_answer(refl, junk, sizeof junk, &out, &len), LH_EINVAL);
	assert_null(out);
}

static void test_extension_numbers(void **state)
{
	Req req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
	req.message_request_case =
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE;
	req.all_extension_numbers_of_type = "livehub.v1.GetStatsResponse";
	Resp *resp = ask(&req);
	assert_int_equal(
	        resp->message_response_case,
	        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE);
	assert_string_equal(resp->all_extension_numbers_response->base_type_name,
	                    "livehub.v1.GetStatsResponse");
	assert_int_equal(resp->all_extension_numbers_response->n_extension_number, 0);
	grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
}

static void test_malformed_set(void **state)
{
	uint8_t bad[] = {0x0a, 0x05, 0x01};
	assert_null(reflection_new(bad, sizeof bad));
	struct reflection *empty = reflection_new(bad, 0);
	assert_non_null(empty);
	assert_int_equal(reflection_nservices(empty), 0);
	reflection_free(empty);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_list_services),
	        cmocka_unit_test(test_file_by_name_with_imports),
	        cmocka_unit_test(test_symbols),
	        cmocka_unit_test(test_errors),
	        cmocka_unit_test(test_extension_numbers),
	        cmocka_unit_test(test_malformed_set),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
