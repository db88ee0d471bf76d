import Foundation
import FuzzSupport
import KVMSources

// trace.dat bytes → TraceDatReader (header, v6 sections, v7 options and sections, zlib/zstd blocks, buffers,
// per-CPU pages through the C decoder) → the offline analysis and every view of it. A bad file must throw
// one line naming the file; nothing may crash, hang or read out of bounds.
//
// KVMSCOPE_FUZZ_WRITE_SEEDS=DIR: write synthetic v6 seeds (one per kernel of Tests/Fixtures/formats) to DIR
// and exit; `make fuzz` converts them to v7 (none, zstd) with trace-cmd. With KVMSCOPE_FUZZ_SUBBUF_SEEDS=DIR2
// also the C decoder target's seeds: 6.18 sub-buffers (exits, entries, pio, large events, time extends,
// losses) behind its two mode bytes (inline walk, kbuffer walk; 4 KiB).

if let dir = ProcessInfo.processInfo.environment["KVMSCOPE_FUZZ_WRITE_SEEDS"] {
    let formats = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../Tests/Fixtures/formats")
    for (n, kernel) in ["6.18-x86", "6.8-x86", "5.10-x86", "4.19-x86", "5.15-arm64"].enumerated() {
        let f = EventFormats()
        for e in ["kvm_exit", "kvm_entry"] {
            try! f.add(system: "kvm", format: String(contentsOf: formats.appendingPathComponent("\(kernel)/\(e).format"), encoding: .utf8))
        }
        let cpus = 1 + n % 3
        try! SyntheticWorkload(threads: cpus, hostCPUs: cpus, vcpusPerVM: cpus, seed: UInt64(n + 1))
            .writeTraceDat(to: "\(dir)/synthetic-\(kernel)-v6.dat", formats: f, eventsPerCPU: (40 + 60 * n) / cpus)
    }
    if let subbufDir = ProcessInfo.processInfo.environment["KVMSCOPE_FUZZ_SUBBUF_SEEDS"] {
        let f = EventFormats()
        for e in ["kvm_exit", "kvm_entry", "kvm_pio"] {
            try! f.add(system: "kvm", format: String(contentsOf: formats.appendingPathComponent("6.18-x86/\(e).format"), encoding: .utf8))
        }
        let exit = try! EventPayloadBuilder(formats: f, event: "kvm_exit")
        let entry = try! EventPayloadBuilder(formats: f, event: "kvm_entry")
        let pio = try! EventPayloadBuilder(formats: f, event: "kvm_pio")
        var b = RingBufferPageBuilder()
        var ts: UInt64 = 1_000
        for i in 0..<300 {
            ts += i % 50 == 49 ? 5_000_000_000 : 700
            switch i % 4 {
            case 0: b.append(timestamp: ts, payload: exit.payload(pid: 7, ["exit_reason": UInt64(i % 60), "isa": 1, "guest_rip": UInt64(i), "info1": 3, "vcpu_id": 1]))
            case 1: b.append(timestamp: ts, payload: entry.payload(pid: 7, ["vcpu_id": 1, "rip": UInt64(i)]))
            case 2: b.append(timestamp: ts, payload: pio.payload(pid: 7, ["port": 0x3f8, "size": 1, "rw": 1]))
            default: b.append(timestamp: ts, payload: exit.payload(pid: 8, ["exit_reason": 48, "isa": 1]) + [UInt8](repeating: 0xab, count: 40 + i % 90))
            }
            if i % 97 == 96 { b.markLost(UInt64(i)) }
        }
        for (n, page) in b.finish().prefix(3).enumerated() {
            for (mode, name) in [(0, "inline"), (4, "kbuffer")] {
                FileManager.default.createFile(atPath: "\(subbufDir)/page\(n)-\(name)", contents: Data([UInt8(mode), 0] + page))
            }
        }
    }
    exit(0)
}

let input = InputFile(name: "trace.dat")

Fuzz.run { data, size in
    input.write(data, size)
    do {
        let reader = try TraceDatReader(path: input.path)
        try Fuzz.analyse(reader)
    } catch {
        Fuzz.checkError(error, naming: input.path)
    }
}
