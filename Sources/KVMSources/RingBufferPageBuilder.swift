import KVMExits

/// Builds ring-buffer sub-buffers byte for byte as the kernel writes them (64-bit, little-endian):
/// a page header (u64 timestamp, u64 commit), then events with 4-byte headers (5-bit type_len,
/// 27-bit time delta), time-extend events for long gaps, data-length words for large payloads.
///
/// Used by tests (known events at known times), `kvmscope bench synth` and benchmarks.
public struct RingBufferPageBuilder {
    public let subbufSize: Int
    public private(set) var pages: [[UInt8]] = []
    var current: [UInt8] = []
    var lastTS: UInt64 = 0
    var missedNext: UInt64?

    static let headerSize = 16
    static let maxDelta: UInt64 = (1 << 27) - 1

    public init(subbufSize: Int = 4096) {
        self.subbufSize = subbufSize
    }

    /// Marks the next page as following `count` lost events (the kernel's RB_MISSED_EVENTS, with the
    /// count stored after the data, RB_MISSED_STORED).
    public mutating func markLost(_ count: UInt64) {
        closePage()
        missedNext = count
    }

    /// Ends the current page: the next event starts a new one.
    public mutating func breakPage() {
        closePage()
    }

    /// Appends one event whose payload (starting with the 8-byte common header) is `payload`.
    public mutating func append(timestamp: UInt64, payload: [UInt8]) {
        let dataLen = (payload.count + 3) & ~3
        let small = dataLen <= 112
        let eventSize = 4 + (small ? 0 : 4) + dataLen
        let needsExtend = !current.isEmpty && timestamp &- lastTS > Self.maxDelta
        let reserve = (missedNext != nil ? 8 : 0)
        if current.isEmpty || current.count + eventSize + (needsExtend ? 8 : 0) + reserve > subbufSize {
            closePage()
            openPage(timestamp: timestamp)
        }
        var delta = timestamp &- lastTS
        if delta > Self.maxDelta {
            // Time extend: type_len 30, low 27 bits in the header, the rest in the next word.
            appendU32(30 | UInt32(delta & Self.maxDelta) << 5)
            appendU32(UInt32(truncatingIfNeeded: delta >> 27))
            delta = 0
        }
        let typeLen: UInt32 = small ? UInt32(dataLen / 4) : 0
        appendU32(typeLen | UInt32(delta) << 5)
        if !small { appendU32(UInt32(dataLen + 4)) }
        current.append(contentsOf: payload)
        current.append(contentsOf: repeatElement(0, count: dataLen - payload.count))
        lastTS = timestamp
    }

    /// Appends an event the kernel discarded after writing it (`rb_event_discard`, as an instance's event filter
    /// does): a padding header (type_len 29, the event's time delta) whose next word is the `dataLength` bytes that
    /// follow the header, a multiple of 4 in every kernel-written page. Readers walk over it.
    public mutating func appendDiscarded(dataLength: Int, timestamp: UInt64) {
        if current.isEmpty || current.count + 4 + dataLength + (missedNext != nil ? 8 : 0) > subbufSize {
            closePage()
            openPage(timestamp: timestamp)
        }
        // Its delta is kept (1 where it was 0: a zero delta marks a page's tail padding); the next event's
        // delta counts from it. (Gaps past 2^27 ns before a discarded event are not modelled.)
        let delta = max(1, min(timestamp &- lastTS, Self.maxDelta))
        appendU32(29 | UInt32(delta) << 5)
        appendU32(UInt32(dataLength))
        lastTS &+= delta
        current.append(contentsOf: repeatElement(0xee, count: max(0, dataLength - 4)))
    }

    /// The pages closed so far, handed over and forgotten (the open page stays): lets a generator stream
    /// any number of events through one page of memory.
    public mutating func takeFinishedPages() -> [[UInt8]] {
        guard !pages.isEmpty else { return [] }
        defer { pages.removeAll(keepingCapacity: true) }
        return pages
    }

    /// All pages, the last one closed. Each is exactly `subbufSize` bytes.
    public mutating func finish() -> [[UInt8]] {
        closePage()
        return pages
    }

    mutating func openPage(timestamp: UInt64) {
        current = [UInt8](repeating: 0, count: Self.headerSize)
        current.reserveCapacity(subbufSize)
        withUnsafeBytes(of: timestamp.littleEndian) { current.replaceSubrange(0..<8, with: $0) }
        lastTS = timestamp
    }

    mutating func closePage() {
        guard !current.isEmpty else { return }
        var commit = UInt64(current.count - Self.headerSize)
        if let missed = missedNext {
            withUnsafeBytes(of: missed.littleEndian) { current.append(contentsOf: $0) }
            commit |= 1 << 31 | 1 << 30
            missedNext = nil
        }
        withUnsafeBytes(of: commit.littleEndian) { current.replaceSubrange(8..<16, with: $0) }
        current.append(contentsOf: repeatElement(0, count: max(0, subbufSize - current.count)))
        pages.append(current)
        current = []
    }

    mutating func appendU32(_ v: UInt32) {
        withUnsafeBytes(of: v.littleEndian) { current.append(contentsOf: $0) }
    }
}

/// An event payload laid out by the event's format: fields set by name, at the kernel's offsets.
public struct EventPayloadBuilder {
    public let kernelID: Int32
    let fields: [String: (offset: Int, size: Int)]
    public let size: Int

    /// - Parameters: formats: where the event's format was parsed; event: its name.
    public init(formats: EventFormats, event: String) throws {
        guard let id = formats.kernelIDs.first(where: { $0.key.hasSuffix(":" + event) })?.value else {
            throw KVMScopeError.unknownEvent("no format for \(event)")
        }
        kernelID = id
        fields = formats.fieldTable(kernelID: id)
        size = fields.values.map { $0.offset + $0.size }.max() ?? 8
    }

    /// The payload bytes: common_type and common_pid set, other fields by name (absent names ignored).
    public func payload(pid: Int32, _ values: [String: UInt64]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        put(&bytes, offset: 0, size: 2, UInt64(UInt16(truncatingIfNeeded: kernelID)))
        put(&bytes, offset: 4, size: 4, UInt64(UInt32(bitPattern: pid)))
        for (name, v) in values {
            guard let f = fields[name] else { continue }
            put(&bytes, offset: f.offset, size: f.size, v)
        }
        return bytes
    }

    public func has(_ field: String) -> Bool { fields[field] != nil }

    func put(_ bytes: inout [UInt8], offset: Int, size: Int, _ v: UInt64) {
        for i in 0..<min(size, 8) { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }
}
