import Foundation
import KVMExits

/// Who a thread is, read from /proc once per thread: its process (the VM), the guest's name, its vCPU.
public enum ThreadDirectory {
    public static func identity(of tid: Int32) -> ThreadIdentity? {
        guard let status = try? String(contentsOfFile: "/proc/\(tid)/status", encoding: .utf8) else { return nil }
        var found: Int32?
        for line in status.split(separator: "\n") where line.hasPrefix("Tgid:") {
            found = Int32(line.dropFirst(5).trimmingCharacters(in: .whitespaces))
        }
        // A thread caught exiting can show a status without its Tgid: unknown then (the kernel's saved
        // tgids name it later), not a VM of its own.
        guard let tgid = found, tgid > 0 else { return nil }
        let comm = (try? String(contentsOfFile: "/proc/\(tid)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .newlines)
        return ThreadIdentity(vm: tgid, vmName: guestName(pid: tgid), vcpu: comm.flatMap(ThreadIdentity.vcpu(fromThreadName:)),
                              comm: comm)
    }

    /// The guest's name like kvm_stat finds it: QEMU's `-name guest=NAME,...` or `-name NAME`, else the comm.
    public static func guestName(pid: Int32) -> String? {
        if let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") {
            let args = data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            if let name = GuestName.fromQEMUArguments(args) { return name }
        }
        return (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines)
    }

    /// The processes whose cmdline-derived guest name is `name`: of those, the ones holding KVM open (the VMs)
    /// where any does — a wrapper that stays the VMM's parent (`timeout`, `sudo`, a script) carries the same
    /// `-name` in its arguments but is no VM — else all of them (a VMM that has not opened /dev/kvm yet).
    public static func pids(ofGuest name: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        let named = entries.compactMap(Int32.init).filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let args = data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            return GuestName.fromQEMUArguments(args) == name
        }.sorted()
        let vms = named.filter(KVMProcesses.holdsKVM)
        return vms.isEmpty ? named : vms
    }

    /// When thread `tid` of process `vm` started: field 22 of /proc/VM/task/TID/stat (clock ticks since boot);
    /// nil when that process has no such thread now (it exited, or the tid names a thread of another process).
    /// A reused tid has a later start time.
    @Sendable
    public static func startTime(tid: Int32, vm: Int32) -> UInt64? {
        guard let stat = try? String(contentsOfFile: "/proc/\(vm)/task/\(tid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // After "(comm) ": state is field 3, starttime field 22.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    public static func processExists(_ pid: Int32) -> Bool { pid > 0 && (kill(pid, 0) == 0 || errno == EPERM) }

    /// Whether `pid` is a kernel thread (PF_KTHREAD, 0x00200000, in the flags field — the 9th — of
    /// /proc/PID/stat): `kdamond.0`, `kvm-pit/1234` and the like cause kvm events but are no guests.
    /// False when the process is gone.
    public static func isKernelThread(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        // After "(comm) ": state, ppid, pgrp, session, tty_nr, tpgid, flags.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 6, let flags = UInt64(fields[6]) else { return false }
        return flags & 0x0020_0000 != 0
    }
}
