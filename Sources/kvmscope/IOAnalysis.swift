import KVMExits

/// perf kvm stat's analyses (`--event vmexit|ioport|mmio`), as `report` and `stat` take them.
///
/// `report --event` is perf's option as is. `stat --event NAME` already names the kvm events to trace (and is
/// shared with live, top, serve and record); perf's three analysis names are no kvm event's, so `stat` takes
/// them in the same option: `stat --event ioport` prints the per-port table after the summary, `live --event
/// ioport` opens on the `i` rows (each adds its events to those traced when other events are named; with none
/// named every kvm event is traced).
enum IOAnalysis: String, CaseIterable {
    case vmexit, ioport, mmio

    /// The analyses among `--event` values.
    static func analyses(_ values: [String]) -> [IOAnalysis] {
        var out: [IOAnalysis] = []
        for v in values { if let a = IOAnalysis(rawValue: v), !out.contains(a) { out.append(a) } }
        return out
    }

    /// The kvm events among `--event` values, plus those the analyses need when any kvm event is named
    /// (none named: every kvm event is traced, the analyses' included).
    static func tracedEvents(_ values: [String]) -> [String] {
        var events = values.filter { IOAnalysis(rawValue: $0) == nil }
        guard !events.isEmpty else { return [] }
        for a in analyses(values) {
            for e in a.events where !events.contains(e) { events.append(e) }
        }
        return events
    }

    /// The tracepoints an analysis reads (its begin and end events, as perf's).
    var events: [String] {
        switch self {
        case .vmexit: ["kvm_exit", "kvm_entry"]
        case .ioport: ["kvm_pio", "kvm_entry"]
        case .mmio: ["kvm_mmio", "kvm_exit", "kvm_entry"]
        }
    }

    var space: DeviceMap.Space? {
        switch self {
        case .vmexit: nil
        case .ioport: .port
        case .mmio: .mmio
        }
    }
}

extension Array where Element == IOAnalysis {
    /// The address spaces of the ioport and mmio analyses chosen, in order.
    var spaces: [DeviceMap.Space] { compactMap(\.space) }
}
