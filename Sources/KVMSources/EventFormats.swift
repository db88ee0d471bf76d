import CKVMScope
import Foundation
import KVMExits

/// Event formats parsed by libtraceevent, and the decoder layouts built from them by field name.
///
/// Built once at start: from the running kernel's tracefs files, from a trace.dat's format section, or
/// from format files in tests. Nothing per event happens here.
public final class EventFormats {
    let handle: OpaquePointer
    public private(set) var catalog = EventCatalog()
    var layouts: [ckvmscope_event_layout] = []
    /// kernel id by "system:name"
    public private(set) var kernelIDs: [String: Int32] = [:]
    /// The format files as parsed, by event name.
    public private(set) var formatTexts: [String: String] = [:]

    /// - Parameter untrusted: the formats come from a file (a trace.dat's own bytes), not the running kernel:
    ///   each is first parsed in a child process and refused when that child crashes or hangs (libtraceevent
    ///   1.7 crashes on some malformed print fmts).
    public init(untrusted: Bool = false) {
        guard let h = ckvmscope_formats_new() else { fatalError("out of memory") }
        handle = h
        if untrusted { ckvmscope_formats_isolate(h, 1) }
    }

    deinit { ckvmscope_formats_free(handle) }

    /// Parses one `format` file and adds the event to the catalog (`role`: nil, the role its name gives).
    /// Returns its catalog index.
    @discardableResult
    public func add(system: String, format text: String, role: EventRole? = nil) throws -> UInt16 {
        var text = text
        let id = text.withUTF8 { buf in
            buf.withMemoryRebound(to: CChar.self) { ckvmscope_formats_parse(handle, system, $0.baseAddress, $0.count) }
        }
        guard id >= 0, let cName = ckvmscope_formats_name(handle, id) else {
            // Its first line only (at most 60 characters): the error stays one line.
            throw KVMScopeError.badFormat("cannot parse the format of \(system) event: \(text.prefix { $0 != "\n" && $0 != "\r" }.prefix(60))")
        }
        let name = String(cString: cName)
        formatTexts[name] = text
        if name == "kvm_exit" { catalog.exitReasons = ExitReasonNames(kvmExitTables: try printTables(kernelID: id)) }
        if name == "kvm_userspace_exit" {
            catalog.userspaceExitReasons = UserspaceExitNames(kvmUserspaceExitTables: try printTables(kernelID: id))
        }
        kernelIDs["\(system):\(name)"] = id
        let index = catalog.add(system: system, name: name, role: role)
        layouts.append(layout(kernelID: id, index: index, role: catalog[index].role))
        return index
    }

    /// Makes records written to `trace_marker_raw` (ftrace:raw_data) decode as the given events, told apart
    /// by size: the injection path of tests and benchmarks (``TraceConfig/injected``). Write an event's
    /// record bytes 8..<``markerSize(of:)`` to the instance's trace_marker_raw to inject one.
    /// - Throws: when an event is not traced or two of them have the same size.
    public func injectThroughMarker(_ events: [String], root: String) throws {
        var raw = try TraceFS.format(system: "ftrace", event: "raw_data", root: root)
        let id = raw.withUTF8 { buf in
            buf.withMemoryRebound(to: CChar.self) { ckvmscope_formats_parse(handle, "ftrace", $0.baseAddress, $0.count) }
        }
        guard id >= 0 else { throw KVMScopeError.badFormat("cannot parse the format of ftrace:raw_data") }
        var sizes: Set<Int> = []
        for target in events {
            guard catalog.index(of: target) != nil, let size = markerSize(of: target) else {
                throw KVMScopeError.unknownEvent("injected event \(target) is not traced")
            }
            guard sizes.insert(size).inserted else {
                throw KVMScopeError.badFormat("injected event \(target) has the size of another injected event")
            }
            try alias(kernelID: id, as: target, matchSize: events.count > 1 ? size : nil)
        }
    }

    /// The `__print_symbolic`/`__print_flags` tables of a parsed event's print fmt, in the order they appear
    /// (nested ones included), from the arguments libtraceevent parsed (`tep_event->print_fmt.args`).
    ///
    /// - Throws: `KVMScopeError.badFormat` when no event has that id (or memory runs out).
    public func printTables(kernelID id: Int32) throws -> [PrintFormatTable] {
        var tables: [PrintFormatTable] = []
        // The context is a pointer to the array variable itself (`&tables` would convert to its elements).
        let n = withUnsafeMutablePointer(to: &tables) { context in
            ckvmscope_formats_print_tables(handle, id, { table, context in
                guard let t = table?.pointee, let out = context?.assumingMemoryBound(to: [PrintFormatTable].self) else {
                    return
                }
                let entries = (0..<t.count).map {
                    SymbolTable.Entry(value: t.symbols[$0].value, name: String(cString: t.symbols[$0].name))
                }
                out.pointee.append(PrintFormatTable(
                    kind: t.kind == CKVMSCOPE_PRINT_FLAGS ? .flags : .symbolic, field: String(cString: t.field),
                    expression: String(cString: t.expression), separator: String(cString: t.delim),
                    table: SymbolTable(entries: entries)))
            }, context)
        }
        guard n >= 0 else { throw KVMScopeError.badFormat("cannot read the print fmt tables of event id \(id)") }
        return tables
    }

    /// Test and benchmark hook: decode events of `kernelID` (e.g. ftrace:raw_data written through
    /// trace_marker_raw) as if they were `asEvent`, whose payload they carry at the same offsets.
    ///
    /// - Parameter matchSize: when set, only records of exactly this payload size (rounded up to 4, as the ring
    ///   buffer stores it) decode as `asEvent`, so that one raw_data id can carry several events told apart by
    ///   size (``markerSize(of:)``): e.g. kvm_exit (72 bytes on 6.x) and kvm_entry (36). Test-only.
    public func alias(kernelID: Int32, as asEvent: String, matchSize: Int? = nil) throws {
        guard let index = catalog.index(of: asEvent), let l = layouts.first(where: { $0.index == index }) else {
            throw KVMScopeError.badFormat("no format for \(asEvent)")
        }
        var copy = l
        copy.kernel_id = kernelID
        copy.match_size = UInt16(clamping: matchSize ?? 0)
        layouts.append(copy)
    }

    /// The payload size of an event as its records occupy the ring buffer (the end of its last field, rounded
    /// up to 4): what a record written through trace_marker_raw with that event's bytes 8..< measures.
    public func markerSize(of event: String) -> Int? {
        guard let id = kernelIDs.first(where: { $0.key.hasSuffix(":" + event) })?.value else { return nil }
        guard let end = fieldTable(kernelID: id).values.map({ $0.offset + $0.size }).max() else { return nil }
        return (end + 3) & ~3
    }

    /// Offset and size of every field of an event, by name (common fields included), as libtraceevent parsed
    /// them. Empty when no event has that id.
    public func fieldTable(kernelID id: Int32) -> [String: (offset: Int, size: Int)] {
        var out: [String: (offset: Int, size: Int)] = [:]
        _ = withUnsafeMutablePointer(to: &out) { context in
            ckvmscope_formats_fields(handle, id, { name, offset, size, context in
                guard let name, let out = context?.assumingMemoryBound(to: [String: (offset: Int, size: Int)].self) else {
                    return
                }
                out.pointee[String(cString: name)] = (Int(offset), Int(size))
            }, context)
        }
        return out
    }

    func field(_ id: Int32, _ names: String...) -> ckvmscope_field {
        var f = ckvmscope_field()
        for n in names where ckvmscope_formats_field(handle, id, n, &f) == 0 { return f }
        return ckvmscope_field()
    }

    func layout(kernelID id: Int32, index: UInt16, role: EventRole) -> ckvmscope_event_layout {
        var l = ckvmscope_event_layout()
        l.kernel_id = id
        l.index = index
        l.role = role.rawValue
        switch role {
        case .exit:
            l.reason = field(id, "exit_reason", "esr_ec")
            l.isa_field = field(id, "isa")
            l.rip = field(id, "guest_rip", "vcpu_pc")
            l.detail = field(id, "info1", "ret")
            l.vcpu = field(id, "vcpu_id")
            if l.isa_field.size == 0, field(id, "esr_ec").size != 0 { l.isa = UInt8(CKVMSCOPE_ISA_ARM64) }
        case .entry:
            l.vcpu = field(id, "vcpu_id")
            l.rip = field(id, "rip", "vcpu_pc")
        case .userspaceExit:
            l.reason = field(id, "reason")
            l.aux = field(id, "errno")
        case .pio:
            l.detail = field(id, "port")
            l.aux = field(id, "size")
            l.aux2 = field(id, "rw")
        case .mmio:
            l.detail = field(id, "gpa")
            l.aux = field(id, "len")
            l.aux2 = field(id, "type")
        case .threadExit:
            l.detail = field(id, "pid")
            l.aux = field(id, "group_dead")
        case .count:
            break
        }
        return l
    }

    /// A decoder for sub-buffers of a kernel with that long size and byte order.
    public func makeDecoder(longSize: Int = 8, bigEndian: Bool = false) -> SubbufferDecoder {
        SubbufferDecoder(layouts: layouts, longSize: longSize, bigEndian: bigEndian)
    }

    static func value(of key: String, in text: String) -> String? {
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) where line.hasPrefix(key) {
            return line.dropFirst(key.count).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }
}
