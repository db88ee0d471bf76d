/// One decoded trace event, as the C decoder writes it (field for field the shim's `ckvmscope_record`).
///
/// Sources of events — the live reader, trace.dat files, text traces, synthetic pages — all produce
/// these; everything downstream (pairing, aggregation, views) consumes only these.
public struct TraceEvent: Sendable, Equatable {
    /// Trace-clock timestamp in nanoseconds.
    public var timestamp: UInt64
    /// Exit: guest RIP (arm64: PC); entry: RIP.
    public var rip: UInt64
    /// Exit: info1 (arm64: ret); pio: port; mmio: gpa.
    public var detail: UInt64
    /// The thread that hit the tracepoint (the vCPU thread).
    public var tid: Int32
    /// Index into the ``EventCatalog`` the source was built with.
    public var event: UInt16
    /// Host CPU whose buffer held the event.
    public var cpu: UInt16
    /// Exit: raw exit_reason (arm64: esr_ec); userspace exit: KVM_EXIT_* code.
    public var reason: UInt32
    /// vcpu_id, or ``TraceEvent/noVCPU``.
    public var vcpu: UInt32
    /// Userspace exit: errno; pio: size; mmio: len.
    public var aux: UInt32
    /// Pio: rw; mmio: type.
    public var aux2: UInt16
    /// Exit: ``ISA`` raw value.
    public var isa: UInt8
    /// ``TraceEvent/afterLoss`` and friends.
    public var flags: UInt8

    public static let noVCPU: UInt32 = 0xffff_ffff
    /// The kernel dropped events on this CPU just before this one.
    public static let afterLoss: UInt8 = 0x01

    @inlinable
    public init(timestamp: UInt64, rip: UInt64 = 0, detail: UInt64 = 0, tid: Int32, event: UInt16, cpu: UInt16 = 0,
                reason: UInt32 = 0, vcpu: UInt32 = TraceEvent.noVCPU, aux: UInt32 = 0, aux2: UInt16 = 0,
                isa: UInt8 = 0, flags: UInt8 = 0) {
        self.timestamp = timestamp
        self.rip = rip
        self.detail = detail
        self.tid = tid
        self.event = event
        self.cpu = cpu
        self.reason = reason
        self.vcpu = vcpu
        self.aux = aux
        self.aux2 = aux2
        self.isa = isa
        self.flags = flags
    }
}
