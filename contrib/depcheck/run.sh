#!/usr/bin/env bash
# Checks that kvmscope's library products can be depended on by version (no unsafeFlags anywhere in the
# package): clones this checkout, tags the clone, and builds a small package that depends on it with
# `from:` and reads a trace.dat through KVMSources/KVMExits/KVMAnalysis. `make depcheck` runs it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/kvmscope-depcheck.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/kvmscope-dep"
git -C "$work/kvmscope-dep" tag 0.9.0
mkdir -p "$work/app/Sources/depcheck"
sed "s|@DEP@|$work/kvmscope-dep|" "$here/Package.swift.in" > "$work/app/Package.swift"
cp "$here/Sources/depcheck/main.swift" "$work/app/Sources/depcheck/"
(cd "$work/app" && swift build -q)
trace="$root/../shared/corpus/real/hip24_host_trace_v7_zlib.dat"
if [ -f "$trace" ]; then
    got=$("$work/app/.build/debug/depcheck" "$trace")
    [ "$got" = 5860 ] || { echo "depcheck: expected 5860 kvm_exit events, got $got"; exit 1; }
fi
echo "depcheck: a package depending on kvmscope from: 0.9.0 builds and reads a trace.dat"
