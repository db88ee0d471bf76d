import Foundation
import TestSupport
import Testing

/// What kvmscope says when tracefs, the kvm events or the rights to use them are missing (one line: what is
/// missing and how to fix it), and what it needs at least: a user without root but with CAP_DAC_OVERRIDE and
/// the kvm group traces a storm; the files it writes are 0640; `serve` listens on loopback unless told.
@Suite(.serialized, .enabled(if: KVMTest.canRun, "needs root, /dev/kvm and tracefs"))
struct PrivilegeTests {
    /// Runs `argv` in a private mount namespace after the test's own `setup` commands (fixed text, no user
    /// strings; argv is passed as "$@", never through the shell's parser).
    static func inMountNamespace(_ setup: String, _ argv: [String]) throws -> CLI.Result {
        let r = try Spawned.run("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-c",
                                                     "\(setup) && exec \"$@\"", "sh"] + argv, timeout: 60)
        return CLI.Result(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }

    static func expectOneLine(_ r: CLI.Result, _ expected: String) {
        #expect(r.status == 1)
        #expect(r.stderr == "kvmscope: \(expected)\n")
        #expect(r.stdout.isEmpty)
    }

    /// tracefs unmounted (both mount points: debugfs too where it is mounted) and CAP_SYS_ADMIN dropped, so it
    /// cannot be mounted again.
    @Test func tracefsNotMountable() throws {
        let r = try Self.inMountNamespace(
            "umount /sys/kernel/tracing && { ! mountpoint -q /sys/kernel/debug || umount -l /sys/kernel/debug; }",
            ["/usr/bin/setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", CLI.binary, "stat", "-1"])
        Self.expectOneLine(r, "tracefs is not mounted and could not be mounted: Operation not permitted "
                           + "(as root: mount -t tracefs nodev /sys/kernel/tracing)")
    }

    /// Read-only empty file systems over /sys/kernel/tracing and /sys/kernel/debug: no events directory.
    /// `record -o` a device (a null device node of the test's own) leaves the device alone on the way out: only
    /// a regular file record created is removed (it once unlinked /dev/null).
    @Test func tracefsHidden() throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let device = dir + "/null"
        #expect(mknod(device, S_IFCHR | 0o666, dev_t(1 << 8 | 3)) == 0)
        let r = try Self.inMountNamespace(
            "mount -t tmpfs -o ro,size=4k none /sys/kernel/tracing && mount -t tmpfs -o ro,size=4k none /sys/kernel/debug",
            [CLI.binary, "record", "-o", device, "--duration", "1"])
        Self.expectOneLine(r, "tracefs is not mounted and could not be mounted: /sys/kernel/tracing/events is missing "
                           + "(as root: mount -t tracefs nodev /sys/kernel/tracing)")
        var st = stat()
        #expect(lstat(device, &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR, "the device is still there")
    }

    /// An empty file system over events/kvm: tracefs without the kvm module's events.
    @Test func kvmEventsMissing() throws {
        let r = try Self.inMountNamespace("mount -t tmpfs -o ro,size=4k none /sys/kernel/tracing/events/kvm",
                                          [CLI.binary, "serve", "--listen", "127.0.0.1:\(freeLoopbackPort())"])
        Self.expectOneLine(r, "no kvm events in /sys/kernel/tracing/events/kvm: the kvm module is not loaded "
                           + "(modprobe kvm_intel, kvm_amd or kvm)")
    }

    /// nobody, no groups, no capabilities (setpriv): tracefs (mode 0700) refuses.
    @Test func notRoot() throws {
        let bin = try CLI.Result.sharedBinary()
        let r = try Spawned.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", bin, "record",
                                                     "-o", "/tmp/kvmscope-nobody-\(getpid()).dat"], timeout: 60)
        Self.expectOneLine(CLI.Result(status: r.status, stdout: r.stdout, stderr: r.stderr),
                           "cannot use tracefs: /sys/kernel/tracing: Permission denied (run kvmscope with sudo, or "
                           + "grant access: see \"Running without root\" in the README)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/kvmscope-nobody-\(getpid()).dat"))
    }

    /// top as nobody sees no other user's open files: it says so (an empty screen looked like a host without
    /// VMs), and `-p` of such a process is an error; as root, `-p` of a process without a VM is said too.
    @Test func topSaysWhatItCannotSee() throws {
        let bin = try CLI.Result.sharedBinary()
        let all = try Spawned.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", bin, "top", "-b", "-n", "1",
                                                       "-d", "0.1", "--no-exits", "-c", "none"], timeout: 60)
        #expect(all.status == 0, "\(all.stderr)")
        #expect(all.stderr.wholeMatch(of: #/kvmscope: the open files of \d+ process(es)? cannot be read \(/proc/\d+/fd: Permission denied\): a VM among them is not shown \(run as root\)\n/#) != nil,
                "\(all.stderr)")
        let one = try Spawned.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", bin, "top", "-b", "-n", "1",
                                                       "-d", "0.1", "--no-exits", "-c", "none", "-p", "1"], timeout: 60)
        Self.expectOneLine(CLI.Result(status: one.status, stdout: one.stdout, stderr: one.stderr),
                           "cannot tell whether pid 1 runs a VM: /proc/1/fd: Permission denied (run as root)")
        let comm = try String(contentsOfFile: "/proc/1/comm", encoding: .utf8).trimmingCharacters(in: .newlines)
        let root = try CLI.run(["top", "-b", "-n", "1", "-d", "0.1", "--no-exits", "-c", "none", "-p", "1"], timeout: 60)
        #expect(root.status == 0)
        #expect(root.stderr == "kvmscope: pid 1 (\(comm)) runs no KVM VM (neither /dev/kvm nor a kvm-vm file is open): top shows no row for it\n")
    }

    /// Least privilege: nobody with CAP_DAC_OVERRIDE (ambient, so its storm keeps it too) and the kvm group
    /// traces a storm it starts, exactly, and leaves no instance.
    @Test func unprivilegedUserWithDACOverrideAndKVMGroup() throws {
        let bin = try CLI.Result.sharedBinary()
        let kvm = try #require(getgrnam("kvm")).pointee.gr_gid
        let p = try Spawned("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--groups=\(kvm)",
                                                 "--inh-caps=+dac_override", "--ambient-caps=+dac_override",
                                                 bin, "stat", "--json", "--event", "kvm_pio", "--",
                                                 bin, "storm", "--kind", "io", "--vcpus", "1", "--exits", "5000"],
                            stdinNull: true)
        defer { p.stop() }
        #expect(p.wait(timeout: 60) == 0, "\(p.stderr)")
        let j = try CLI.json(p.stdout)
        #expect((j["events"] as? [String: Int])?["kvm_pio"] == 5000)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: "/sys/kernel/tracing/instances")) ?? [])
            .filter { $0 == "kvmscope-\(p.pid)" }.isEmpty)
    }

    /// record's trace.dat, stat -L's log and report --html's page are created 0640 (less the umask).
    @Test func filesAreCreated0640() throws {
        let dir = try RecordTests.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mask = umask(0o022)
        umask(mask)
        func mode(_ path: String) -> mode_t {
            var st = stat()
            return stat(path, &st) == 0 ? st.st_mode & 0o777 : 0
        }
        let rec = try CLI.run(["record", "-o", dir + "/m.dat", "--duration", "0.3", "-e", "kvm_pio"])
        #expect(rec.status == 0, "\(rec.stderr)")
        let log = try CLI.run(["stat", "-1", "-L", dir + "/stat.log"])
        #expect(log.status == 0, "\(log.stderr)")
        let html = try CLI.run(["report", "--html", dir + "/r.html", dir + "/m.dat"])
        #expect(html.status == 0, "\(html.stderr)")
        for name in ["m.dat", "stat.log", "r.html"] {
            #expect(mode("\(dir)/\(name)") == 0o640 & ~mask, "\(name)")
        }
    }

    /// `serve` without --listen binds 127.0.0.1:9477 only (the kernel's socket table says so).
    @Test func serveListensOnLoopbackByDefault() throws {
        var serve: Spawned?
        defer { serve?.stop() }
        // Another test's serve may hold the port for a moment: a few tries.
        for _ in 0..<10 {
            let s = try Spawned(CLI.binary, ["serve"], stdinNull: true)
            if s.waitForStderr("kvmscope: serving http://127.0.0.1:9477/metrics", timeout: 20) && s.isRunning {
                serve = s
                break
            }
            s.stop()
            usleep(2_000_000)
        }
        let s = try #require(serve, "serve never bound 127.0.0.1:9477")
        // The inodes of its sockets, then their local addresses in /proc/net/tcp and tcp6.
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(s.pid)/fd")) ?? []
        let inodes = Set(fds.compactMap { fd -> String? in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(s.pid)/fd/\(fd)"),
                  target.hasPrefix("socket:[") else { return nil }
            return String(target.dropFirst(8).dropLast())
        })
        var listening: [String] = []
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = (try? String(contentsOfFile: table, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode; st 0A = LISTEN.
                if f.count > 9, f[3] == "0A", inodes.contains(String(f[9])) { listening.append(String(f[1])) }
            }
        }
        #expect(listening == ["0100007F:2505"], "127.0.0.1:9477 only")
    }

    /// No shell is ever run with a user's string: no source of kvmscope calls system(3), popen(3), a shell or
    /// Foundation's Process; children start through execve(2) on their argv (ckvmscope_spawn).
    @Test func noShellInTheSources() throws {
        var hits: [String] = []
        for top in ["Sources", "CShims"] {
            let root = CLI.packageRoot.appendingPathComponent(top).path
            for file in FileManager.default.enumerator(atPath: root)?.compactMap({ $0 as? String }) ?? []
            where file.hasSuffix(".swift") || file.hasSuffix(".c") || file.hasSuffix(".h") {
                let text = try String(contentsOfFile: "\(root)/\(file)", encoding: .utf8)
                for needle in ["system(", "popen(", "/bin/sh", "\"sh\"", "Process()", "execvp", "execl"] where text.contains(needle) {
                    hits.append("\(top)/\(file): \(needle)")
                }
            }
        }
        #expect(hits == [])
    }
}
