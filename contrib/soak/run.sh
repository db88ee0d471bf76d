#!/bin/bash
# kvmscope soak: `serve` and the full-screen live view (in a detached tmux of its own) run for SOAK_SECONDS
# while storm guests come and go and /metrics is scraped every second. Each SOAK_INTERVAL seconds the RSS,
# open descriptors, threads and CPU of both are sampled; a markdown table is printed at the end (and as it
# goes, to stderr). Not part of CI: `make soak` (30 minutes by default).
#
#   SOAK_SECONDS=1800   how long
#   SOAK_INTERVAL=60    seconds between samples
#   SOAK_GUESTS=1       storm guests running at once (each lives 5-30 s, then another starts)
#   KVMSCOPE=.build/release/kvmscope
#
# Needs root (or the rights of README's "Least privilege"), /dev/kvm, tracefs and tmux. Everything it starts
# is stopped by pid when it ends; no shell ever sees a string from outside this script.
set -u
SOAK_SECONDS=${SOAK_SECONDS:-1800}
SOAK_INTERVAL=${SOAK_INTERVAL:-60}
SOAK_GUESTS=${SOAK_GUESTS:-1}
KVMSCOPE=${KVMSCOPE:-.build/release/kvmscope}
KVMSCOPE=$(realpath "$KVMSCOPE")
PORT=${SOAK_PORT:-$((20000 + $$ % 20000))}
TMUX_SOCKET=kvmscope-soak-$$
HZ=$(getconf CLK_TCK)

[ -x "$KVMSCOPE" ] || { echo "soak: no kvmscope at $KVMSCOPE (make build)" >&2; exit 1; }

"$KVMSCOPE" serve --listen "127.0.0.1:$PORT" 2>/tmp/kvmscope-soak-serve-$$.log &
SERVE=$!
tmux -L "$TMUX_SOCKET" new-session -d -x 120 -y 40 "$KVMSCOPE" live
sleep 2
LIVE=$(pgrep -P "$(tmux -L "$TMUX_SOCKET" list-panes -F '#{pane_pid}' 2>/dev/null | head -1)" 2>/dev/null | head -1)
# The pane's process is kvmscope itself (tmux execs the command without a shell when given argv).
[ -n "$LIVE" ] || LIVE=$(tmux -L "$TMUX_SOCKET" list-panes -F '#{pane_pid}' | head -1)

GUESTS=()
STARTED=0
cleanup() {
    for g in "${GUESTS[@]}"; do kill "$g" 2>/dev/null; done
    kill "$SERVE" 2>/dev/null
    tmux -L "$TMUX_SOCKET" kill-server 2>/dev/null
    rm -f "/tmp/kvmscope-soak-serve-$$.log"
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# utime+stime of a process, in clock ticks.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
status() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

# One scrape over bash's /dev/tcp, at most 1 s: prints its time in ms, or "fail".
scrape() {
    local t0 t1
    t0=$(date +%s%N)
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && grep -q '^kvmscope_' <&3" 2>/dev/null; then
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000000))
    else
        echo fail
    fi
}

KINDS=(io mmio hlt)
start_guest() {
    local kind=${KINDS[$((RANDOM % 3))]} vcpus=$((1 + RANDOM % 2)) secs=$((5 + RANDOM % 26))
    "$KVMSCOPE" storm --kind "$kind" --vcpus "$vcpus" --exits 1000000000 --seconds "$secs" >/dev/null 2>&1 &
    GUESTS+=($!)
    STARTED=$((STARTED + 1))
}

header="| t (s) | serve RSS MiB | serve fds | serve threads | serve CPU % | live RSS MiB | live fds | live threads | live CPU % | scrapes (failed) | max scrape ms | guests started |"
rule="|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
ROWS=()
next=$((SECONDS + SOAK_INTERVAL))
s0=$(ticks "$SERVE"); l0=$(ticks "$LIVE"); t0=$SECONDS
scrapes=0; failed=0; maxms=0; sample=0
echo "$header" >&2; echo "$rule" >&2
while [ "$sample" -lt $((SOAK_SECONDS / SOAK_INTERVAL)) ]; do
    alive=()
    for g in "${GUESTS[@]}"; do kill -0 "$g" 2>/dev/null && alive+=("$g"); done
    GUESTS=("${alive[@]}")
    while [ ${#GUESTS[@]} -lt "$SOAK_GUESTS" ]; do start_guest; done
    ms=$(scrape)
    scrapes=$((scrapes + 1))
    if [ "$ms" = fail ]; then failed=$((failed + 1)); elif [ "$ms" -gt "$maxms" ]; then maxms=$ms; fi
    kill -0 "$SERVE" 2>/dev/null || { echo "soak: serve ended" >&2; exit 1; }
    kill -0 "$LIVE" 2>/dev/null || { echo "soak: the live view ended" >&2; exit 1; }
    if [ $SECONDS -ge $next ]; then
        sample=$((sample + 1))
        s1=$(ticks "$SERVE"); l1=$(ticks "$LIVE"); dt=$((SECONDS - t0))
        row=$(awk -v m=$((sample * SOAK_INTERVAL)) -v hz="$HZ" -v dt="$dt" \
            -v srss="$(status "$SERVE" VmRSS)" -v sfd="$(fds "$SERVE")" -v sth="$(status "$SERVE" Threads)" -v sc=$((s1 - s0)) \
            -v lrss="$(status "$LIVE" VmRSS)" -v lfd="$(fds "$LIVE")" -v lth="$(status "$LIVE" Threads)" -v lc=$((l1 - l0)) \
            -v n="$scrapes" -v f="$failed" -v ms="$maxms" -v g="$STARTED" 'BEGIN {
                printf "| %d | %.1f | %d | %d | %.1f | %.1f | %d | %d | %.1f | %d (%d) | %d | %d |", m, srss / 1024, sfd, sth,
                    sc * 100 / hz / dt, lrss / 1024, lfd, lth, lc * 100 / hz / dt, n, f, ms, g }')
        ROWS+=("$row")
        echo "$row" >&2
        s0=$s1; l0=$l1; t0=$SECONDS; scrapes=0; failed=0; maxms=0
        next=$((next + SOAK_INTERVAL))
    fi
    sleep 1
done
echo "kvmscope soak: $(date -u +%Y-%m-%d), $SOAK_SECONDS s, $(nproc) CPUs, $(uname -r), a sample every $SOAK_INTERVAL s"
echo
echo "$header"
echo "$rule"
printf '%s\n' "${ROWS[@]}"
