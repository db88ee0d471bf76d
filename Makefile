# kvmscope — build, test, demo. Every target installs what it needs on a fresh Debian machine.
SHELL := /bin/bash
SWIFT ?= swift
CONFIG ?= release
BIN = .build/$(CONFIG)/kvmscope
DEB_PACKAGES = libtracefs-dev libtraceevent-dev libtracecmd-dev trace-cmd libzstd-dev zlib1g-dev \
               libncurses-dev pkg-config tmux prometheus linux-perf chromium
STAMP = .build/.deps-installed

.PHONY: all deps build test demo bench clean tracefs depcheck soak

all: build

# Debian packages (apt-get update once), and tracefs mounted.
$(STAMP):
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p .build && touch $@

deps: $(STAMP) tracefs

tracefs:
	@[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing

build: deps
	$(SWIFT) build -c $(CONFIG) --product kvmscope

# The live view of every VM on this host; where none runs, the built-in demo guest is started.
demo: build
	$(BIN) live --demo

# Tests run against the same release build, the binary included: one compilation, since no test uses
# @testable imports. The run takes a minute or two here; past TEST_TIMEOUT seconds it is stopped and the
# tests that never finished are named, so a hang fails fast with its culprit instead of eating CI's time.
TEST_TIMEOUT ?= 1200
test: build
	@set -o pipefail; \
	KVMSCOPE_BIN=$(CURDIR)/$(BIN) SWIFT_BACKTRACE=enable=no timeout -k 30 $(TEST_TIMEOUT) \
		$(SWIFT) test -c $(CONFIG) --disable-testable-imports 2>&1 | tee .build/test.log; rc=$$?; \
	if [ $$rc -ne 0 ]; then \
		[ $$rc -eq 124 ] && echo "make test: stopped after $(TEST_TIMEOUT) s"; \
		awk '/^◇ Test .* started\.$$/ && !/^◇ Test (case|run) / { n = $$0; sub(/^◇ Test /, "", n); sub(/ started\.$$/, "", n); open[n]++ } \
		     /^(✔|✘) Test / { n = $$0; sub(/^(✔|✘) Test /, "", n); sub(/ (with [0-9]+ test cases? )?(passed|failed) after.*/, "", n); done[n]++ } \
		     END { for (n in open) if (!(n in done)) print "make test: never finished: " n }' .build/test.log; \
	fi; exit $$rc

bench: build
	$(MAKE) -C benchmarks

# Not in CI: SOAK_SECONDS of serve and the live view while storm guests come and go; RSS, descriptors, threads
# and CPU sampled every SOAK_INTERVAL seconds, printed as a markdown table (README: "Soak").
SOAK_SECONDS ?= 1800
SOAK_INTERVAL ?= 60
soak: build
	KVMSCOPE=$(BIN) SOAK_SECONDS=$(SOAK_SECONDS) SOAK_INTERVAL=$(SOAK_INTERVAL) contrib/soak/run.sh

# kvmscope's library products can be depended on by version (no unsafeFlags): builds a package that does.
depcheck: deps
	contrib/depcheck/run.sh

clean:
	rm -rf .build
