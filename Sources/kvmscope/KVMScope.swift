import ArgumentParser

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
        subcommands: [StatCommand.self, StormCommand.self, RecordCommand.self],
        defaultSubcommand: StatCommand.self
    )
}
