import CKVMGuest
import KVMExits
import KVMHost

/// The built-in guest: a real VM whose vCPUs cause an exact number of exits of one kind.
public enum Storm {
    public enum Kind: String, CaseIterable, Sendable {
        case io, mmio, hlt

        var cValue: Int32 {
            switch self {
            case .io: Int32(CKVMSCOPE_STORM_IO)
            case .mmio: Int32(CKVMSCOPE_STORM_MMIO)
            case .hlt: Int32(CKVMSCOPE_STORM_HLT)
            }
        }
    }

    public struct Result: Sendable {
        public var exits: UInt64
        public var seconds: Double
    }

    /// Runs the VM until each vCPU has caused `exitsPerVCPU` exits, `timeLimit` seconds have passed (nil: no
    /// limit) or a stop signal (``StopSignals``) came — the last two within a few milliseconds; `exits` then
    /// counts the exits done. Throws a one-line error (no /dev/kvm, ioctl failures).
    public static func run(kind: Kind, vcpus: UInt32, exitsPerVCPU: UInt64, timeLimit: Double? = nil) throws -> Result {
        var res = ckvmscope_storm_result()
        var err = [CChar](repeating: 0, count: 512)
        guard ckvmscope_storm_run(kind.cValue, vcpus, exitsPerVCPU, max(timeLimit ?? 0, 0), &res, &err, err.count) == 0 else {
            throw KVMScopeError.noKVM(String(cMessage: err))
        }
        return Result(exits: res.exits, seconds: res.seconds)
    }
}
