# Two entry points do everything on a fresh machine: `make demo` and `make test`.
# Each sets up its own virtualenv (pinned torch from PyPI) and builds with LIBTORCH_USE_PYTORCH=1.
CACHE ?= $(HOME)/.cache/stylebridge
export STYLEBRIDGE_VENV ?= $(CACHE)/venv
export CARGO_TARGET_DIR ?= $(CACHE)/target
export LIBTORCH_USE_PYTORCH := 1
export PYTHON_SYS_EXECUTABLE := $(STYLEBRIDGE_VENV)/bin/python
export PATH := $(STYLEBRIDGE_VENV)/bin:$(PATH)
BIN := $(CARGO_TARGET_DIR)/debug/stylebridge
DEMO_OUT ?= runs/demo

.PHONY: setup build test demo bench cargo
setup:
	@bash scripts/setup.sh

build: setup
	cargo build --bins

test: build
	cargo test --no-fail-fast

demo: build
	bash scripts/demo.sh $(BIN) $(DEMO_OUT)

bench: build
	cargo bench

# Run any cargo command in the project's environment, e.g. `make cargo ARGS="test --lib data::midi"`.
cargo: setup
	cargo $(ARGS)
