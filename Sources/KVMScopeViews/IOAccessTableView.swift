import KVMAnalysis
import KVMExits

/// `perf kvm stat report --event=ioport` and `--event=mmio` tables, per VM, each row named by its device:
/// perf's columns (access key, Samples, Samples%, Time%, Min Time, Max Time, Avg time ± relative standard
/// error), with the device after the key and the rate per second at the end; MMIO tables also count the
/// reads the kernel handed to the VMM. Sorted by samples, as perf sorts (`--key sample`).
public enum IOAccessTableView {
    /// perf's title of each analysis.
    public static func title(_ space: DeviceMap.Space) -> String { space == .port ? "IO Port Access" : "MMIO Access" }

    /// - Parameter deviceWidth: the Device column's width (``deviceWidth(_:)``): 28, wider for longer names.
    public static func header(_ space: DeviceMap.Space, deviceWidth: Int = 28) -> String {
        var h = StatTable.pad(title(space), 22) + StatTable.pad("Device", deviceWidth) + StatTable.lpad("Samples", 9)
            + StatTable.lpad("Samples%", 10) + StatTable.lpad("Time%", 9) + StatTable.lpad("Min Time", 11)
            + StatTable.lpad("Max Time", 11) + StatTable.lpad("Avg time", 24) + StatTable.lpad("Rate/s", 10)
        if space == .mmio { h += StatTable.lpad("To VMM", 9) }
        return h
    }

    /// The tables of one space for every VM of `s`, over `seconds` (for Rate/s); at most `top` rows each.
    public static func render(_ s: Summary, space: DeviceMap.Space, seconds: Double, top: Int? = nil) -> [String] {
        let rows = s.ioAccesses.rows(space)
        var lines: [String] = []
        var order: [Int32] = []
        var groups: [Int32: [IOAccessSummaryRow]] = [:]
        for r in rows {
            if groups[r.vm] == nil { order.append(r.vm) }
            groups[r.vm, default: []].append(r)
        }
        if order.isEmpty { lines.append(space == .port ? "No kvm_pio events." : "No kvm_mmio events.") }
        for vm in order {
            let g = groups[vm]!
            var t = "VM \(vm)"
            if let name = g[0].vmName { t += " (\(name.terminalSafe))" }
            if !lines.isEmpty { lines.append("") }
            lines.append(t + ", all vCPUs: " + title(space))
            lines += table(g, space: space, seconds: seconds, top: top)
        }
        let overflow = s.ioAccesses.overflow(space)
        if overflow > 0 {
            lines.append("\(overflow) \(space == .port ? "kvm_pio" : "kvm_mmio") events beyond the per-address table "
                         + "(counted in the event totals, not attributed to a \(space == .port ? "port" : "address"))")
        }
        return lines
    }

    /// The Device column's width for `rows`: 28, or the longest name and a space (a memory tree's
    /// `virtio-disk0 vda notify (virtio-blk 00:02.0 BAR4)`), at most 64; longer names are cut.
    public static func deviceWidth(_ rows: [IOAccessSummaryRow]) -> Int {
        min(64, max(28, rows.reduce(0) { max($0, ($1.device ?? "unknown").terminalSafe.count + 1) }))
    }

    /// One VM's table: header, rows (by samples, then key), total, and what the times are.
    public static func table(_ rows: [IOAccessSummaryRow], space: DeviceMap.Space, seconds: Double,
                             top: Int? = nil) -> [String] {
        let sorted = rows.sorted { ($0.count, $1.address, $1.direction.rawValue) > ($1.count, $0.address, $0.direction.rawValue) }
        let total = rows.reduce(0) { $0 + $1.count }
        let time = rows.reduce(UInt64(0)) { $0 &+ $1.sum }
        let timed = rows.reduce(UInt64(0)) { $0 + $1.timed }
        let width = deviceWidth(Array(sorted.prefix(top ?? .max)))
        var lines = [header(space, deviceWidth: width)]
        for r in sorted.prefix(top ?? .max) {
            lines.append(row(r, space: space, total: total, time: time, seconds: seconds, deviceWidth: width))
        }
        if let top, sorted.count > top {
            let rest = sorted.dropFirst(top).reduce(0) { $0 + $1.count }
            lines.append(StatTable.pad("(\(sorted.count - top) more)", 22 + width) + StatTable.lpad(String(rest), 9)
                         + StatTable.lpad(Durations.percent(Double(rest), of: Double(total)), 10))
        }
        var totalLine = StatTable.pad("Total", 22 + width) + StatTable.lpad(String(total), 9) + StatTable.lpad("100.00%", 10)
            + StatTable.lpad(time > 0 ? "100.00%" : "-", 9) + String(repeating: " ", count: 46)
            + StatTable.lpad(rate(total, seconds), 10)
        if space == .mmio { totalLine += StatTable.lpad(String(rows.reduce(0) { $0 + $1.toVMM }), 9) }
        lines.append(totalLine)
        lines.append(space == .port
            ? "time: kvm_pio to the vCPU's next kvm_entry, \(timed) of \(total) accesses timed (\(Durations.adaptive(time)))"
            : "time: writes from kvm_mmio to the next kvm_entry, reads from kvm_exit to kvm_mmio read; "
                + "\(timed) of \(total) accesses timed (\(Durations.adaptive(time)))")
        return lines
    }

    static func row(_ r: IOAccessSummaryRow, space: DeviceMap.Space, total: UInt64, time: UInt64,
                    seconds: Double, deviceWidth: Int = 28) -> String {
        let device = String((r.device ?? "unknown").terminalSafe.prefix(deviceWidth - 1))
        var line = StatTable.pad(r.key, 22) + StatTable.pad(device, deviceWidth) + StatTable.lpad(String(r.count), 9)
            + StatTable.lpad(Durations.percent(Double(r.count), of: Double(total)), 10)
        if let mean = r.mean {
            line += StatTable.lpad(Durations.percent(Double(r.sum), of: Double(time)), 9)
                + StatTable.lpad(Durations.us(Double(r.min)), 11) + StatTable.lpad(Durations.us(Double(r.max)), 11)
                + StatTable.lpad(Durations.us(mean) + " ( +-" + StatTable.lpad(Durations.fixed2(r.relativeStandardError), 7)
                                 + "% )", 24)
        } else {
            line += StatTable.lpad("-", 9) + StatTable.lpad("-", 11) + StatTable.lpad("-", 11) + StatTable.lpad("-", 24)
        }
        line += StatTable.lpad(rate(r.count, seconds), 10)
        if space == .mmio { line += StatTable.lpad(String(r.toVMM), 9) }
        return line
    }

    static func rate(_ n: UInt64, _ seconds: Double) -> String {
        seconds > 0 ? String(UInt64(saturating: (Double(n) / seconds).rounded())) : "-"
    }

    /// The JSON of ``Summary/ioAccesses``: `{"ports": [row], "mmio": [row], "overflow": {"port": n, "mmio": n}}`,
    /// each row `vm`, `vm_name`, `key` (perf's), `address` (number), `direction` ("read"/"write"), `device`
    /// ("unknown" when no range holds it), `count`, `to_vmm` (MMIO only), `time_ns` (null, or `count`,
    /// `sum`, `min`, `mean`, `max`, `rel_stderr_pct`).
    public static func json(_ s: IOAccessSummary) -> JSONValue {
        func row(_ r: IOAccessSummaryRow) -> JSONValue {
            var f: [(String, JSONValue)] = [
                ("vm", .int(Int64(r.vm))), ("vm_name", .optional(r.vmName)), ("key", .string(r.key)),
                ("address", .uint(r.address)), ("direction", .string(r.direction == .write ? "write" : "read")),
                ("device", .string(r.device ?? "unknown")), ("count", .uint(r.count)),
            ]
            if r.space == .mmio { f.append(("to_vmm", .uint(r.toVMM))) }
            if let mean = r.mean {
                f.append(("time_ns", .object([
                    ("count", .uint(r.timed)), ("sum", .uint(r.sum)), ("min", .uint(r.min)),
                    ("mean", .double((mean * 10).rounded() / 10)), ("max", .uint(r.max)),
                    ("rel_stderr_pct", .double((r.relativeStandardError * 100).rounded() / 100)),
                ])))
            } else {
                f.append(("time_ns", .null))
            }
            return .object(f)
        }
        return .object([
            ("ports", .array(s.rows(.port).map(row))), ("mmio", .array(s.rows(.mmio).map(row))),
            ("overflow", .object([("port", .uint(s.overflow.port)), ("mmio", .uint(s.overflow.mmio))])),
        ])
    }
}
