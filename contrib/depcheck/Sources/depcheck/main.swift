import KVMAnalysis
import KVMExits
import KVMSources

// Reads a trace.dat with kvmscope's library products and prints the number of kvm_exit events.
let source = try TraceFiles.open(CommandLine.arguments[1])
let summary = try Summary(try OfflineAnalysis.run(source))
print(summary.events.first { $0.name == "kvm_exit" }?.total ?? 0)
