/// Errors kvmscope reports as one line and a non-zero exit status.
public enum KVMScopeError: Error, CustomStringConvertible, Equatable {
    case notRoot
    case noTracefs(String)
    case noKVMEvents
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
        case .notRoot: "root is needed to read tracefs (run it with sudo)"
        case .noTracefs(let why): "tracefs is not mounted and could not be mounted: \(why)"
        case .noKVMEvents: "no kvm events in tracefs: is the kvm module loaded? (modprobe kvm_intel, kvm_amd or kvm)"
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
