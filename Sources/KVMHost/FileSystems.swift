import CKVMHost

/// What kind of file system a path is on.
public enum FileSystems {
    /// statfs(2) magic numbers of the kernel's pseudo file systems: procfs, sysfs, tracefs, debugfs.
    static let pseudo: Set<Int> = [0x9fa0, 0x6265_6572, 0x7472_6163, 0x6462_6720]

    /// Whether `path` is on procfs, sysfs, tracefs or debugfs: their files say size 0 and hold what a read
    /// returns (`/sys/kernel/tracing/trace`, `/proc/PID/status`). False when statfs fails.
    public static func isPseudo(_ path: String) -> Bool { pseudo.contains(ckvmscope_fs_type(path)) }
}
