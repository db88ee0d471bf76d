import ArgumentParser
import Foundation

@main
struct KVMScope: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvmscope",
        abstract: "What KVM virtual machines cost their host, exit by exit.",
        discussion: """
            Reads the kernel's kvm:* tracepoints from a private tracefs instance and shows, per VM and per
            vCPU, the count of every exit reason and the distribution of exit latencies.

            Examples:
              kvmscope stat -1                      one kvm_stat-style snapshot of all VMs
              kvmscope stat --json -- ./my-vmm      trace while a command runs, JSON summary
              kvmscope storm --kind io --vcpus 2 --exits 100000
            """,
        subcommands: [StatCommand.self, StormCommand.self, ReportCommand.self, ServeCommand.self, WatchCommand.self,
                      BenchCommand.self],
        defaultSubcommand: StatCommand.self
    )

    /// Like ArgumentParser's main, but a bad argument is one line on stderr (no usage dump), and
    /// `--help` still prints help.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            let message = Self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("kvmscope: \(message)\n".utf8))
            Foundation.exit(code.rawValue)
        }
    }
}
