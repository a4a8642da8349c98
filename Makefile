# livehub's front door. `make run` and `make test` are all a new user needs;
# both install what is missing first (scripts/deps.sh, Debian packages).
BUILD      ?= build
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=

.PHONY: all deps build run test fuzz format bench clean

all: build

deps:
	@bash scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

# Runs the hub on embedded defaults (extra flags: make run ARGS="--ws-port 9000").
run: build
	./$(BUILD)/livehub $(ARGS)

# Builds (normal and ASan+UBSan), runs unit, integration and fuzz smoke tests.
test: deps
	@bash tests/run.sh

# Runs each libFuzzer target for FUZZ_SECONDS (default 300).
fuzz: deps
	@bash tests/fuzz.sh $${FUZZ_SECONDS:-300}

# Rewrites the C sources with .clang-format.
format:
	clang-format -i src/*.c src/*.h include/*.h tests/unit/*.c tests/support/*.h fuzz/*.c

bench: build
	bash bench/run.sh --short

clean:
	rm -rf build build-asan build-fuzz build-tsan
