import KVMExits

/// A synthetic kvm_exit → kvm_entry workload, written as kernel-exact ring-buffer sub-buffers: vCPU threads
/// spread over host CPUs, each exiting with a reason mix taken from real traces, each exit followed by its
/// entry after a reason-dependent latency. Deterministic for a given seed.
///
/// Used by `kvmscope bench synth` (pages for a trace.dat) and the decode benchmarks (pages in memory).
/// Payloads come from the formats given, fields set by name, so any kernel's layout works.
public struct SyntheticWorkload: Sendable {
    /// One exit reason of the mix: VMX code, relative weight, typical exit-handling time (ns).
    public struct Reason: Sendable, Equatable {
        public var code: UInt32
        public var weight: Int
        public var latencyNS: UInt64
        public init(code: UInt32, weight: Int, latencyNS: UInt64) {
            self.code = code
            self.weight = weight
            self.latencyNS = latencyNS
        }
    }

    /// The VMX reasons of every kvm_exit in the corpus's six real Intel recordings, summed
    /// (/work/shared/corpus/README.md: MSR_WRITE 22307, APIC_WRITE 16893, HLT 10664, ...).
    public static let corpusMix: [Reason] = [
        Reason(code: 32, weight: 22307, latencyNS: 1_500),   // MSR_WRITE
        Reason(code: 56, weight: 16893, latencyNS: 1_200),   // APIC_WRITE
        Reason(code: 12, weight: 10664, latencyNS: 40_000),  // HLT
        Reason(code: 52, weight: 8096, latencyNS: 900),      // PREEMPTION_TIMER
        Reason(code: 49, weight: 5054, latencyNS: 3_000),    // EPT_MISCONFIG
        Reason(code: 1, weight: 4738, latencyNS: 800),       // EXTERNAL_INTERRUPT
        Reason(code: 40, weight: 2353, latencyNS: 600),      // PAUSE_INSTRUCTION
        Reason(code: 48, weight: 508, latencyNS: 5_000),     // EPT_VIOLATION
        Reason(code: 30, weight: 390, latencyNS: 8_000),     // IO_INSTRUCTION
        Reason(code: 45, weight: 145, latencyNS: 700),       // EOI_INDUCED
        Reason(code: 10, weight: 44, latencyNS: 1_000),      // CPUID
        Reason(code: 31, weight: 14, latencyNS: 1_100),      // MSR_READ
    ]

    /// vCPU threads in all (tids firstTid, firstTid+1, ...).
    public var threads: Int
    /// Host CPUs the threads are spread over (thread i runs on CPU i % hostCPUs).
    public var hostCPUs: Int
    /// vCPUs per VM: thread i is vcpu_id i % vcpusPerVM.
    public var vcpusPerVM: Int
    public var mix: [Reason]
    public var seed: UInt64
    public var firstTid: Int32 = 10_000
    /// Distinct guest RIPs per reason (exercises the top-RIP tables).
    public var ripsPerReason = 4
    /// vCPU threads alive at a time, over all host CPUs (VM churn: each VM start makes new vCPU threads); nil:
    /// every thread is alive from the first event to the last, each host CPU's next pair the next thread's (the
    /// worst case for caches: every pair touches a cold thread). With a number, each CPU runs
    /// `max(1, alive / hostCPUs)` of its threads at a time, in turn; a thread makes its share of the CPU's pairs
    /// (an equal share, the first threads one more when they do not divide) and never appears again, and the
    /// next of the CPU's threads takes its place.
    public var alive: Int?

    public init(threads: Int = 16, hostCPUs: Int = 2, vcpusPerVM: Int = 4, mix: [Reason] = SyntheticWorkload.corpusMix,
                seed: UInt64 = 0x6b76_6d73) {
        precondition(threads > 0 && hostCPUs > 0 && vcpusPerVM > 0 && !mix.isEmpty)
        self.threads = threads
        self.hostCPUs = hostCPUs
        self.vcpusPerVM = vcpusPerVM
        self.mix = mix
        self.seed = seed
    }

    /// Thread ids of the workload, with their VM (the first tid of its group stands for the VM's pid).
    public var threadIDs: [(tid: Int32, vm: Int32, vcpu: UInt32)] {
        (0..<threads).map { i in
            (firstTid + Int32(i), firstTid + Int32(i - i % vcpusPerVM), UInt32(i % vcpusPerVM))
        }
    }

    /// Generates `events` events (exit/entry pairs; rounded down to even) for host CPU `cpu`, handing each
    /// full sub-buffer to `body` as it is closed. Memory stays at one page whatever the count.
    public func pages(formats: EventFormats, cpu: Int, events: Int, subbufSize: Int = 4096,
                      _ body: ([UInt8]) throws -> Void) throws {
        let exitB = try EventPayloadBuilder(formats: formats, event: "kvm_exit")
        let entryB = try EventPayloadBuilder(formats: formats, event: "kvm_entry")
        let mine = (0..<threads).filter { $0 % hostCPUs == cpu }
        guard !mine.isEmpty else { return }
        // Templates, built once: one exit payload per (reason, rip) and one entry payload, for no thread; each
        // event's copy gets its thread's pid and vcpu_id (the same bytes as a template per thread, in memory
        // that does not grow with the threads: a million threads stream like sixteen).
        var exits: [[UInt8]] = []
        for (r, reason) in mix.enumerated() {
            for k in 0..<ripsPerReason {
                exits.append(exitB.payload(pid: 0, [
                    "exit_reason": UInt64(reason.code), "isa": 1, "vcpu_id": 0,
                    "guest_rip": Self.rip(reason: r, k: k), "info1": UInt64(k),
                ]))
            }
        }
        let entry = entryB.payload(pid: 0, ["vcpu_id": 0, "rip": Self.rip(reason: 0, k: 0) + 2])
        let exitVCPU = exitB.fields["vcpu_id"]
        let entryVCPU = entryB.fields["vcpu_id"]
        func stamped(_ template: [UInt8], _ b: EventPayloadBuilder, _ vcpuField: (offset: Int, size: Int)?,
                     thread i: Int) -> [UInt8] {
            var bytes = template
            b.put(&bytes, offset: 4, size: 4, UInt64(UInt32(bitPattern: firstTid + Int32(i))))
            if let f = vcpuField { b.put(&bytes, offset: f.offset, size: f.size, UInt64(i % vcpusPerVM)) }
            return bytes
        }
        // Reason picked by weight through a 4096-entry table.
        let total = mix.reduce(0) { $0 + $1.weight }
        var table = [UInt8](repeating: 0, count: 4096)
        var filled = 0
        for (r, reason) in mix.enumerated() {
            let n = r == mix.count - 1 ? 4096 - filled : reason.weight * 4096 / total
            for j in filled..<min(4096, filled + n) { table[j] = UInt8(r) }
            filled = min(4096, filled + n)
        }

        var rng = SplitMix64(seed: seed &+ UInt64(cpu) &* 0x9E37_79B9_7F4A_7C15)
        var builder = RingBufferPageBuilder(subbufSize: subbufSize)
        var ts: UInt64 = 1_000_000_000 + UInt64(cpu) * 1_000
        var turn = 0
        let pairs = events / 2
        // The threads running now (positions in `mine`) and the pairs each has left; all of them without `alive`.
        let window = alive.map { min(mine.count, max(1, $0 / hostCPUs)) } ?? mine.count
        let churns = window < mine.count
        func share(_ position: Int) -> Int { pairs / mine.count + (position < pairs % mine.count ? 1 : 0) }
        var running = Array(0..<window)
        var left = running.map(share)
        var nextThread = window
        for _ in 0..<pairs {
            let x = rng.next()
            let r = Int(table[Int(x & 4095)])
            let k = Int((x >> 12) % UInt64(ripsPerReason))
            var slot = turn % mine.count
            turn += 1
            if churns {
                // A thread whose share is made leaves; the next thread takes its slot, or the slot closes.
                slot = (turn - 1) % running.count
                while left[slot] == 0 {
                    if nextThread < mine.count {
                        running[slot] = nextThread
                        left[slot] = share(nextThread)
                        nextThread += 1
                    } else {
                        running.remove(at: slot)
                        left.remove(at: slot)
                        slot = slot % running.count
                    }
                }
                left[slot] -= 1
                slot = running[slot]
            }
            let latency = mix[r].latencyNS + (x >> 20) % (mix[r].latencyNS / 2 + 1)
            let thread = mine[slot]
            builder.append(timestamp: ts, payload: stamped(exits[r * ripsPerReason + k], exitB, exitVCPU, thread: thread))
            ts += latency
            builder.append(timestamp: ts, payload: stamped(entry, entryB, entryVCPU, thread: thread))
            ts += 2_000 + (x >> 40) % 8_000  // guest runs 2–10 µs before the next exit on this CPU
            for page in builder.takeFinishedPages() { try body(page) }
        }
        for page in builder.finish() { try body(page) }
    }

    /// All pages of every CPU in memory, each CPU's pages in order (benchmarks: a few million events at most).
    public func allPages(formats: EventFormats, events: Int, subbufSize: Int = 4096) throws -> [(cpu: Int, page: [UInt8])] {
        var out: [(cpu: Int, page: [UInt8])] = []
        for cpu in 0..<hostCPUs {
            try pages(formats: formats, cpu: cpu, events: events / hostCPUs, subbufSize: subbufSize) {
                out.append((cpu, $0))
            }
        }
        return out
    }

    static func rip(reason: Int, k: Int) -> UInt64 { 0xffff_ffff_8100_0000 + UInt64(reason) * 0x1000 + UInt64(k) * 0x40 }
}
