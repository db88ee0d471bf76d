import KVMAnalysis
import KVMExits

/// One storm alert as one line of JSON on stdout (`kvmscope watch`, `kvmscope serve --alert`).
///
/// `{"ts":"2026-11-26T21:14:47.759Z","state":"firing","rule":"rate(kvm_pio) > 1000/s for 1s","vm":4242,
/// "vm_name":"web01","vcpu":null,"reason":"kvm_pio","value":40213.5,"threshold":1000.0,"unit":"/s",
/// "top_rips":[{"rip":"0xffffffff81000010","count":1200}]}`
///
/// `value` and `threshold` are per second for rates, nanoseconds for percentiles and `disk_latency`, % for
/// `cpu` and `wait`
/// (`unit` says which);
/// `value` is null when the interval had no data (a latency rule resolving because no exit was handled).
public enum StormAlertJSON {
    /// - Parameter timestamp: the alert's time, ISO 8601 (the caller formats its clock).
    public static func line(_ a: StormAlert, timestamp: String) -> String {
        let unit: String
        switch a.rule.function {
        case .rate: unit = "/s"
        case .percentile, .diskLatency: unit = "ns"
        case .cpu, .wait: unit = "%"
        }
        return JSONValue.object([
            ("ts", .string(timestamp)), ("state", .string(a.state.rawValue)), ("rule", .string(a.rule.text)),
            ("vm", .int(Int64(a.vm))), ("vm_name", .optional(a.vmName)), ("vcpu", .optional(a.vcpu)),
            ("reason", .string(a.reason)), ("value", a.value.map { .double(($0 * 1000).rounded() / 1000) } ?? .null),
            ("threshold", .double(a.threshold)), ("unit", .string(unit)),
            ("top_rips", .array(a.topRIPs.map {
                .object([("rip", .string("0x" + String($0.rip, radix: 16))), ("count", .uint($0.count))])
            })),
        ]).serialized()
    }
}
