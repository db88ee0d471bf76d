import Foundation
import KVMResources
import Testing
import TestSupport

/// QMPMonitor against a QMP server in the test (a real unix socket): replies captured from QEMU 7.2's
/// `query-blockstats` (a libvirt-style `-drive if=none,id=drive-virtio-disk0 -device
/// virtio-blk-pci,drive=drive-virtio-disk0,id=virtio-disk0`), garbage, a close, and silence.
@Suite(.serialized) struct QMPMonitorTests {
    /// QEMU 7.2's greeting line, as sent (CRLF).
    static let greeting = #"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#

    /// One `query-blockstats` return value, captured (the parent node and some counters cut; names and shape as QEMU sends them).
    static func blockstats(rdOps: Int, wrOps: Int, rdBytes: Int, wrBytes: Int, rdNs: Int, wrNs: Int) -> String {
        ##"[{"device": "drive-virtio-disk0", "parent": {"stats": {"rd_operations": 0}, "node-name": "#block070"}, "stats": {"unmap_operations": 0, "flush_total_time_ns": 0, "wr_highest_offset": 8192, "wr_total_time_ns": "##
            + "\(wrNs)" + ##", "failed_wr_operations": 0, "wr_merged": 0, "wr_bytes": "## + "\(wrBytes)"
            + ##", "timed_stats": [], "account_invalid": true, "rd_total_time_ns": "## + "\(rdNs)"
            + ##", "flush_operations": 0, "wr_operations": "## + "\(wrOps)" + ##", "rd_merged": 0, "rd_bytes": "## + "\(rdBytes)"
            + ##", "idle_time_ns": 1234, "rd_operations": "## + "\(rdOps)"
            + ##"}, "node-name": "#block107", "qdev": "/machine/peripheral/virtio-disk0/virtio-backend"}]"##
    }

    /// A `query-cpus-fast` return value of a 2-vCPU x86 QEMU (machine.json CpuInfoFast; thread ids made up).
    static let cpusFast = #"[{"thread-id": 25627, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}, {"thread-id": 25628, "props": {"core-id": 0, "thread-id": 0, "socket-id": 1}, "qom-path": "/machine/unattached/device[1]", "cpu-index": 1, "target": "x86_64"}]"#

    /// Answers each command line: its `id` back, the return value `reply(command)` gives (nil: a QMP error).
    static func answer(_ fd: Int32, _ reply: (String) -> String?) -> Bool {
        guard let line = readLine(fd), let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let command = obj["execute"] as? String else { return false }
        let id = (obj["id"] as? NSNumber)?.stringValue ?? "null"
        // An event first: the client must skip it.
        sendLine(fd, #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#)
        if let r = reply(command) {
            sendLine(fd, #"{"return": "# + r + #", "id": "# + id + "}")
        } else {
            sendLine(fd, #"{"id": "# + id + #", "error": {"class": "CommandNotFound", "desc": "The command "# + command + #" has not been found"}}"#)
        }
        return true
    }

    @Test func countsDeltasAndLatencyFromCapturedReplies() throws {
        let path = socketPath("ok")
        let readings = Locked<[String: String]>([:])
        let done = Locked(false)
        let results = onThreads([
            { @Sendable () -> [QMPSample] in
                serve(path, until: done) { _, fd in
                    sendLine(fd, Self.greeting)
                    var n = 0, cpus = 0
                    while Self.answer(fd, { c in
                        switch c {
                        case "qmp_capabilities": return "{}"
                        case "query-cpus-fast":
                            cpus += 1
                            readings.set(readings.get().merging(["cpus asked": "\(cpus)"]) { $1 })
                            return Self.cpusFast
                        case "query-blockstats":
                            n += 1
                            return n == 1
                                ? Self.blockstats(rdOps: 617, wrOps: 615, rdBytes: 2_523_648, wrBytes: 2_519_040, rdNs: 1_070_557_194, wrNs: 3_135_977_627)
                                : Self.blockstats(rdOps: 684, wrOps: 682, rdBytes: 2_798_080, wrBytes: 2_793_472, rdNs: 1_204_282_622, wrNs: 3_594_286_560)
                        case "query-memory-size-summary": return #"{"base-memory": 16777216, "plugged-memory": 0}"#
                        // A memory tree without ranges (MemoryTreeTests reads a whole one).
                        case "human-monitor-command": return #""FlatView #0\r\n AS \"I/O\", root: io\r\n Root memory region: io\r\n""#
                        case "query-balloon": return nil  // no balloon device: DeviceNotActive in QEMU, any error here
                        case "query-status": return #"{"status": "paused", "singlestep": false, "running": false}"#
                        case "query-stats":
                            return #"[{"provider": "kvm", "qom-path": "/machine/unattached/device[0]", "stats": [{"name": "exits", "value": 240}, {"name": "guest_mode", "value": false}, {"name": "halt_wait_hist", "value": [0, 1]}]}]"#
                        default: return nil
                        }
                    }) {}
                }
                return []
            },
            { @Sendable () -> [QMPSample] in
                defer { done.set(true) }
                guard waitForSocket(path) else { return [] }
                let m = QMPMonitor(path: path, timeout: 5)
                let a = m.read(), b = m.read()
                readings.set(readings.get().merging(["pid": "\(b.pid ?? -1)", "warnings": "\([a.warning, b.warning].compactMap { $0 })"]) { $1 })
                return [a.sample, b.sample]
            },
        ], timeout: 60)
        let samples = results[1]
        try #require(samples.count == 2)
        #expect(readings.get()["pid"] == "\(getpid())")  // SO_PEERCRED: the process that listens
        #expect(readings.get()["warnings"] == "[]")
        // Asked when the connection opened, not again (no thread set given): the map in both readings.
        #expect(readings.get()["cpus asked"] == "1")
        let first = samples[0], second = samples[1]
        #expect(first.vcpuThreads == [25627: 0, 25628: 1])
        #expect(second.vcpuThreads == [25627: 0, 25628: 1])
        #expect(first.problem == nil)
        #expect(first.disks.map(\.device) == ["virtio-disk0"])
        #expect(first.disks[0].drive == "drive-virtio-disk0")
        #expect(first.disks[0].qdev == "/machine/peripheral/virtio-disk0/virtio-backend")
        #expect(first.disks[0].total.readRequests == 617)
        #expect(first.disks[0].total.writeBytes == 2_519_040)
        #expect(first.disks[0].delta == nil)
        #expect(first.configuredMemoryBytes == 16_777_216)
        #expect(first.balloonActualBytes == nil)
        #expect(first.runState == "paused" && first.running == false)
        // Numbers only: booleans and histograms are left out; vCPUs summed.
        #expect(second.kvmVCPUStats == ["exits": 240])
        let d = try #require(second.disks.first?.delta)
        #expect(d.readRequests == 67)
        #expect(d.writeRequests == 67)
        #expect(d.readBytes == 274_432)
        #expect(d.writeBytes == 274_432)
        #expect(d.readTimeNanoseconds == 133_725_428)
        #expect(d.writeTimeNanoseconds == 458_308_933)
        // Average time per request over the interval: Δrd_total_time_ns / Δrd_operations.
        #expect(d.readLatencyNanoseconds == 133_725_428.0 / 67)
        #expect(d.writeLatencyNanoseconds == 458_308_933.0 / 67)
        #expect(d.latencyNanoseconds == (133_725_428.0 + 458_308_933.0) / 134)
        #expect(DiskCounts().readLatencyNanoseconds == nil)
    }

    /// `query-cpus-fast` is asked again only when the VM's thread set changes; a reply of another shape gives one
    /// warning and no map until the set changes; a refusal (QEMU before 2.12) one warning, never asked again.
    @Test func cpusFastFollowsTheThreadSet() throws {
        let odd = socketPath("cpus-odd"), refusing = socketPath("cpus-refused")
        let asked = Locked<[String: Int]>([:])
        let done = Locked(false)
        func script(_ path: String) -> @Sendable () -> [String] {
            { @Sendable () -> [String] in
                serve(path, until: done) { _, fd in
                    sendLine(fd, Self.greeting)
                    while Self.answer(fd, { c in
                        switch c {
                        case "qmp_capabilities": return "{}"
                        case "query-blockstats", "query-pci": return "[]"
                        case "query-memory-size-summary": return #"{"base-memory": 16777216}"#
                        case "human-monitor-command": return #""FlatView #0\r\n AS \"I/O\", root: io\r\n Root memory region: io\r\n""#
                        case "query-cpus-fast":
                            let n = asked.get()[path, default: 0] + 1
                            asked.set(asked.get().merging([path: n]) { $1 })
                            if path == refusing { return nil }
                            return n == 1 ? #""two CPUs""# : Self.cpusFast
                        default: return nil
                        }
                    }) {}
                }
                return []
            }
        }
        let out = onThreads([
            script(odd), script(refusing),
            { @Sendable () -> [String] in
                defer { done.set(true) }
                guard waitForSocket(odd), waitForSocket(refusing) else { return ["no sockets"] }
                var lines: [String] = []
                for path in [odd, refusing] {
                    let m = QMPMonitor(path: path, timeout: 5)
                    let me = getpid()
                    for threads in [[me, 7], [me, 7], [me, 7, 8], [me, 7, 8]] {
                        let r = m.read { $0 == me ? Set(threads) : nil }
                        let map = r.sample.vcpuThreads.map { $0.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") }
                        lines.append("\(asked.get()[path] ?? 0) | \(map ?? "nil") | \(r.warning ?? "-")")
                    }
                }
                return lines
            },
        ], timeout: 60)
        #expect(out[2] == [
            "1 | nil | QMP \(odd): query-cpus-fast: not QMP: expected a reply to query-cpus-fast, got '{\"return\": \"two CPUs\", \"id\": 9}'; vCPU threads found by their names, else by guest time (numbers inferred)",
            "1 | nil | -",
            "2 | 25627=0 25628=1 | -",
            "2 | 25627=0 25628=1 | -",
            "1 | nil | QMP \(refusing): query-cpus-fast: CommandNotFound: The command query-cpus-fast has not been found; vCPU threads found by their names, else by guest time (numbers inferred)",
            "1 | nil | -",
            "1 | nil | -",
            "1 | nil | -",
        ])
    }

    /// A socket that answers garbage, one that closes after the capabilities, one that never answers, one
    /// nobody listens on: a problem each (the warning once), never a hang beyond the timeout.
    @Test func badSocketsAreProblemsNotHangs() throws {
        let garbage = socketPath("garbage"), closing = socketPath("close"), silent = socketPath("silent")
        let done = Locked(false)
        let out = onThreads([
            { @Sendable () -> [String] in
                serve(garbage, until: done) { _, fd in sendLine(fd, "\u{1b}[2J<html>not json</html>") }
                return []
            },
            { @Sendable () -> [String] in
                serve(closing, until: done) { _, fd in
                    sendLine(fd, Self.greeting)
                    _ = Self.answer(fd) { _ in "{}" }  // capabilities; then the connection closes
                }
                return []
            },
            { @Sendable () -> [String] in
                serve(silent, until: done) { _, _ in usleep(2_000_000) }
                return []
            },
            { @Sendable () -> [String] in
                defer { done.set(true) }
                guard waitForSocket(garbage), waitForSocket(closing), waitForSocket(silent) else { return ["no sockets"] }
                var lines: [String] = []
                for path in [garbage, closing, silent, socketPath("nobody")] {
                    let m = QMPMonitor(path: path, timeout: 0.5)
                    let start = Date()
                    let a = m.read(), b = m.read()
                    lines.append("\(a.sample.problem ?? "-") | \(a.warning ?? "-") | \(b.warning ?? "-") | pid \(b.pid.map { _ in "known" } ?? "nil")")
                    if Date().timeIntervalSince(start) > 3 { lines.append("slow: \(path)") }
                }
                return lines
            },
        ], timeout: 60)
        #expect(out[3] == [
            #"not QMP: expected a greeting, got '\u{1B}[2J<html>not json</html>' | QMP \#(garbage): not QMP: expected a greeting, got '\u{1B}[2J<html>not json</html>' | - | pid nil"#,
            "connection closed by the peer | QMP \(closing): connection closed by the peer | - | pid known",
            "no answer in 0.5 s | QMP \(silent): no answer in 0.5 s | - | pid nil",
            "cannot connect: No such file or directory | QMP \(socketPath("nobody")): cannot connect: No such file or directory | - | pid nil",
        ])
    }
}

// MARK: A QMP server in the test

func socketPath(_ name: String) -> String { "/tmp/kvmscope-qmp-\(getpid())-\(name).sock" }

/// Accepts connections on `path` until `done`, running `script` on each (its index, its descriptor), then
/// closing it. Every wait is bounded (poll, 100 ms steps).
func serve(_ path: String, until done: Locked<Bool>, script: (Int, Int32) -> Void) {
    unlink(path)
    let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        for (i, b) in path.utf8.enumerated() { raw[i] = b }
    }
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    defer {
        close(s)
        unlink(path)
    }
    guard bound == 0, listen(s, 8) == 0 else { return }
    var index = 0
    let end = Date().addingTimeInterval(60)
    while !done.get() && Date() < end {
        var p = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 100) > 0 else { continue }
        let c = accept(s, nil, nil)
        guard c >= 0 else { continue }
        script(index, c)
        index += 1
        close(c)
    }
}

func waitForSocket(_ path: String) -> Bool {
    let end = Date().addingTimeInterval(10)
    while Date() < end {
        if FileManager.default.fileExists(atPath: path) { return true }
        usleep(10_000)
    }
    return false
}

func sendLine(_ fd: Int32, _ s: String) {
    let b = Array((s + "\r\n").utf8)
    _ = b.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

/// One line from `fd` within 5 s (byte by byte: the client sends one command at a time); nil at its end.
func readLine(_ fd: Int32) -> String? {
    var bytes: [UInt8] = []
    let end = Date().addingTimeInterval(5)
    while Date() < end {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 100) > 0 else { continue }
        var b: UInt8 = 0
        guard recv(fd, &b, 1, 0) == 1 else { return nil }
        if b == 10 { return String(decoding: bytes, as: UTF8.self) }
        bytes.append(b)
    }
    return nil
}
