import CKVMScope
import KVMExits

/// Decodes ring-buffer sub-buffers (from trace_pipe_raw, a trace.dat, or bytes built in a test) into events.
/// Owned by one thread at a time.
public final class SubbufferDecoder {
    let handle: OpaquePointer
    public private(set) var stats = ckvmscope_decode_stats()
    var records: [ckvmscope_record] = []

    init(layouts: [ckvmscope_event_layout], longSize: Int, bigEndian: Bool) {
        guard let h = layouts.withUnsafeBufferPointer({
            ckvmscope_decoder_new($0.baseAddress, $0.count, Int32(longSize), bigEndian ? 1 : 0)
        }) else { fatalError("out of memory") }
        handle = h
    }

    deinit { ckvmscope_decoder_free(handle) }

    /// Tests: walk every sub-buffer with libtraceevent's kbuffer, the reference for the inline walk.
    public func useKbuffer(_ on: Bool) {
        ckvmscope_decoder_use_kbuffer(handle, on ? 1 : 0)
    }

    public var missedEvents: UInt64 { stats.missed_events }
    public var missedUnknown: UInt64 { stats.missed_unknown }
    public var corruptSubbuffers: UInt64 { stats.corrupt }
    public var ignoredEvents: UInt64 { stats.ignored }

    /// Decodes one sub-buffer into ``records``. Returns how many it holds, or -1 when it is malformed.
    private func decodeRecords(_ bytes: UnsafeRawBufferPointer, cpu: UInt16) -> Int {
        let cap = Int(ckvmscope_max_records(UInt32(bytes.count)))
        if records.count < cap { records = [ckvmscope_record](repeating: ckvmscope_record(), count: cap) }
        return Int(records.withUnsafeMutableBufferPointer {
            ckvmscope_decode_subbuf(handle, bytes.baseAddress, UInt32(bytes.count), cpu, $0.baseAddress, UInt32(cap),
                                    &stats)
        })
    }

    /// Decodes one sub-buffer and hands each event to `body`. Returns false if the sub-buffer is malformed.
    @discardableResult
    public func decode(_ bytes: UnsafeRawBufferPointer, cpu: UInt16, _ body: (TraceEvent) -> Void) -> Bool {
        let n = decodeRecords(bytes, cpu: cpu)
        guard n >= 0 else { return false }
        records.withUnsafeBufferPointer { buf in
            for i in 0..<Int(n) { body(TraceEvent(buf[i])) }
        }
        return true
    }

    /// Decodes one sub-buffer and appends its events to `batch` (a stream's batch: no closure per event).
    /// Returns false if the sub-buffer is malformed.
    @discardableResult
    public func decode(_ bytes: UnsafeRawBufferPointer, cpu: UInt16, appendingTo batch: inout [TraceEvent]) -> Bool {
        let n = decodeRecords(bytes, cpu: cpu)
        guard n >= 0 else { return false }
        guard Self.recordIsEvent else {
            batch.reserveCapacity(batch.count + Int(n))
            records.withUnsafeBufferPointer { buf in
                for i in 0..<Int(n) { batch.append(TraceEvent(buf[i])) }
            }
            return true
        }
        // The C record and TraceEvent have the same layout: one bulk copy, no per-event conversion or append.
        records.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: TraceEvent.self) { events in
                batch.append(contentsOf: UnsafeBufferPointer(rebasing: events[0..<Int(n)]))
            }
        }
        return true
    }

    /// Whether a C record is field for field a ``TraceEvent`` (same offsets, same stride): then records are
    /// copied in bulk.
    static let recordIsEvent: Bool = {
        typealias E = TraceEvent
        let offsets: [Int?] = [
            MemoryLayout<E>.offset(of: \E.timestamp), MemoryLayout<E>.offset(of: \E.rip),
            MemoryLayout<E>.offset(of: \E.detail), MemoryLayout<E>.offset(of: \E.tid),
            MemoryLayout<E>.offset(of: \E.event), MemoryLayout<E>.offset(of: \E.cpu),
            MemoryLayout<E>.offset(of: \E.reason), MemoryLayout<E>.offset(of: \E.vcpu),
            MemoryLayout<E>.offset(of: \E.aux), MemoryLayout<E>.offset(of: \E.aux2),
            MemoryLayout<E>.offset(of: \E.isa), MemoryLayout<E>.offset(of: \E.flags),
        ]
        return MemoryLayout<E>.stride == MemoryLayout<ckvmscope_record>.stride
            && offsets == [0, 8, 16, 24, 28, 30, 32, 36, 40, 44, 46, 47]
    }()

    /// Convenience for tests: every event of the sub-buffers in `data`, each `subbufSize` bytes, of one CPU.
    public func decodeAll(_ data: [UInt8], subbufSize: Int, cpu: UInt16) -> [TraceEvent] {
        var out: [TraceEvent] = []
        data.withUnsafeBytes { raw in
            var off = 0
            while off + subbufSize <= raw.count {
                decode(UnsafeRawBufferPointer(rebasing: raw[off..<off + subbufSize]), cpu: cpu) { out.append($0) }
                off += subbufSize
            }
        }
        return out
    }
}

extension TraceEvent {
    @inlinable
    init(_ r: ckvmscope_record) {
        self.init(timestamp: r.ts, rip: r.rip, detail: r.detail, tid: r.tid, event: r.event, cpu: r.cpu,
                  reason: r.reason, vcpu: r.vcpu, aux: r.aux, aux2: r.aux2, isa: r.isa, flags: r.flags)
    }
}
