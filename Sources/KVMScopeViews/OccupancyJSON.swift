import KVMExits

extension SummaryJSON {
    /// The aggregate's occupancy as `stat --json` prints it under "occupancy": `live_threads` and
    /// `live_series` (held now), `retired_threads` (since the start), `retired_rows` (VM × vCPU rows of
    /// retired threads kept), `folded_vms` (stopped VMs summed into VM -1, "other"). Source: ``Occupancy``.
    public static func occupancy(_ o: Occupancy) -> JSONValue {
        .object([
            ("live_threads", .int(Int64(o.liveThreads))), ("live_series", .int(Int64(o.liveSeries))),
            ("retired_threads", .uint(o.retiredThreads)), ("retired_rows", .int(Int64(o.retiredRows))),
            ("folded_vms", .uint(o.foldedVMs)),
        ])
    }
}
