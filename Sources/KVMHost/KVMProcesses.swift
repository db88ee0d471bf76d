import Foundation

/// Which processes run VMs: those holding /dev/kvm or a KVM VM file descriptor open.
public enum KVMProcesses {
    /// Pids with an fd on /dev/kvm or `anon_inode:kvm-vm`, except `excluding`. Reads /proc/*/fd (root sees all).
    public static func running(excluding: Set<Int32> = []) -> [Int32] {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init)
        return pids.filter { !excluding.contains($0) && holdsKVM($0) }.sorted()
    }

    /// Pids whose open files cannot be read (/proc/PID/fd: EACCES, another user's process without root): whether
    /// they run a VM is unknown, so ``running(excluding:)`` cannot list them.
    public static func unreadable() -> [Int32] {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init)
        return pids.filter { access("/proc/\($0)/fd", R_OK) != 0 && errno == EACCES }.sorted()
    }

    /// Whether `pid` holds /dev/kvm or a KVM VM descriptor open (false when it is gone or unreadable).
    public static func holdsKVM(_ pid: Int32) -> Bool {
        let fm = FileManager.default
        guard let fds = try? fm.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { return false }
        return fds.contains { fd in
            guard let target = try? fm.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)") else { return false }
            return target == "/dev/kvm" || target.hasPrefix("anon_inode:kvm-vm")
        }
    }
}
