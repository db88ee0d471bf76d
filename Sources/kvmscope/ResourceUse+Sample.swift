import KVMAnalysis
import KVMResources

extension ResourceUse {
    /// The resource rules' view of a sample: each live VM (its process's CPU, its vCPUs' wait summed) and each
    /// live vCPU thread; only `pids` when given.
    static func of(_ s: ResourceSample, only pids: Set<Int32>?) -> [ResourceUse] {
        var out: [ResourceUse] = []
        for vm in s.vms where !vm.gone && (pids?.contains(vm.pid) ?? true) {
            var use = ResourceUse(vm: vm.pid, vmName: vm.name, vcpu: nil, cpuSeconds: s.seconds(vm.processTimes.cpuTicks),
                                  waitSeconds: Double(vm.vcpuTimes.waitNanoseconds) / 1e9)
            // Disk requests and their time, summed over the VM's block devices (QMP; none when unread).
            if let q = vm.qmp, q.problem == nil {
                use.diskRequests = q.disks.reduce(0) { $0 &+ $1.total.readRequests &+ $1.total.writeRequests }
                use.diskNanoseconds = q.disks.reduce(0) { $0 &+ $1.total.readTimeNanoseconds &+ $1.total.writeTimeNanoseconds }
            }
            out.append(use)
            for t in vm.threads where !t.gone {
                guard let vcpu = t.vcpu else { continue }
                out.append(ResourceUse(vm: vm.pid, vmName: vm.name, vcpu: vcpu, cpuSeconds: s.seconds(t.times.cpuTicks),
                                       waitSeconds: Double(t.times.waitNanoseconds) / 1e9))
            }
        }
        return out
    }
}
