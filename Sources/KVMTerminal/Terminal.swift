import CTerminal
import Foundation
import KVMExits
import KVMHost

/// The user's terminal, driven through ncursesw for the live view. At most one exists at a time;
/// ``end()`` (also run at process exit by the shim) gives the terminal back.
public final class Terminal {
    /// How a span of text looks.
    public struct Attributes: OptionSet, Sendable, Hashable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let bold = Attributes(rawValue: Int32(CKVMSCOPE_TUI_BOLD))
        public static let reverse = Attributes(rawValue: Int32(CKVMSCOPE_TUI_REVERSE))
        public static let red = Attributes(rawValue: Int32(CKVMSCOPE_TUI_RED))
        public static let underline = Attributes(rawValue: Int32(CKVMSCOPE_TUI_UNDERLINE))
    }

    /// A key read from the terminal.
    public enum Key: Equatable, Sendable {
        case character(Character)
        case enter, escape, backspace, up, down, pageUp, pageDown, resize
        /// The terminal hung up, or reading it gave end of file or an error: the view must end.
        case gone
    }

    /// Why the terminal cannot be used full-screen, or nil when it can (checked before taking it over).
    public static func unusableReason(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard isatty(STDOUT_FILENO) == 1, isatty(STDIN_FILENO) == 1 else { return "not a terminal" }
        guard let term = environment["TERM"], !term.isEmpty, term != "dumb" else { return "TERM is dumb or unset" }
        return nil
    }

    private var active = false

    /// Takes the terminal over. Throws when curses cannot drive it.
    public init() throws {
        guard ckvmscope_tui_begin() == 0 else {
            throw KVMScopeError.usage("cannot drive the terminal (TERM=\(ProcessInfo.processInfo.environment["TERM"] ?? ""))")
        }
        active = true
    }

    deinit { end() }

    /// Gives the terminal back (idempotent).
    public func end() {
        guard active else { return }
        active = false
        ckvmscope_tui_end()
    }

    /// (rows, columns).
    public var size: (rows: Int, columns: Int) {
        var r: Int32 = 0
        var c: Int32 = 0
        ckvmscope_tui_size(&r, &c)
        return (Int(r), Int(c))
    }

    /// Draws a whole frame: each line's text, then its styled spans over it.
    public func draw(_ lines: [(text: String, spans: [(column: Int, text: String, attributes: Attributes)])],
                     cursor: (row: Int, column: Int)? = nil) {
        ckvmscope_tui_clear()
        for (row, line) in lines.enumerated() {
            ckvmscope_tui_put(Int32(row), 0, line.text, 0)
            for span in line.spans {
                ckvmscope_tui_put(Int32(row), Int32(span.column), span.text, span.attributes.rawValue)
            }
        }
        ckvmscope_tui_show(Int32(cursor?.row ?? -1), Int32(cursor?.column ?? 0))
    }

    /// The next key, ``Key/gone`` when the terminal went away, or nil when no key came within `timeout`
    /// seconds or a stop (``StopSignals``) was raised.
    public func key(timeout: Double) -> Key? { Self.key(ckvmscope_tui_key(Int32(max(0, timeout * 1000)))) }

    /// Single keys from the terminal on stdin without taking the screen (the log fallback): canonical mode
    /// and echo off until ``endKeys()`` or exit. False when stdin is not a terminal.
    public static func beginKeys() -> Bool { ckvmscope_keys_begin() == 0 }

    /// Gives stdin its modes back (idempotent).
    public static func endKeys() { ckvmscope_keys_end() }

    /// The next key read by ``beginKeys()``'s mode, as ``key(timeout:)`` reports it.
    public static func nextKey(timeout: Double) -> Key? { key(ckvmscope_keys_next(Int32(max(0, timeout * 1000)))) }

    static func key(_ c: Int32) -> Key? {
        switch c {
        case Int32(CKVMSCOPE_TUI_KEY_GONE): return .gone
        case -1: return nil
        case Int32(CKVMSCOPE_TUI_KEY_RESIZE): return .resize
        case Int32(CKVMSCOPE_TUI_KEY_UP): return .up
        case Int32(CKVMSCOPE_TUI_KEY_DOWN): return .down
        case Int32(CKVMSCOPE_TUI_KEY_PAGE_UP): return .pageUp
        case Int32(CKVMSCOPE_TUI_KEY_PAGE_DOWN): return .pageDown
        case 10, 13: return .enter
        case 27: return .escape
        case 8, 127: return .backspace
        default:
            guard let scalar = Unicode.Scalar(UInt32(c)) else { return nil }
            return .character(Character(scalar))
        }
    }
}
