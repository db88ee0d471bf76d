import Foundation
import KVMExits
import KVMSources

/// Test fixtures: the kernel format files committed under Tests/Fixtures.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    static func text(_ path: String) throws -> String {
        try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
    }

    /// Formats of a kernel directory (e.g. "6.18-x86"), for the given kvm events.
    static func formats(_ kernel: String, events: [String] = ["kvm_exit", "kvm_entry"]) throws -> EventFormats {
        let f = EventFormats()
        for e in events { try f.add(system: "kvm", format: try text("formats/\(kernel)/\(e).format")) }
        return f
    }
}
