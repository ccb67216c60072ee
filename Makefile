# flowgate: `make demo` runs the main job on a lab, `make test` runs every test. Both set up a fresh
# Debian 12 machine first (scripts/setup.sh, idempotent).
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup build test lint demo bench clean-labs fmt clippy

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --exclude flowgate-ebpf --locked

# Style is enforced, not hoped for: one format (rustfmt.toml) and no clippy warning, checked by every run.
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --exclude flowgate-ebpf --all-targets --locked -- -D warnings

test: build lint
	$(CARGO) test --workspace --exclude flowgate-ebpf --locked --no-fail-fast

demo: build
	./target/debug/flowgate demo

bench: setup
	$(CARGO) build --workspace --exclude flowgate-ebpf --release --locked
	$(CARGO) run --release --locked -p flowgate-agent --bin flowgate-bench
	$(CARGO) run --release --locked -p flowgate-cli --bin flowgate-tui-bench

# Removes every lab left on this machine (after an interrupted run).
clean-labs:
	@for lab in $$(./target/debug/flowgate lab list --names 2>/dev/null); do ./target/debug/flowgate lab down $$lab; done

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --exclude flowgate-ebpf --all-targets -- -D warnings
