# Shared by the benchmark's Makefiles (bench/loadgen, bench/ingress): the
# C code protoc-c generates from proto/ and the well-known types, and the
# gRPC client helpers of bench/common. The including Makefile sets BUILD,
# SRCS (its own sources) and TARGET, and may add to PKGS.
COMMON := ../common
PROTO_DIR := ../../proto
WKT_DIR := /usr/include
GEN := $(BUILD)/gen
PKGS += grpc libprotobuf-c
CFLAGS ?= -O2 -g
CFLAGS += -std=gnu11 -Wall -Wextra -Wshadow -Wno-unused-parameter -I. -I$(COMMON) -I$(GEN) \
	$(shell pkg-config --cflags $(PKGS))
LDLIBS := -pthread -Wl,--as-needed $(shell pkg-config --libs $(PKGS))

PROTOS := livehub/v1/hub.proto livehub/v1/events.proto
WKTS := google/protobuf/struct.proto google/protobuf/timestamp.proto
GEN_C := $(PROTOS:%.proto=$(GEN)/%.pb-c.c) $(WKTS:%.proto=$(GEN)/%.pb-c.c)
OBJS := $(SRCS:%.c=$(BUILD)/%.o) $(BUILD)/common/grpcc.o $(GEN_C:%.c=%.o)

$(TARGET): $(OBJS)
	@echo "  LINK $@"
	@$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(GEN)/livehub/%.pb-c.c $(GEN)/livehub/%.pb-c.h: $(PROTO_DIR)/livehub/%.proto
	@mkdir -p $(GEN)
	protoc-c -I$(PROTO_DIR) -I$(WKT_DIR) --c_out=$(GEN) $<

$(GEN)/google/%.pb-c.c $(GEN)/google/%.pb-c.h: $(WKT_DIR)/google/%.proto
	@mkdir -p $(GEN)
	protoc-c -I$(WKT_DIR) --c_out=$(GEN) $<

$(BUILD)/common/%.o: $(COMMON)/%.c $(COMMON)/grpcc.h
	@mkdir -p $(BUILD)/common
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.c $(HDRS) $(COMMON)/grpcc.h $(GEN_C)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -c -o $@ $<

$(GEN)/%.o: $(GEN)/%.c
	$(CC) $(CFLAGS) -w -c -o $@ $<

clean:
	rm -rf $(BUILD)

.PHONY: clean
.SECONDARY:
