import Foundation
import KVMExits
import KVMSources
import Testing

/// Property: random traces, written in each text mode the way the kernel, trace-cmd and perf print them,
/// parse back to exactly the generated events (every field the mode carries).
@Suite struct TextTraceRoundTripTests {
    /// One generated event.
    struct Event: Equatable {
        enum Kind: String { case exit = "kvm_exit", entry = "kvm_entry", pio = "kvm_pio", user = "kvm_userspace_exit" }
        var kind: Kind
        var ts: UInt64
        var thread: Int
        var cpu: Int
        var reason: UInt32 = 0
        var rip: UInt64 = 0
        var port: UInt64 = 0
    }

    struct Thread {
        var tid: Int32
        var tgid: Int32
        var vcpu: UInt32
        var comm: String { "CPU \(vcpu)/KVM" }
    }

    /// The text modes of the peers (what each prints is in ``line(_:_:_:)``).
    enum Mode: String, CaseIterable, Sendable {
        case kernel, kernelTGID, kernelNoIRQ, kernelCounter
        case traceCmd, traceCmdNs, traceCmdRaw, traceCmdLatency
        case perf, perfPidTid, perfNoCPU, perfCommOnly, perfTimeOnly

        var hasTID: Bool { ![.perfCommOnly, .perfTimeOnly].contains(self) }
        var hasCPU: Bool { ![.perfNoCPU, .perfCommOnly, .perfTimeOnly].contains(self) }
        /// Timestamps printed in microseconds (the generator then draws whole microseconds).
        var micro: Bool { [.traceCmd, .traceCmdLatency, .perf, .perfPidTid, .perfNoCPU, .perfCommOnly].contains(self) }
        /// kvm_exit carries the vCPU (kernel format, raw fields); libtraceevent's plugin text does not.
        var exitHasVCPU: Bool { [.kernel, .kernelTGID, .kernelNoIRQ, .kernelCounter, .traceCmdRaw, .traceCmdLatency].contains(self) }
    }

    static let reasons = ExitReasonNames.builtinVMX.entries

    static func generate(seed: UInt64, mode: Mode) -> (threads: [Thread], events: [Event]) {
        var rng = SplitMix64(seed: seed)
        func below(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        let threadCount = mode == .perfTimeOnly ? 1 : 1 + below(4)
        let tgid = Int32(1000 + below(60000))
        let threads = (0..<threadCount).map { Thread(tid: tgid + 1 + Int32($0), tgid: tgid, vcpu: UInt32($0)) }
        var events: [Event] = []
        var ts: UInt64 = (1 + UInt64(below(100_000))) * 1_000_000_000 + UInt64(below(1_000_000)) * 1000
        for _ in 0..<(20 + below(200)) {
            ts += (mode.micro ? 1000 : 1) * UInt64(1 + below(5000))
            let t = below(threadCount)
            let cpu = below(8)
            switch below(4) {
            case 0, 1:
                let r = reasons[below(reasons.count)]
                events.append(Event(kind: .exit, ts: ts, thread: t, cpu: cpu, reason: UInt32(r.value),
                                    rip: 0xffff_ffff_8100_0000 + UInt64(below(1 << 20))))
                ts += (mode.micro ? 1000 : 1) * UInt64(1 + below(5000))
                events.append(Event(kind: .entry, ts: ts, thread: t, cpu: cpu, rip: 0xffff_ffff_8100_0000 + UInt64(below(1 << 20))))
            case 2: events.append(Event(kind: .pio, ts: ts, thread: t, cpu: cpu, port: UInt64(below(0x10000))))
            default: events.append(Event(kind: .user, ts: ts, thread: t, cpu: cpu, reason: UInt32([2, 5, 6][below(3)])))
            }
        }
        return (threads, events)
    }

    /// One line as the mode's program prints it.
    static func line(_ mode: Mode, _ e: Event, _ th: Thread) -> String {
        let sec = e.ts / 1_000_000_000, ns = e.ts % 1_000_000_000
        let frac = mode.micro ? String(format: "%06llu", ns / 1000) : String(format: "%09llu", ns)
        let time = mode == .kernelCounter ? "\(e.ts)" : "\(sec).\(frac)"
        let name = ExitReasonNames.builtinVMX.name(UInt64(e.reason)) ?? "?"
        let user = UserspaceExitNames.builtin.name(UInt64(e.reason)) ?? "?"
        let raw = mode == .traceCmdRaw
        let fields: String
        switch (e.kind, mode) {
        case (.exit, .kernel), (.exit, .kernelTGID), (.exit, .kernelNoIRQ), (.exit, .kernelCounter):
            fields = "vcpu \(th.vcpu) reason \(name) rip 0x\(String(e.rip, radix: 16)) info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000"
        case (.exit, .traceCmdRaw), (.exit, .traceCmdLatency):
            fields = (raw ? "" : "[FAILED TO PARSE] ")
                + "exit_reason=\(e.reason) guest_rip=0x\(String(e.rip, radix: 16)) isa=1 info1=0 info2=0 intr_info=0 error_code=0 vcpu_id=\(th.vcpu) requests=0"
        case (.exit, _):
            fields = "reason \(name) rip 0x\(String(e.rip, radix: 16)) info 0 0"
        case (.entry, _) where raw:
            fields = "vcpu_id=\(th.vcpu) rip=0x\(String(e.rip, radix: 16)) immediate_exit=0 intr_info=0x00000000 error_code=0x00000000"
        case (.entry, .kernel), (.entry, .kernelTGID), (.entry, .kernelNoIRQ), (.entry, .kernelCounter):
            fields = "vcpu \(th.vcpu), rip 0x\(String(e.rip, radix: 16))"
        case (.entry, _):
            fields = "vcpu \(th.vcpu) rip 0x\(String(e.rip, radix: 16))"
        case (.pio, _) where raw:
            fields = "rw=1 port=0x\(String(e.port, radix: 16)) size=1 count=1 val=0x0"
        case (.pio, _):
            fields = "pio_write at 0x\(String(e.port, radix: 16)) size 1 count 1 val 0x0 "
        case (.user, _) where raw:
            fields = "reason=\(e.reason) errno=0"
        case (.user, _):
            fields = "reason \(user) (\(e.reason))"
        }
        let event = e.kind.rawValue
        let cpu = String(format: "%03d", e.cpu)
        let comm = th.comm.count < 16 ? String(repeating: " ", count: 16 - th.comm.count) + th.comm : th.comm
        switch mode {
        case .kernel, .kernelCounter: return "\(comm)-\(th.tid)    [\(cpu)] d..1. \(time): \(event): \(fields)"
        case .kernelTGID: return "\(comm)-\(th.tid)    (\(String(format: "%7d", th.tgid))) [\(cpu)] ..... \(time): \(event): \(fields)"
        case .kernelNoIRQ: return "\(comm)-\(th.tid)    [\(cpu)] \(time): \(event): \(fields)"
        case .traceCmd, .traceCmdNs, .traceCmdRaw:
            return "\(comm)-\(th.tid) [\(cpu)] \(time): \(event):\(String(repeating: " ", count: 22 - event.count))\(fields)"
        case .traceCmdLatency:
            return "\(th.comm.prefix(8))-\(th.tid)   \(e.cpu)d..1.  \(time): \(event): \(fields)"
        case .perf: return "\(comm) \(String(format: "%6d", th.tid)) [\(cpu)] \(time): kvm:\(event): \(fields)"
        case .perfPidTid: return "\(comm) \(th.tgid)/\(th.tid) [\(cpu)] \(time): kvm:\(event): \(fields)"
        case .perfNoCPU: return "\(comm) \(String(format: "%6d", th.tid)) \(time): kvm:\(event): \(fields)"
        case .perfCommOnly: return "\(comm) \(time): kvm:\(event): \(fields)"
        case .perfTimeOnly: return "  \(time): \(event): \(fields)"
        }
    }

    /// The events parsed back, in the generated events' terms.
    static func project(_ r: TextTraceReader, _ threads: [Thread], _ mode: Mode) -> [Event] {
        let names = r.catalog.entries.map(\.name)
        let byTID = Dictionary(uniqueKeysWithValues: threads.enumerated().map { ($0.element.tid, $0.offset) })
        return r.events.map { ev in
            // Without tids, the reader tells threads apart by comm ("CPU n/KVM": its vCPU) or not at all.
            let thread = mode.hasTID ? byTID[ev.tid] ?? -1
                : (r.identities[ev.tid]?.vcpu.map(Int.init) ?? 0)
            var e = Event(kind: Event.Kind(rawValue: names[Int(ev.event)])!, ts: ev.timestamp, thread: thread,
                          cpu: mode.hasCPU ? Int(ev.cpu) : -1)
            switch e.kind {
            case .exit:
                e.reason = ev.reason
                e.rip = ev.rip
                #expect(ev.isa == ISA.vmx.rawValue)
                if mode.exitHasVCPU { #expect(ev.vcpu == threads[max(0, thread)].vcpu) }
            case .entry:
                e.rip = ev.rip
                #expect(ev.vcpu == threads[max(0, thread)].vcpu)
            case .pio: e.port = ev.detail
            case .user: e.reason = ev.reason
            }
            return e
        }
    }

    @Test(arguments: Mode.allCases)
    func randomTracesParseBackExactly(_ mode: Mode) throws {
        for seed in 1...25 as ClosedRange<UInt64> {
            let (threads, events) = Self.generate(seed: seed &* 0x9E37_79B9 &+ UInt64(mode.rawValue.count), mode: mode)
            var text = mode == .kernel ? "# tracer: nop\n#\n" : mode.rawValue.hasPrefix("traceCmd") ? "cpus=8\n" : ""
            for e in events { text += Self.line(mode, e, threads[e.thread]) + "\n" }
            let r = try TextTraceReader(bytes: Array(text.utf8), name: "\(mode) seed \(seed)")
            var expected = events
            if !mode.hasCPU { for i in expected.indices { expected[i].cpu = -1 } }
            if mode == .perfTimeOnly { for i in expected.indices { expected[i].thread = 0 } }
            let got = Self.project(r, threads, mode)
            #expect(got == expected, "\(mode) seed \(seed)")
            #expect(r.records == events.count && r.malformedLines.isEmpty && r.proseLines == 0 && r.joinedLines == 0)
            #expect(r.timestampUnit == (mode == .kernelCounter ? .counterTicks : .nanoseconds))
            #expect(r.hasTGIDs == [.kernelTGID, .perfPidTid].contains(mode))
            if [.kernelTGID, .perfPidTid].contains(mode) {
                #expect(Set(r.identities.values.map(\.vm)) == [threads[0].tgid])
            }
            if got != expected { break }
        }
    }
}
