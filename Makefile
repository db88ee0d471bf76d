# kvmscope — build, test, demo. Every target installs what it needs on a fresh Debian machine.
SHELL := /bin/bash
SWIFT ?= swift
CONFIG ?= release
BIN = .build/$(CONFIG)/kvmscope
DEB_PACKAGES = libtracefs-dev libtraceevent-dev libtracecmd-dev trace-cmd libzstd-dev zlib1g-dev \
               libncurses-dev pkg-config tmux prometheus linux-perf chromium qemu-system-x86 \
               libvirt-daemon-system libvirt-dev prometheus-libvirt-exporter linux-image-amd64 busybox-static cpio
STAMP = .build/.deps-installed

.PHONY: all deps build test demo bench clean tracefs depcheck soak soak-churn fuzz fuzz-build fuzz-ci sanitize sanitize-thread sanitize-address

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

# Not in CI: serve while CHURN_GUESTS short-lived 8-vCPU storm guests start and stop one after the other (RSS,
# scrape time, occupancy and exact counts every 100 guests), then report of trace.dat files with 5,000 and
# 50,000 vCPU threads (README: "Soak").
CHURN_GUESTS ?= 1000
soak-churn: build
	KVMSCOPE=$(BIN) CHURN_GUESTS=$(CHURN_GUESTS) contrib/soak/churn.sh

# kvmscope's library products can be depended on by version (no unsafeFlags): builds a package that does.
depcheck: deps
	contrib/depcheck/run.sh

# ---------------------------------------------------------------- fuzzing (fuzz/) and sanitizers
# libFuzzer targets for every reader of untrusted bytes: the Swift ones (fuzz/Package.swift, every module
# instrumented: -sanitize=fuzzer,address) and the C sub-buffer decoder (fuzz/c, clang with
# -fsanitize=fuzzer,address,undefined). Seeds come from $(CORPUS) (read at run time, never copied into the
# repo), Tests/Fixtures/formats and fuzz/seeds; what each run learns stays in .build/fuzz/corpus. A crash
# fails the run and names the input (.build/fuzz/artifacts/TARGET/): minimise it, put it under
# Tests/Fixtures/fuzz/ with a test (Tests/kvmscopeTests/FuzzRegressionTests.swift), fix it.
FUZZ_SECONDS ?= 180
FUZZ_TARGETS = decode-subbuf formats trace-dat text-trace storm-rule http
FUZZ_TIMEOUT ?= 20
FUZZ_SEED ?= 0
FUZZ_RUNS ?=
CORPUS ?= ../shared/corpus
CLANG ?= clang
FUZZ = .build/fuzz
FUZZ_SWIFT = $(SWIFT) build -c release --package-path fuzz --build-path $(CURDIR)/.build/fuzz-swift \
	-Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld -Xcc -fsanitize=fuzzer-no-link,address
FUZZ_BIN = .build/fuzz-swift/release

fuzz-build: deps
	$(FUZZ_SWIFT)
	@mkdir -p $(FUZZ)/bin
	$(CLANG) -g -O1 -fuse-ld=lld -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		-ICShims/CKVMScope/include -I/usr/include/traceevent -DFORMATS_DIR='"$(CURDIR)/Tests/Fixtures/formats/6.18-x86"' \
		fuzz/c/decode_subbuf.c CShims/CKVMScope/decoder.c CShims/CKVMScope/formats.c -ltraceevent \
		-o $(FUZZ)/bin/fuzz-decode-subbuf
	$(CLANG) -g -O1 -fuse-ld=lld -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		-ICShims/CKVMScope/include -I/usr/include/traceevent \
		fuzz/c/formats.c CShims/CKVMScope/formats.c -ltraceevent -o $(FUZZ)/bin/fuzz-formats
	@for t in trace-dat text-trace storm-rule http; do ln -sf $(CURDIR)/$(FUZZ_BIN)/fuzz-$$t $(FUZZ)/bin/fuzz-$$t; done

# Seeds: synthetic trace.dat v6 of every kernel in Tests/Fixtures/formats, converted by trace-cmd to v7
# (none, zstd; Debian's trace-cmd has no zlib: the corpus' v7 zlib file is that seed); the corpus' text
# traces (the large ones cut to their first 8 KiB); synthetic 6.18 sub-buffers; fuzz/seeds for rules and requests.
fuzz-seeds: fuzz-build
	@rm -rf $(FUZZ)/seeds && mkdir -p $(FUZZ)/seeds/trace-dat $(FUZZ)/seeds/text-trace $(FUZZ)/seeds/decode-subbuf $(FUZZ)/seeds/formats
	@for f in Tests/Fixtures/formats/*/*.format; do cp $$f $(FUZZ)/seeds/formats/$$(basename $$(dirname $$f))-$$(basename $$f); done
	@ASAN_OPTIONS=detect_leaks=0 KVMSCOPE_FUZZ_WRITE_SEEDS=$(CURDIR)/$(FUZZ)/seeds/trace-dat KVMSCOPE_FUZZ_SUBBUF_SEEDS=$(CURDIR)/$(FUZZ)/seeds/decode-subbuf \
		$(FUZZ)/bin/fuzz-trace-dat
	@for c in none zstd; do trace-cmd convert -i $(FUZZ)/seeds/trace-dat/synthetic-6.18-x86-v6.dat \
		-o $(FUZZ)/seeds/trace-dat/synthetic-6.18-x86-v7-$$c.dat --file-version 7 --compression $$c >/dev/null; done
	@for f in $(CORPUS)/real/*.dat; do [ -e "$$f" ] && ln -sf $$(realpath $$f) $(FUZZ)/seeds/trace-dat/ || true; done
	@for f in $(CORPUS)/pasted/*.txt; do [ -e "$$f" ] && cp $$f $(FUZZ)/seeds/text-trace/ || true; done
	@for f in $(CORPUS)/real/*.txt; do [ -e "$$f" ] && head -c 8192 $$f > $(FUZZ)/seeds/text-trace/head-$$(basename $$f) || true; done
	@ls $(FUZZ)/seeds/* | grep -c . | xargs echo "fuzz seeds:"

# Each target for FUZZ_SECONDS (default 3 minutes each). Prints executions per target; fails on a finding.
# (trace-dat's log holds ASan reports of forked children: a format libtraceevent crashes on is parsed in a child
# by design, and the file is refused with one line. The last stat line is the fuzzer's own.)
fuzz: fuzz-seeds
	@set -o pipefail; fail=0; for t in $(FUZZ_TARGETS); do \
		corpus=$(FUZZ)/corpus/$$t; [ -n "$(FUZZ_RUNS)" ] && corpus=$(FUZZ)/ci-corpus/$$t && rm -rf $$corpus; \
		mkdir -p $$corpus $(FUZZ)/artifacts/$$t; \
		seeds=""; for d in $(FUZZ)/seeds/$$t fuzz/seeds/$$t; do [ -d $$d ] && seeds="$$seeds $$d"; done; \
		case $$t in trace-dat) len=65536;; text-trace|formats) len=8192;; *) len=4096;; esac; \
		limit="-max_total_time=$(FUZZ_SECONDS)"; span="in $(FUZZ_SECONDS) s"; \
		if [ -n "$(FUZZ_RUNS)" ]; then case $$t in decode-subbuf|http) r=100000;; storm-rule) r=400000;; formats) r=6000;; *) r=1500;; esac; \
			limit="-runs=$$r"; span="(of $$r, seed $(FUZZ_SEED))"; fi; \
		SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0 KVMSCOPE_FUZZ_SOCKET_DIR=$(CURDIR)/$(FUZZ) timeout -k 10 $$(( $(FUZZ_SECONDS) + 120 )) \
			$(FUZZ)/bin/fuzz-$$t -seed=$(FUZZ_SEED) $$limit -timeout=$(FUZZ_TIMEOUT) -rss_limit_mb=4096 \
			-max_len=$$len -print_final_stats=1 -artifact_prefix=$(FUZZ)/artifacts/$$t/ \
			$$corpus $$seeds > $(FUZZ)/$$t.log 2>&1; rc=$$?; \
		runs=$$(grep -o 'stat::number_of_executed_units: *[0-9]*' $(FUZZ)/$$t.log | tail -1 | grep -o '[0-9]*$$'); \
		notes=$$(grep -ac '^fuzz: note:' $(FUZZ)/$$t.log); extra=""; [ "$$notes" -gt 0 ] && extra=", $$notes notes (see the log)"; \
		if [ $$rc -eq 0 ]; then echo "fuzz $$t: $$runs executions $$span, no finding$$extra"; \
		else fail=1; echo "fuzz $$t: FINDING (exit $$rc), see $(FUZZ)/$$t.log:"; \
			grep -E '^(fuzz:|==[0-9]+==ERROR|SUMMARY|artifact_prefix)|Swift runtime failure|Fatal error' $(FUZZ)/$$t.log | head -8; fi; \
	done; exit $$fail

# CI's pass: a fixed number of inputs per target (~20 s each here, 2 min in all) from a fixed seed and an
# empty corpus (as in a clean clone), so a fast and a slow machine try as many inputs. libFuzzer's schedule
# still varies from run to run: a finding is kept as its artifact (.build/fuzz/artifacts), which
# `.build/fuzz/bin/fuzz-TARGET ARTIFACT` replays, and goes into fuzz/seeds as a regression once fixed.
# Time-bounded runs (`make fuzz`, whose corpus grows from run to run) are where new findings are looked for.
# Per-input limit 60 s.
fuzz-ci:
	$(MAKE) fuzz FUZZ_RUNS=1 FUZZ_TIMEOUT=60 FUZZ_SEED=1

# ThreadSanitizer on the concurrent parts (aggregator shards, histograms and top-RIPs under several writers,
# the live session's reader threads, serve's handlers reading snapshots: the binary those tests start is the
# TSan build too); AddressSanitizer + UBSan on the tests that drive the C shim (decoder, both walks, formats,
# print tables, trace.dat reading and decompression, readers over pipes). Debug builds in their own folders.
TSAN_FILTER = AggregatorTests|PrefetchedSourceTests|LatencyHistogram|TopRIPs|SummaryMergeTests|ReaderLossTests|MarkerLiveTests|ServeLiveTests|LiveViewTests
ASAN_FILTER = SubbufferDecoder|NativeWalkTests|MarkerAliasTests|PrintFormatTablesTests|KernelReasonNamesTests|TraceDatReaderTests|TraceDatWriterTests|TraceDatBadFileTests|ReaderLossTests|PairingAcrossKernelsTests|SyntheticWorkloadTests
SANITIZE_TIMEOUT ?= 900
# swiftc has no UBSan on Linux: the C shims get -fsanitize=undefined (its handlers are in ASan's runtime).
ASAN_FLAGS = --sanitize=address -Xcc -fsanitize=undefined -Xcc -fno-sanitize-recover=undefined

sanitize: sanitize-address sanitize-thread

sanitize-thread: deps
	$(SWIFT) build --build-path .build/tsan --sanitize=thread --build-tests
	@set -o pipefail; KVMSCOPE_BIN=$(CURDIR)/.build/tsan/debug/kvmscope \
		TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/Tests/tsan-suppressions.txt" \
		SWIFT_BACKTRACE=enable=no timeout -k 30 $(SANITIZE_TIMEOUT) \
		$(SWIFT) test --skip-build --build-path .build/tsan --sanitize=thread --filter '$(TSAN_FILTER)' 2>&1 | tee .build/tsan.log

sanitize-address: deps
	$(SWIFT) build --build-path .build/asan $(ASAN_FLAGS) --build-tests
	@set -o pipefail; ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		SWIFT_BACKTRACE=enable=no timeout -k 30 $(SANITIZE_TIMEOUT) \
		$(SWIFT) test --skip-build --build-path .build/asan $(ASAN_FLAGS) \
		--filter '$(ASAN_FILTER)' 2>&1 | tee .build/asan.log

clean:
	rm -rf .build
