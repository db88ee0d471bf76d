import SystemPackage

/// A path's directory and last component, as dirname(1) and basename(1) give them — `a` → `.` and `a`, `x/`
/// → `.` and `x`, `/a` → `/` and `a`, `d/t.dat` → `d` and `t.dat` — by swift-system's `FilePath`. (Foundation's
/// `NSString` path methods trap on one-character paths on Linux: `record -o a` and `report q` crashed.)
public enum PathComponents {
    /// The directory holding `path`'s last component; `.` for a bare name, `/` for a name under the root.
    public static func directory(of path: String) -> String {
        let p = FilePath(path)
        let d = p.removingLastComponent()
        if d.isEmpty { return p.isAbsolute ? "/" : "." }
        return d.string
    }

    /// `path`'s last component (`t.dat` of `d/t.dat`); `path` itself when it has none (`/`, the empty path).
    public static func lastComponent(of path: String) -> String { FilePath(path).lastComponent?.string ?? path }
}
