import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMGuest
import KVMHost
import KVMScopeViews
import KVMSources

struct StormCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storm",
        abstract: "Run a real VM whose vCPUs cause an exact number of exits (the demo guest and benchmark load).",
        usage: "kvmscope storm [<options>]",
        discussion: """
            Creates a VM through /dev/kvm with V vCPU threads named "CPU N/KVM", each causing exactly N exits of \
            one kind, then prints a JSON summary.

              io    out to port 0x10: one kvm_pio and one KVM_EXIT_IO per exit
              mmio  store to an unbacked guest address: one kvm_mmio and one KVM_EXIT_MMIO
                    per exit
              hlt   hlt with no in-kernel irqchip: one KVM_EXIT_HLT per exit
            """)

    @Option(help: "Kind of exit: io, mmio or hlt.")
    var kind: String = "io"

    @Option(parsing: .unconditional, help: "Number of vCPU threads.")
    var vcpus: UInt32 = 1

    @Option(parsing: .unconditional, help: "Exits per vCPU.")
    var exits: UInt64 = 100_000

    @Option(parsing: .unconditional, help: "Repeat the storm for this many seconds, stopping the vCPUs when they pass (0: run once).")
    var seconds: Double = 0

    @Option(help: "A guest name, found like QEMU's -name (kvm_stat -g, kvmscope -g).")
    var name: String?

    func validate() throws {
        guard Storm.Kind(rawValue: kind) != nil else {
            throw ValidationError("--kind must be io, mmio or hlt (got '\(kind)')")
        }
        guard (1...256).contains(vcpus) else { throw ValidationError("--vcpus must be 1 to 256") }
        guard seconds >= 0 else { throw ValidationError("--seconds must be ≥ 0") }
        // The name is read back from the command line as QEMU's -name is (kvm_stat -g does the same), where a
        // single comma ends the name: 'web,1' would be found as "web". QEMU spells a comma ",,".
        if let name, GuestName.fromQEMUArguments(["-name", name]) != name.replacingOccurrences(of: ",,", with: ",") {
            throw ValidationError("--name '\(name.terminalSafe)': a comma in a guest name is written ',,' (as in QEMU's -name), "
                                  + "and the name cannot be empty or start with 'key='")
        }
    }

    /// `SIGINT` for 2, as kill -l names them.
    static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        case SIGHUP: "SIGHUP"
        default: "signal \(signal)"
        }
    }

    func run() throws {
        let k = Storm.Kind(rawValue: kind)!
        // SIGINT, SIGTERM and SIGHUP stop the vCPU threads within milliseconds, as --seconds does; the JSON
        // line then counts the exits done.
        let stop = StopSignal()
        var total: UInt64 = 0
        var elapsed = 0.0
        let start = Date()
        repeat {
            let left = seconds > 0 ? seconds - Date().timeIntervalSince(start) : nil
            if let left, left <= 0 { break }
            let r = try Storm.run(kind: k, vcpus: vcpus, exitsPerVCPU: exits, timeLimit: left)
            total += r.exits
            elapsed += r.seconds
        } while seconds > 0 && !stop.isRaised
        let json = JSONValue.object([
            ("pid", .int(Int64(getpid()))), ("name", .optional(name.flatMap { GuestName.fromQEMUArguments(["-name", $0]) })), ("kind", .string(kind)), ("vcpus", .uint(UInt64(vcpus))),
            ("exits", .uint(total)), ("seconds", .double((elapsed * 1e6).rounded() / 1e6)),
            ("exits_per_second", .uint(elapsed > 0 ? UInt64(Double(total) / elapsed) : 0)),
            // The signal that cut the run short (SIGINT, SIGTERM, SIGHUP), else null: `exits` is then below
            // --exits × --vcpus, and a script can tell why.
            ("interrupted_by", .optional(StopSignals.raised.map(Self.signalName))),
        ])
        writeStdout(json.serialized() + "\n")
    }
}
