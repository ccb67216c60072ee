# flowgate: `make demo` runs the main job on a lab, `make test` runs every test. Both set up a fresh
# Debian 12 machine first (scripts/setup.sh, idempotent; it also builds the tests' Kubernetes control plane).
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup build test lint demo bench image fuzz clean-labs fmt clippy release install uninstall

# Where `make install` puts things: PREFIX (default /usr/local), under DESTDIR when packaging.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man/man1
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
ZSH_COMPLETION_DIR ?= $(PREFIX)/share/zsh/site-functions
FISH_COMPLETION_DIR ?= $(PREFIX)/share/fish/vendor_completions.d
# Cargo's target directory (CARGO_TARGET_DIR when set).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
RELEASE := $(TARGET_DIR)/release

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

# The container image of deploy/daemonset.yaml, built with buildah from ./Dockerfile (about 15 minutes on 2
# cores; base images made locally from Debian's archive and rustup, cached in /var/cache/flowgate/images).
image:
	bash scripts/build-image.sh

# The binaries are run as the workspace build made them: `cargo run -p <one package>` resolves that package's
# features apart and rebuilt much of the tree each time (3.4 minutes of a 20-minute run).
bench: setup
	$(CARGO) build --workspace --exclude flowgate-ebpf --release --locked
	$(RELEASE)/flowgate-bench
	$(RELEASE)/flowgate-tui-bench
	$(RELEASE)/flowgate-bench-datapath
	$(RELEASE)/flowgate-bench-traffic
	$(RELEASE)/flowgate-bench-events
	$(RELEASE)/flowgate-bench-latency
	$(RELEASE)/flowgate-bench-propagation
	$(RELEASE)/flowgate-bench-footprint
	$(RELEASE)/flowgate-bench-report

# Fuzzing (cargo-fuzz, libFuzzer, on the pinned nightly): each target for FUZZ_SECONDS. New inputs grow
# fuzz/corpus/<target>/; an input that crashes a target is copied to fuzz/regressions/<target>/ (which
# `make test` replays) and the run fails. AYA_BUILD_SKIP: the targets never load the kernel programs.
FUZZ_SECONDS ?= 60
FUZZ_TOOLCHAIN := nightly-2026-05-20
FUZZ_TARGETS := socket_frames kernel_record policy_yaml topology verdict_line
fuzz: setup
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz@0.13.2 --locked
	@set -o pipefail; cd fuzz && for t in $(FUZZ_TARGETS); do \
	    mkdir -p corpus/$$t regressions/$$t; \
	    echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	    AYA_BUILD_SKIP=1 $(CARGO) +$(FUZZ_TOOLCHAIN) fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) \
	        -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tee /tmp/flowgate-fuzz-$$t.log \
	        | grep -E '^(#[0-9]+\s+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+==ERROR|SUMMARY)' \
	        || { echo "fuzz: $$t failed (see /tmp/flowgate-fuzz-$$t.log)"; fail=1; }; \
	    for crash in artifacts/$$t/crash-* artifacts/$$t/oom-* artifacts/$$t/timeout-*; do \
	        [ -e "$$crash" ] || continue; cp "$$crash" regressions/$$t/; echo "fuzz: $$t found $$crash (kept in regressions/$$t)"; fail=1; \
	    done; \
	done; exit $${fail:-0}

release: setup
	$(CARGO) build --release --locked -p flowgate-cli -p flowgate-agent

# Both binaries (release build), a manual page per command and subcommand (generated from the command-line
# definitions), and completion for bash, zsh and fish. `flowgate demo` then works from any directory.
install: release
	@set -e; man=$$(mktemp -d); trap 'rm -rf "$$man"' EXIT; \
	$(RELEASE)/flowgate man --out-dir "$$man" >/dev/null; \
	FLOWGATE_AGENT_MAN_DIR="$$man" $(RELEASE)/flowgate-agent >/dev/null; \
	install -d "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(MANDIR)" "$(DESTDIR)$(BASH_COMPLETION_DIR)" \
	    "$(DESTDIR)$(ZSH_COMPLETION_DIR)" "$(DESTDIR)$(FISH_COMPLETION_DIR)"; \
	install -m 0755 $(RELEASE)/flowgate $(RELEASE)/flowgate-agent "$(DESTDIR)$(BINDIR)/"; \
	install -m 0644 "$$man"/*.1 "$(DESTDIR)$(MANDIR)/"; \
	$(RELEASE)/flowgate completion bash > "$(DESTDIR)$(BASH_COMPLETION_DIR)/flowgate"; \
	$(RELEASE)/flowgate completion zsh > "$(DESTDIR)$(ZSH_COMPLETION_DIR)/_flowgate"; \
	$(RELEASE)/flowgate completion fish > "$(DESTDIR)$(FISH_COMPLETION_DIR)/flowgate.fish"; \
	echo "installed flowgate and flowgate-agent in $(DESTDIR)$(BINDIR), $$(ls "$$man" | wc -l) manual pages in \
	$(DESTDIR)$(MANDIR), completion for bash, zsh and fish"

uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/flowgate" "$(DESTDIR)$(BINDIR)/flowgate-agent"
	rm -f "$(DESTDIR)$(MANDIR)"/flowgate.1 "$(DESTDIR)$(MANDIR)"/flowgate-*.1
	rm -f "$(DESTDIR)$(BASH_COMPLETION_DIR)/flowgate" "$(DESTDIR)$(ZSH_COMPLETION_DIR)/_flowgate" \
	    "$(DESTDIR)$(FISH_COMPLETION_DIR)/flowgate.fish"

# Removes every lab left on this machine (after an interrupted run).
clean-labs:
	@for lab in $$(./target/debug/flowgate lab list --names 2>/dev/null); do ./target/debug/flowgate lab down $$lab; done

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --exclude flowgate-ebpf --all-targets -- -D warnings
