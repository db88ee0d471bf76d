/// Errors kvmscope reports as one line and a non-zero exit status.
public enum KVMScopeError: Error, CustomStringConvertible, Equatable {
    /// tracefs is not mounted and this user may not mount it.
    case notRoot
    /// tracefs is not mounted and could not be mounted (the system's reason).
    case noTracefs(String)
    /// tracefs is mounted but this user may not use it ("PATH: Permission denied").
    case noAccess(String)
    /// No kvm events (the directory where they were looked for).
    case noKVMEvents(String)
    case badFormat(String)
    case unknownEvent(String)
    case instance(String)
    case io(String)
    case noKVM(String)
    case usage(String)
    case badFile(String)
    /// The command traced after `--` ended with this status (kvmscope exits with status 3).
    case commandFailed(Int32)

    /// The exit status kvmscope ends with: 3 when the traced command failed, else 1.
    public var exitStatus: Int32 {
        if case .commandFailed = self { return 3 }
        return 1
    }

    public var description: String {
        switch self {
        case .notRoot: "tracefs is not mounted, and only root may mount it (run kvmscope with sudo)"
        case .noTracefs(let why):
            "tracefs is not mounted and could not be mounted: \(why) (as root: mount -t tracefs nodev /sys/kernel/tracing)"
        case .noAccess(let why):
            "cannot use tracefs: \(why) (run kvmscope with sudo, or grant access: see \"Running without root\" in the README)"
        case .noKVMEvents(let dir):
            "no kvm events in \(dir): the kvm module is not loaded (modprobe kvm_intel, kvm_amd or kvm)"
        case .commandFailed(let status): "command exited with status \(status)"
        case .badFormat(let s), .unknownEvent(let s), .instance(let s), .io(let s), .noKVM(let s), .usage(let s),
             .badFile(let s): s
        }
    }
}

extension String {
    /// The message a C function wrote into a NUL-terminated buffer.
    public init(cMessage buffer: [CChar]) {
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        self.init(decoding: bytes, as: UTF8.self)
    }
}
