#!/bin/bash
# kvmscope churn soak: `serve` while short-lived storm guests start and stop one after the other, every
# guest a new process with new vCPU threads (what a host where VMs come and go all day looks like). Every
# CHURN_EVERY guests: serve's RSS (least of 5 readings), one scrape's time, live threads and series, retired
# threads, folded VMs, and the exact check (kvm_pio and the sum of KVM_EXIT_IO series = vCPUs × exits ×
# guests). Then `report` of synthetic trace.dat files with CHURN_THREADS vCPU threads (events/s, RSS). A
# markdown table at the end; exit status 1 if a count is not exact. Not part of CI: `make soak-churn`.
#
#   CHURN_GUESTS=1000    guests in all (each: storm --kind io --vcpus CHURN_VCPUS --exits CHURN_EXITS)
#   CHURN_EVERY=100      guests between samples
#   CHURN_VCPUS=8  CHURN_EXITS=10
#   CHURN_RETIRED_VMS=100            serve --retired-vms
#   CHURN_THREADS="5000 50000"       vCPU threads of the offline trace.dat files ("" to skip)
#   CHURN_EVENTS=2000000             events of each offline file
#   KVMSCOPE=.build/release/kvmscope
#
# Needs root (or README's "Least privilege"), /dev/kvm, tracefs and curl. Everything it starts is stopped by
# pid when it ends.
set -u
CHURN_GUESTS=${CHURN_GUESTS:-1000}
CHURN_EVERY=${CHURN_EVERY:-100}
CHURN_VCPUS=${CHURN_VCPUS:-8}
CHURN_EXITS=${CHURN_EXITS:-10}
CHURN_RETIRED_VMS=${CHURN_RETIRED_VMS:-100}
CHURN_THREADS=${CHURN_THREADS-5000 50000}
CHURN_EVENTS=${CHURN_EVENTS:-2000000}
KVMSCOPE=${KVMSCOPE:-.build/release/kvmscope}
KVMSCOPE=$(realpath "$KVMSCOPE")
PORT=${CHURN_PORT:-$((20000 + $$ % 20000))}
WORK=$(mktemp -d /tmp/kvmscope-churn-XXXXXX)

[ -x "$KVMSCOPE" ] || { echo "churn: no kvmscope at $KVMSCOPE (make build)" >&2; exit 1; }

# serve traces this script and what it starts (-p): the guests.
"$KVMSCOPE" serve --listen "127.0.0.1:$PORT" -p $$ --retired-vms "$CHURN_RETIRED_VMS" -s 0.5 2>"$WORK/serve.log" &
SERVE=$!
cleanup() {
    kill "$SERVE" 2>/dev/null
    wait "$SERVE" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null; }
least_rss() {
    local least=999999999 r
    for _ in 1 2 3 4 5; do r=$(rss "$1"); [ -n "$r" ] && [ "$r" -lt "$least" ] && least=$r; sleep 0.2; done
    echo "$least"
}
# Scrapes into $WORK/m; prints the scrape's time in ms.
scrape() { curl -s -o "$WORK/m" -w '%{time_total}' "http://127.0.0.1:$PORT/metrics" | awk '{ printf "%.1f", $1 * 1000 }'; }
value() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/m"; }
io_sum() { grep '^kvmscope_userspace_exits_total{' "$WORK/m" | grep 'reason="KVM_EXIT_IO"' | awk '{ s += $NF } END { print s + 0 }'; }

for _ in $(seq 50); do grep -q serving "$WORK/serve.log" 2>/dev/null && break; sleep 0.1; done
grep -q serving "$WORK/serve.log" || { echo "churn: serve did not start: $(cat "$WORK/serve.log")" >&2; exit 1; }

header="| guests | vCPU threads | serve RSS MiB | scrape ms | live threads | live series | retired threads | folded VMs | kvm_pio | KVM_EXIT_IO | exact |"
rule="|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|"
ROWS=()
bad=0
echo "$header" >&2; echo "$rule" >&2
per=$((CHURN_VCPUS * CHURN_EXITS))
t0=$(date +%s%N)
for i in $(seq "$CHURN_GUESTS"); do
    "$KVMSCOPE" storm --kind io --vcpus "$CHURN_VCPUS" --exits "$CHURN_EXITS" >/dev/null || { echo "churn: storm failed" >&2; exit 1; }
    if [ $((i % CHURN_EVERY)) -eq 0 ] || [ "$i" -eq "$CHURN_GUESTS" ]; then
        # Let the readers drain and the exited threads retire (a check every 0.5 s, 3 for a nameless one).
        for _ in $(seq 40); do
            scrape >/dev/null
            [ "$(value 'kvmscope_events_total{event="kvm_pio"}')" = $((per * i)) ] && [ "$(value kvmscope_live_threads)" = 0 ] && break
            sleep 0.25
        done
        ms=$(scrape)
        pio=$(value 'kvmscope_events_total{event="kvm_pio"}')
        io=$(io_sum)
        exact=yes
        [ "$pio" = $((per * i)) ] && [ "$io" = $((per * i)) ] || { exact=NO; bad=1; }
        row=$(printf '| %d | %d | %.1f | %s | %s | %s | %s | %s | %s | %s | %s |' "$i" $((i * CHURN_VCPUS)) \
            "$(echo "$(least_rss "$SERVE") / 1024" | bc -l)" "$ms" "$(value kvmscope_live_threads)" \
            "$(value kvmscope_live_series)" "$(value kvmscope_retired_threads_total)" \
            "$(value kvmscope_folded_vms_total)" "$pio" "$io" "$exact")
        ROWS+=("$row")
        echo "$row" >&2
    fi
done
secs=$(( ($(date +%s%N) - t0) / 1000000000 ))

OFF=()
for threads in $CHURN_THREADS; do
    f="$WORK/t$threads.dat"
    "$KVMSCOPE" bench synth -o "$f" --events "$CHURN_EVENTS" --threads "$threads" >/dev/null || { echo "churn: bench synth failed" >&2; exit 1; }
    t1=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$WORK/time" "$KVMSCOPE" report --json "$f" >"$WORK/report.json" || { echo "churn: report failed" >&2; exit 1; }
    t2=$(date +%s%N)
    paired=$(grep -m1 '"paired"' "$WORK/report.json" | tr -dc 0-9)
    OFF+=("$(awk -v t="$threads" -v e="$CHURN_EVENTS" -v ns=$((t2 - t1)) -v kb="$(tail -1 "$WORK/time")" -v p="$paired" \
        'BEGIN { printf "| %d | %d | %.2f | %.2f M | %.1f | %d |", t, e, ns / 1e9, e / (ns / 1e9) / 1e6, kb / 1024, p }')")
    rm -f "$f"
done

echo "kvmscope churn soak: $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -r), $CHURN_GUESTS guests of $CHURN_VCPUS vCPUs in $secs s, serve --retired-vms $CHURN_RETIRED_VMS"
echo
echo "$header"
echo "$rule"
printf '%s\n' "${ROWS[@]}"
if [ ${#OFF[@]} -gt 0 ]; then
    echo
    echo "| report: vCPU threads | events | s | events/s | RSS MiB | pairs |"
    echo "|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${OFF[@]}"
fi
exit $bad
