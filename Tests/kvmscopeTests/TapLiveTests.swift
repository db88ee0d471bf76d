import Foundation
import KVMResources
import Testing
import TestSupport

/// A real tap device held by a real KVM VM descriptor: a small Python process (Debian's python3) creates a VM
/// with KVM_CREATE_VM, a tap with TUNSETIFF (IPv6 off, so the host sends nothing on it), brings it up, and
/// writes frames into it on request — frames the host receives, that is, the guest sends.
@Suite(.serialized, .enabled(if: KVMTest.canRun && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"),
                              "needs root, /dev/kvm, /dev/net/tun and python3"))
struct TapLiveTests {
    static let helper = """
        import fcntl, os, struct, sys, socket
        kvm = os.open("/dev/kvm", os.O_RDWR)
        vm = fcntl.ioctl(kvm, 0xAE01, 0)                                    # KVM_CREATE_VM
        name = sys.argv[1]
        tun = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(tun, 0x400454ca, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))  # TUNSETIFF: IFF_TAP|IFF_NO_PI
        open("/proc/sys/net/ipv6/conf/%s/disable_ipv6" % name, "w").write("1")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", name.encode(), 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", name.encode(), flags | 1))  # IFF_UP
        print("ready", tun, flush=True)
        frame = b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x01" + b"\\x88\\xb5" + bytes(46)   # 60 bytes, local ethertype
        for line in sys.stdin:
            for _ in range(int(line)): os.write(tun, frame)
            print("written", int(line), flush=True)
        """

    @Test func guestTransmitIsTheTapsReceive() throws {
        let tap = "kvmsc\(getpid() % 100_000)"
        let p = try Spawned("/usr/bin/python3", ["-c", Self.helper, tap])
        defer { p.stop() }
        #expect(p.waitForStdout(timeout: 30) { $0.contains("ready") }, "helper: \(p.stderr)")
        let fd = try #require(p.stdout.split(separator: " ").dropFirst().first.flatMap { Int32($0.trimmingCharacters(in: .newlines)) })

        let sampler = ResourceSampler()
        let first = try #require(sampler.sample().vms.first { $0.pid == p.pid })
        #expect(first.taps.map(\.device) == [tap])
        #expect(first.taps.map(\.fd) == [fd])
        p.send(Data("10\n".utf8))
        #expect(p.waitForStdout(timeout: 30) { $0.contains("written 10") })
        let vm = try #require(sampler.sample().vms.first { $0.pid == p.pid })
        let d = try #require(vm.tapDeltas.first)
        #expect(d.device == tap)
        #expect(d.rxBytes == 600, "the guest sent 10 frames of 60 bytes")
        #expect(d.rxPackets == 10)
        #expect(vm.taps.first?.rxBytes == 600)
        #expect(vm.vcpuCount == 0)

        // top: the guest's TXBY; its net entry names the tap.
        let r = try CLI.run(["top", "--json", "-n", "1", "-d", "0.2", "--no-exits"], timeout: 60)
        let j = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let row = try #require((j["vms"] as? [[String: Any]])?.first { $0["pid"] as? Int == Int(p.pid) })
        let net = try #require(row["net"] as? [[String: Any]])
        #expect(net.map { $0["device"] as? String } == [tap])
        #expect(net.map { $0["host_rx_bytes"] as? Int } == [600])
        #expect(net.map { $0["host_rx_packets"] as? Int } == [10])
    }
}
