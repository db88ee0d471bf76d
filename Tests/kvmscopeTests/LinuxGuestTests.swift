import Foundation
import Testing
import TestSupport

/// A real Linux guest: Debian's kernel (`linux-image-amd64`) with a busybox initramfs built here, under TCG (a
/// stock kernel does not boot under this machine's KVM backend), with virtio-net on a tap QEMU creates and a
/// virtio balloon. The guest sends a known number of ARP requests; kvmscope finds the tap through QEMU's
/// descriptors and counts exactly those frames as the guest's transmit. Its balloon driver inflates to a target
/// set over QMP; kvmscope's balloon size is QEMU's.
@Suite(.serialized, .enabled(if: KVMTest.canRun && (LinuxGuest.available || KVMTest.required),
                              "needs root, qemu-system-x86, linux-image-amd64, busybox-static and cpio (make deps)"))
struct LinuxGuestTests {
    @Test func guestFramesAreItsTapsTransmit() throws {
        let frames = 25
        let guest = try LinuxGuest(name: "linux-tcg-\(getpid())", arpRequests: frames)
        defer { guest.stop() }
        // The guest brings eth0 up, sends its ARP requests, then idles; with IPv6 off on both ends nothing else
        // crosses the tap.
        let end = Date().addingTimeInterval(180)
        while Date() < end && guest.tapCounter("rx_packets") < UInt64(frames) { usleep(250_000) }
        #expect(guest.tapCounter("rx_packets") == UInt64(frames), "console: \(guest.console.suffix(2000))")
        usleep(500_000)
        let rxBytes = guest.tapCounter("rx_bytes")
        #expect(rxBytes == UInt64(frames * 42), "an ARP request is 42 bytes (no padding through virtio-net)")

        let r = try CLI.run(["top", "--json", "-n", "1", "-d", "0.3", "--no-exits", "-c", "none"], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        let vm = try #require((try CLI.json(r.stdout)["vms"] as? [[String: Any]])?.first { $0["pid"] as? Int == Int(guest.pid) })
        #expect(vm["name"] as? String == guest.name)
        #expect(vm["accel"] as? String == "tcg")
        let net = try #require(vm["net"] as? [[String: Any]])
        #expect(net.map { $0["device"] as? String } == [guest.tap])
        #expect(net.first?["host_rx_packets"] as? Int == frames)
        #expect(net.first?["host_rx_bytes"] as? Int == Int(rxBytes))
        #expect(net.first?["host_tx_packets"] as? Int == 0)
    }

    /// The balloon driven by the guest's own virtio-balloon driver: QMP `balloon` sets a target 32 MiB below
    /// `-m 128`, the driver inflates until QEMU's `query-balloon` says the guest has the target, and kvmscope's
    /// balloon size (top --json and stat --json with `--qmp`) is that number, as QMP gives it.
    @Test func balloonReachesItsTargetAndKVMScopeSaysSo() throws {
        let guest = try LinuxGuest(name: "linux-balloon-\(getpid())", arpRequests: 1)
        defer { guest.stop() }
        let qmp = try QMP(path: guest.qmpPath)
        defer { qmp.close() }
        func actual() throws -> UInt64 {
            ((try qmp.execute("query-balloon") as? [String: Any])?["actual"] as? NSNumber)?.uint64Value ?? 0
        }
        // Before the driver: the guest has all its memory.
        #expect(try actual() == 128 << 20)
        let target: UInt64 = 96 << 20
        _ = try qmp.execute("balloon", arguments: "{\"value\":\(target)}")
        let end = Date().addingTimeInterval(180)
        while Date() < end, try actual() != target { usleep(250_000) }
        let reached = try actual()
        #expect(reached == target, "the driver never reached the target; console: \(guest.console.suffix(2000))")

        let r = try CLI.run(["top", "--json", "-n", "1", "-d", "0.3", "--no-exits", "-c", "none", "--qmp", guest.kvmscopeQMPPath],
                            timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        let vm = try #require((try CLI.json(r.stdout)["vms"] as? [[String: Any]])?.first { $0["pid"] as? Int == Int(guest.pid) })
        #expect(vm["accel"] as? String == "tcg")
        let memory = try #require(vm["memory"] as? [String: Any])
        #expect((memory["balloon_actual_bytes"] as? NSNumber)?.uint64Value == reached)
        #expect((memory["configured_bytes"] as? NSNumber)?.uint64Value == 128 << 20)

        let st = try CLI.run(["stat", "--json", "--duration", "0.5", "-p", "\(guest.pid)", "--qmp", guest.kvmscopeQMPPath], timeout: 60)
        #expect(st.status == 0, "\(st.stderr)")
        let res = try #require((try CLI.json(st.stdout)["resources"] as? [[String: Any]])?.first { $0["vm"] as? Int == Int(guest.pid) })
        let statQMP = try #require(res["qmp"] as? [String: Any])
        #expect((statQMP["balloon_actual_bytes"] as? NSNumber)?.uint64Value == reached)
        #expect(try actual() == reached)
    }
}

/// A daemonized QEMU running Debian's kernel under TCG with a busybox initramfs whose /init loads the virtio
/// modules, brings eth0 up (IPv6 off) and sends `arpRequests` ARP requests with busybox arping.
final class LinuxGuest {
    static let busybox = "/bin/busybox"
    static let cpio = "/usr/bin/cpio"

    /// The newest /boot/vmlinuz-*-amd64 and its modules directory.
    static var kernel: (image: String, modules: String)? {
        let images = ((try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? [])
            .filter { $0.hasPrefix("vmlinuz-") && $0.hasSuffix("-amd64") }.sorted()
        guard let image = images.last else { return nil }
        let version = String(image.dropFirst("vmlinuz-".count))
        let modules = "/lib/modules/\(version)"
        guard FileManager.default.fileExists(atPath: modules + "/modules.dep") else { return nil }
        return ("/boot/" + image, modules)
    }

    static var available: Bool {
        QEMUGuest.available && kernel != nil && FileManager.default.isExecutableFile(atPath: busybox)
            && FileManager.default.isExecutableFile(atPath: cpio)
    }

    /// Loaded in this order (dependencies first; paths from modules.dep).
    static let modules = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
                          "failover", "net_failover", "virtio_net", "virtio_balloon"]

    let name: String
    let dir: URL
    let pid: Int32
    /// The tap QEMU created (IFNAMSIZ: at most 15 bytes).
    let tap: String
    var qmpPath: String { dir.appendingPathComponent("qmp.sock").path }
    /// kvmscope's own QMP socket (QEMU serves one client at a time on each).
    var kvmscopeQMPPath: String { dir.appendingPathComponent("kvmscope-qmp.sock").path }
    var console: String { (try? String(contentsOf: dir.appendingPathComponent("console.log"), encoding: .utf8)) ?? "" }

    init(name: String, arpRequests: Int) throws {
        guard let kernel = Self.kernel else { throw QMP.Failure("no /boot/vmlinuz-*-amd64 with modules (make deps)") }
        self.name = name
        tap = "kvs\(getpid() % 100_000)"
        dir = URL(fileURLWithPath: "/var/tmp/kvmscope-linux-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let root = dir.appendingPathComponent("root")
        for sub in ["bin", "proc", "sys", "dev", "modules"] {
            try FileManager.default.createDirectory(at: root.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: Self.busybox, toPath: root.appendingPathComponent("bin/busybox").path)
        let dep = try String(contentsOfFile: kernel.modules + "/modules.dep", encoding: .utf8)
        var paths: [String: String] = [:]
        for line in dep.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let path = String(line[..<colon])
            let base = (path as NSString).lastPathComponent
            paths[String(base.prefix { $0 != "." })] = path
        }
        for m in Self.modules {
            guard let p = paths[m] else { throw QMP.Failure("module \(m) not in \(kernel.modules)/modules.dep") }
            guard !p.hasSuffix(".xz") && !p.hasSuffix(".zst") && !p.hasSuffix(".gz") else {
                throw QMP.Failure("\(p) is compressed: busybox insmod takes plain .ko files")
            }
            try FileManager.default.copyItem(atPath: kernel.modules + "/" + p, toPath: root.appendingPathComponent("modules/\(m).ko").path)
        }
        let initScript = """
            #!/bin/busybox sh
            /bin/busybox --install -s /bin
            mount -t proc proc /proc
            mount -t sysfs sys /sys
            mount -t devtmpfs dev /dev
            for m in \(Self.modules.joined(separator: " ")); do insmod /modules/$m.ko || echo "insmod $m failed"; done
            i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
            ip addr add 10.77.0.2/24 dev eth0
            ip link set eth0 up
            sleep 1
            arping -c \(arpRequests) -w 60 -I eth0 10.77.0.1 >/dev/null 2>&1
            echo kvmscope-arp-done
            while true; do sleep 3600; done
            """
        let initPath = root.appendingPathComponent("init")
        try initScript.write(to: initPath, atomically: true, encoding: .utf8)
        chmod(initPath.path, 0o755)
        let initrd = dir.appendingPathComponent("initrd.cpio").path
        let pack = try Spawned.run("/bin/bash", ["-c", "cd \"$0\" && find . | \(Self.cpio) -o -H newc --quiet > \"$1\"",
                                                 root.path, initrd], timeout: 60)
        guard pack.status == 0 else { throw QMP.Failure("cpio: \(pack.stderr)") }

        pid = try QEMUGuest.daemonize([
            "-accel", "tcg", "-name", "guest=\(name),debug-threads=on", "-m", "128", "-smp", "1", "-display", "none",
            "-nodefaults", "-kernel", kernel.image, "-initrd", initrd,
            // IPv6 off: the guest sends nothing but the ARP requests asked for.
            "-append", "console=ttyS0 panic=-1 ipv6.disable=1 quiet",
            "-serial", "file:\(dir.appendingPathComponent("console.log").path)",
            "-netdev", "tap,id=net0,ifname=\(tap),script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=net0,id=net0dev",
            "-device", "virtio-balloon-pci,id=balloon0",
            "-qmp", "unix:\(dir.appendingPathComponent("qmp.sock").path),server=on,wait=off",
            "-qmp", "unix:\(dir.appendingPathComponent("kvmscope-qmp.sock").path),server=on,wait=off",
        ], in: dir)
        // The host side: IPv6 off (no router solicitations from the host), then up — the host sends nothing.
        try? "1".write(toFile: "/proc/sys/net/ipv6/conf/\(tap)/disable_ipv6", atomically: false, encoding: .utf8)
        _ = try Spawned.run("/usr/sbin/ip", ["link", "set", tap, "up"], timeout: 30)
    }

    /// `/sys/class/net/TAP/statistics/NAME` (0 when unreadable).
    func tapCounter(_ name: String) -> UInt64 {
        (try? String(contentsOfFile: "/sys/class/net/\(tap)/statistics/\(name)", encoding: .utf8))
            .flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
    }

    /// SIGTERM, SIGKILL after 10 s (the tap goes with QEMU); the directory removed.
    func stop() { QEMUGuest.end(pid, removing: dir) }
}
