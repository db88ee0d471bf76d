/// Who a traced thread is: the VM (process) it belongs to and, when known, its vCPU number.
public struct ThreadIdentity: Sendable, Equatable, Codable {
    /// The VM's process id (the thread group id of the vCPU thread).
    public var vm: Int32
    /// The guest's name (QEMU `-name`, libvirt domain) or the process's comm, when known.
    public var vmName: String?
    /// The vCPU number, from `kvm_exit`'s vcpu_id or the thread name ("CPU N/KVM"): the name's where it gives one.
    public var vcpu: UInt32?
    /// The thread's own name.
    public var comm: String?
    /// The vcpu_id that `kvm_exit`/`kvm_entry` carried for this thread (the first seen), where they fire and carry
    /// one; nil otherwise. It confirms ``vcpu`` when the number came from the thread's name — or contradicts it:
    /// QEMU names a thread by the vCPU's cpu-index, KVM's vcpu_id is what QEMU gave KVM_CREATE_VCPU, on x86 the
    /// APIC ID, and the two differ when a socket's cores or a core's threads are not a power of two
    /// (`-smp 6,sockets=2,cores=3`: `CPU 3/KVM` is vcpu_id 4). ``vcpu`` keeps the name's number (libvirt's and
    /// QEMU's `vcpu.N`); ``vcpuMismatch`` says when the two differ.
    public var tracedVCPU: UInt32?

    public init(vm: Int32, vmName: String? = nil, vcpu: UInt32? = nil, comm: String? = nil, tracedVCPU: UInt32? = nil) {
        self.vm = vm
        self.vmName = vmName
        self.vcpu = vcpu
        self.comm = comm
        self.tracedVCPU = tracedVCPU
    }

    /// True when the thread's name gives one vCPU number (``vcpu``) and kvm_exit/kvm_entry carry another
    /// (``tracedVCPU``): shown, never silently relabelled.
    public var vcpuMismatch: Bool {
        guard let vcpu, let tracedVCPU else { return false }
        return vcpu != tracedVCPU
    }

    /// The vCPU number in a QEMU-style thread name: "CPU 3/KVM" → 3.
    public static func vcpu(fromThreadName name: String) -> UInt32? {
        guard name.hasPrefix("CPU "), name.hasSuffix("/KVM") else { return nil }
        return UInt32(name.dropFirst(4).dropLast(4))
    }
}

/// Resolves a thread id to its identity. Called once per new thread, never per event.
public typealias ThreadResolver = @Sendable (_ tid: Int32) -> ThreadIdentity?

/// The start time of thread `tid` of process `vm` (any monotonic unit, e.g. clock ticks since boot); nil when
/// no such thread exists now. Two threads that reuse a tid have different start times. Asked once per new
/// thread and at each retirement check (snapshot side), never per event.
public typealias ThreadStartTime = @Sendable (_ tid: Int32, _ vm: Int32) -> UInt64?
