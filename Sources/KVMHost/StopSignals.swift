import CKVMHost
import Foundation
import KVMExits
import SystemPackage

/// The signals that end a command cleanly (SIGINT, SIGTERM and SIGHUP), recorded by a handler that only
/// notes which one came first and wakes ``wait(seconds:)``. A real handler, unlike SIG_IGN plus a reader
/// elsewhere, catches the signal whichever thread the kernel delivers it to, and is reset to the default
/// in the children we start.
public enum StopSignals {
    /// Installs the handler on `signals` (idempotent; the handler stays for the process's life).
    public static func install(_ signals: [Int32]) {
        _ = signals.withUnsafeBufferPointer { ckvmscope_stop_install($0.baseAddress, Int32($0.count)) }
    }

    /// The first stop's signal, or nil while none came.
    public static var raised: Int32? {
        let s = ckvmscope_stop_signal()
        return s == 0 ? nil : s
    }

    /// Stops as if `signal` had come (a terminal that went away raises SIGHUP).
    public static func raise(_ signal: Int32) { ckvmscope_stop_raise(signal) }

    /// Sleeps up to `seconds`; returns at once (true) when a stop was raised before or during the wait.
    public static func wait(seconds: Double) -> Bool {
        if raised != nil { return true }
        let fd = ckvmscope_stop_fd()
        var end = Date().addingTimeInterval(seconds)
        if fd < 0 {
            end = min(end, Date().addingTimeInterval(0.02))
            while raised == nil && Date() < end { usleep(1000) }
            return raised != nil
        }
        while raised == nil {
            let left = end.timeIntervalSinceNow
            if left <= 0 { break }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, Int32(min(left * 1000, 1000).rounded(.up)))
        }
        return raised != nil
    }
}

/// SIGHUP as a request to reopen a log file (kvm_stat `-L`'s habit, for logrotate's `postrotate kill -HUP`),
/// counted by a handler instead of stopping the command. Install it instead of SIGHUP among ``StopSignals``.
public enum Hangups {
    /// Counts SIGHUP from now on (idempotent). Throws the system's reason when sigaction fails.
    public static func install() throws {
        guard ckvmscope_hangup_install() == 0 else { throw KVMScopeError.io("cannot handle SIGHUP: \(Errno(rawValue: errno))") }
    }

    /// SIGHUPs counted since ``install()``: a log compares it with the count it last acted on.
    public static var count: UInt32 { ckvmscope_hangups() }
}
