#!/bin/sh
# Regenerates the text-trace fixtures with Debian's real trace-cmd (3.1.6) and perf, as root on a host
# with /dev/kvm and tracefs: ./make.sh PATH/TO/kvmscope
#
#  synth-*.dat      kvmscope bench synth (kvm_exit/kvm_entry pages built from a kernel's format files;
#                   this host's KVM never fires kvm_exit), rendered by trace-cmd report in each mode.
#  storm-io.*       the storm guest (kvmscope storm --kind io --vcpus 2 --exits 5: exactly 10 kvm_pio and
#                   10 kvm_userspace_exit), traced by trace-cmd, by the kernel's own trace file (tracefs
#                   options record-tgid and irq-info on and off) and by perf, printed in each mode.
set -eu
K=$(realpath "$1")
cd "$(dirname "$0")"
F=../formats

for v in 6.18-x86 4.19-x86 5.15-arm64; do
    "$K" bench synth -o "synth-$v.dat" --events 40 --threads 2 --cpus 2 --formats "$F/$v" >/dev/null
done
trace-cmd report synth-6.18-x86.dat > synth-6.18-x86.report.txt
trace-cmd report -t synth-6.18-x86.dat > synth-6.18-x86.report-t.txt
trace-cmd report -R -t synth-6.18-x86.dat > synth-6.18-x86.report-R.txt
trace-cmd report -l -t synth-6.18-x86.dat > synth-6.18-x86.report-l.txt
trace-cmd report --cpu 1 -t synth-6.18-x86.dat > synth-6.18-x86.report-cpu1.txt
trace-cmd report --ts-diff synth-6.18-x86.dat > synth-6.18-x86.report-ts-diff.txt
trace-cmd report -t synth-4.19-x86.dat > synth-4.19-x86.report-t.txt
trace-cmd report -t synth-5.15-arm64.dat > synth-5.15-arm64.report-t.txt
# From this host's own tracefs formats (6.18): trace-cmd 3.1.6 prints its kvm_exit as
# "[FAILED TO PARSE] exit_reason=… isa=1 …" (with the formats above, its kvm plugin prints "reason NAME").
"$K" bench synth -o synth-host.dat --events 40 --threads 2 --cpus 2 >/dev/null
trace-cmd report synth-host.dat > synth-host.report.txt
trace-cmd report -l synth-host.dat > synth-host.report-l.txt

STORM="$K storm --kind io --vcpus 2 --exits 5"
EV="-e kvm:kvm_pio -e kvm:kvm_userspace_exit"
tmp=$(mktemp -d)
I=/sys/kernel/tracing/instances/kvmscope-fixtures-$$
trap 'rm -rf "$tmp"; [ -d "$I" ] && rmdir "$I" || true' EXIT

# The storm recorded by kvmscope record (which traces only the command after --: other guests run on
# this host), then printed by trace-cmd report in each mode; the recording itself stays out of git
# (the live test makes its own and compares).
"$K" record -o "$tmp/storm.dat" -e kvm_pio -e kvm_userspace_exit -- $STORM >/dev/null
trace-cmd report "$tmp/storm.dat" > storm-io.tracecmd.txt
trace-cmd report -R "$tmp/storm.dat" > storm-io.tracecmd-R.txt
trace-cmd report -l "$tmp/storm.dat" > storm-io.tracecmd-l.txt

# The kernel's own text, from a private instance that traces only the storm (set_event_pid with
# event-fork, as kvmscope stat -- does): irq-info and record-tgid on and off; the counter clock.
kernel_text() {  # OUT RECORD_TGID IRQ_INFO CLOCK
    mkdir "$I"
    echo "$2" > "$I/options/record-tgid"
    echo "$3" > "$I/options/irq-info"
    echo "$4" > "$I/trace_clock"
    echo 1 > "$I/options/event-fork"
    # The pid filter first, then the events: nothing of another process gets in.
    sh -c "echo \$\$ > $I/set_event_pid; echo 1 > $I/events/kvm/kvm_pio/enable;
           echo 1 > $I/events/kvm/kvm_userspace_exit/enable; exec $STORM" >/dev/null
    echo 0 > "$I/tracing_on"
    cat "$I/trace" > "$1"
    rmdir "$I"
}
kernel_text storm-io.kernel.txt 0 1 local
kernel_text storm-io.kernel-tgid.txt 1 1 local
kernel_text storm-io.kernel-noirq.txt 0 0 local
kernel_text storm-io.kernel-tgid-noirq.txt 1 0 local
kernel_text storm-io.kernel-counter.txt 0 1 counter

# perf script with several field sets.
perf record -q -o "$tmp/perf.data" $EV -- $STORM >/dev/null 2>&1
perf script -i "$tmp/perf.data" > storm-io.perf.txt 2>/dev/null
perf script -i "$tmp/perf.data" -F comm,pid,tid,cpu,time,event,trace > storm-io.perf-pid-tid.txt 2>/dev/null
perf script -i "$tmp/perf.data" -F comm,tid,time,event,trace > storm-io.perf-no-cpu.txt 2>/dev/null
perf script -i "$tmp/perf.data" -F comm,time,event,trace > storm-io.perf-comm-only.txt 2>/dev/null
perf script -i "$tmp/perf.data" -F time,event,trace --ns > storm-io.perf-time-only-ns.txt 2>/dev/null
