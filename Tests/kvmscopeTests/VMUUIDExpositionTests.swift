import Foundation
import KVMAnalysis
import KVMExits
import KVMResources
import KVMScopeViews
import Testing

/// `kvmscope_vm_info{vm, vm_name, uuid}` and `top --json`'s `uuid`, from a sample whose every value is known.
@Suite struct VMUUIDExpositionTests {
    /// The VM's UUID (libvirt's, else QEMU's -uuid) as an info series per VM that has one, and in `top --json`.
    @Test func uuidIsAnInfoSeriesAndInTheJSON() throws {
        var f = TopViewTests.frame()
        let web = f.sample.vms.firstIndex { $0.pid == 4242 }!
        f.sample.vms[web].libvirt = LibvirtDomain(name: "web", uuid: "5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab", id: 3, pid: 4242)
        let db = f.sample.vms.firstIndex { $0.pid == 99 }!
        f.sample.vms[db].commandLineUUID = "11111111-2222-3333-4444-555555555555"
        func family(_ format: ExpositionFormat, _ sample: ResourceSample) -> [String] {
            PrometheusExposition.render(Summary(), format: format, extras: ExpositionExtras(version: "t", resources: sample))
                .split(separator: "\n").map(String.init).filter { $0.contains("kvmscope_vm_info") || $0.hasSuffix(" kvmscope_vm info") }
        }
        #expect(family(.prometheus, f.sample) == [
            "# HELP kvmscope_vm_info The VM's UUID: libvirt's domain UUID, else QEMU's -uuid (only VMs with one).",
            "# TYPE kvmscope_vm_info gauge",
            "kvmscope_vm_info{vm=\"99\",vm_name=\"db,1\",uuid=\"11111111-2222-3333-4444-555555555555\"} 1",
            "kvmscope_vm_info{vm=\"4242\",vm_name=\"web\",uuid=\"5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab\"} 1",
        ])
        let om = PrometheusExposition.render(Summary(), format: .openMetrics, extras: ExpositionExtras(version: "t", resources: f.sample))
            .split(separator: "\n").map(String.init).filter { $0.contains("kvmscope_vm ") || $0.hasPrefix("kvmscope_vm_info") }
        #expect(om == [
            "# HELP kvmscope_vm The VM's UUID: libvirt's domain UUID, else QEMU's -uuid (only VMs with one).",
            "# TYPE kvmscope_vm info",
            "kvmscope_vm_info{vm=\"99\",vm_name=\"db,1\",uuid=\"11111111-2222-3333-4444-555555555555\"} 1",
            "kvmscope_vm_info{vm=\"4242\",vm_name=\"web\",uuid=\"5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab\"} 1",
        ])
        // No VM with a UUID: no family.
        #expect(family(.prometheus, TopViewTests.frame().sample) == [])
        let j = try #require(JSONSerialization.jsonObject(with: Data(TopView.json(f).serialized().utf8)) as? [String: Any])
        let vms = try #require(j["vms"] as? [[String: Any]])
        #expect(vms.map { $0["pid"] as? Int } == [4242, 99, 7])
        #expect(vms.map { $0["uuid"] as? String } == ["5d1e8a3c-6f0b-4b7e-9c1a-0123456789ab", "11111111-2222-3333-4444-555555555555", nil])
        #expect(vms[2]["uuid"] is NSNull)
    }
}
