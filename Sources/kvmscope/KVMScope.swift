import ArgumentParser
import Foundation
import KVMAnalysis
import KVMExits
import KVMHost
import KVMSources

@main
struct KVMScope: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvmscope",
        abstract: "What KVM virtual machines cost their host, exit by exit.",
        discussion: """
            Reads the kernel's kvm:* tracepoints from a private tracefs instance and shows, per VM and per vCPU, \
            the count of every exit reason and the distribution of exit latencies.

            Examples:
              kvmscope                          the live view, kvm_stat's keys
              kvmscope live --demo              the same, with a demo guest
              kvmscope stat -1                  one kvm_stat-style snapshot
              kvmscope stat --json -- ./vmm     trace while a command runs
              kvmscope top -b -n 3              virt-top's view: CPU, memory, I/O per VM
              kvmscope record -o t.dat          a trace.dat for trace-cmd
              kvmscope report t.dat             perf kvm stat-style report
              kvmscope serve                    Prometheus on 127.0.0.1:9477
              kvmscope watch --alert 'rate(EPT_MISCONFIG) > 50000/s for 5s'
              kvmscope storm --kind io --vcpus 2 --exits 100000
            """,
        version: kvmscopeVersion,
        subcommands: [LiveCommand.self, StatCommand.self, TopCommand.self, RecordCommand.self, ReportCommand.self,
                      ServeCommand.self, WatchCommand.self, StormCommand.self, BenchCommand.self],
        defaultSubcommand: LiveCommand.self
    )

    /// Like ArgumentParser's main, but a bad argument is one line on stderr (no usage dump), and
    /// `--help` still prints help. The one place where errors become the line users see and the exit status:
    /// commands throw, and every resource they own (tracefs instances, children, spools) is released by its
    /// owner as the error unwinds, before this runs.
    static func main() {
        StandardDescriptors.ensureOpen()
        // `| head` ends no command by SIGPIPE (status 141 under pipefail): its writes see EPIPE, which they
        // take as the reader having gone.
        StandardDescriptors.quietBrokenPipes()
        let status: Int32
        do {
            try checkHelpTopic(Array(CommandLine.arguments.dropFirst()))
            var command = try parseAsRoot()
            try command.run()
            if let e = StdoutFailure.error { throw e }
            return
        } catch let e as KVMScopeError {
            writeStderr("kvmscope: \(e.description)\n")
            status = e.exitStatus
        } catch let e as ExitCode {
            status = e.rawValue
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                // --help, --version: written as every output is, so a stdout that cannot take it is an error.
                writeStdout(fullMessage(for: error) + "\n")
                if let e = StdoutFailure.error {
                    writeStderr("kvmscope: \(e.description)\n")
                    Foundation.exit(1)
                }
                Foundation.exit(0)
            }
            let message = Self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            writeStderr("kvmscope: \(message)\n")
            status = code.rawValue
        }
        Foundation.exit(status)
    }

    /// `kvmscope help NAME…` names commands: ArgumentParser prints the help of the longest known prefix and
    /// exits 0, so a typo (`help stats`) would print the root help as if asked for. A name that is no command
    /// (of the root, or of the command before it) is a usage error (status 64, as `kvmscope nosuch`); flags
    /// after `help` are left to ArgumentParser.
    /// - Throws: `ValidationError("help: no command 'NAME'; …")`, naming the commands there are.
    static func checkHelpTopic(_ arguments: [String]) throws {
        guard arguments.first == "help" else { return }
        var command: any ParsableCommand.Type = KVMScope.self
        var path: [String] = []
        for name in arguments.dropFirst() where !name.hasPrefix("-") {
            let children = command.configuration.subcommands
            guard let child = children.first(where: { $0._commandName == name || $0.configuration.aliases.contains(name) })
            else {
                let names = children.map { $0._commandName }
                let there = names.isEmpty ? "\(path.joined(separator: " ")) has no subcommands"
                    : path.isEmpty ? "the commands are " + names.joined(separator: ", ")
                    : "the subcommands of \(path.joined(separator: " ")) are " + names.joined(separator: ", ")
                throw ValidationError("help: no command '\((path + [name]).joined(separator: " "))'; \(there)")
            }
            command = child
            path.append(name)
        }
    }
}
