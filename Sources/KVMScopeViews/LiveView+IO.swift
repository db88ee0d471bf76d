import KVMAnalysis
import KVMExits

extension LiveView {
    /// `i`: one row per port or MMIO address and direction (perf's key, `0x3f8:POUT`, `0xfee000b0:W`) and the
    /// device that owns it, summed over the VMs the state keeps (`p`/`g`); the regex filter (`f`) applies to
    /// the row's text, and `--event ioport|mmio` keeps that space's rows only. Total, %Total and CurAvg/s as the event rows have them; no latency columns (live,
    /// each CPU's reader sees its events alone: handling times come from `report`).
    static func ioRows(_ frame: LiveFrame, state: LiveViewState) -> [LiveRow] {
        func rows(_ s: Summary) -> [String: (name: String, total: UInt64)] {
            var out: [String: (name: String, total: UInt64)] = [:]
            for r in s.ioAccesses.rows where state.ioSpaces.isEmpty || state.ioSpaces.contains(r.space) {
                let device = r.device ?? "unknown"
                let id = "io:\(r.key):\(device)"
                // The key under "Port/Address", the device under "Device" (a longer key pushes it right).
                out[id, default: (pad(r.key, 13) + " " + device.terminalSafe, 0)].total += r.count
            }
            return out
        }
        let regex = state.fields.flatMap { try? Regex($0) }
        let now = rows(frame.current).filter { regex == nil || $0.value.name.firstMatch(of: regex!) != nil }
        let before = frame.previous.map(rows)
        let grand = now.values.reduce(0) { $0 + $1.total }
        let out = now.map { id, v in
            LiveRow(id: id, name: v.name, isChild: false, total: v.total, percent: pct(v.total, grand),
                    delta: before.map { v.total &- ($0[id]?.total ?? 0) }, latency: nil, blocked: false, rips: [],
                    pid: nil)
        }
        return sorted(out, byTotal: state.sortByTotal)
    }
}
