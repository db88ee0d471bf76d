/// What the decoder extracts from an event, and what the aggregator does with it.
public enum EventRole: UInt8, Sendable, Codable {
    /// Counted only.
    case count = 0
    /// `kvm_exit`: counted per reason, paired with the next entry for latency.
    case exit = 1
    /// `kvm_entry`: closes an exit.
    case entry = 2
    /// `kvm_userspace_exit`: counted per KVM_EXIT_* reason.
    case userspaceExit = 3
    case pio = 4
    case mmio = 5
    /// `sched:sched_process_exit` in a live session that retires threads: a thread's exit (detail = its `pid`
    /// field, aux = `group_dead`). Never counted as an event: the readers note it for retirement
    /// (``Aggregator/noteThreadExit(_:timestamp:)``); it sits after every kvm event of a source's catalog,
    /// and the aggregate's catalog leaves it out (``EventCatalog/withoutThreadExits``).
    case threadExit = 6

    /// The role a kvm event plays, by its name.
    public static func of(eventName: String) -> EventRole {
        switch eventName {
        case "kvm_exit": .exit
        case "kvm_entry": .entry
        case "kvm_userspace_exit": .userspaceExit
        case "kvm_pio": .pio
        case "kvm_mmio": .mmio
        default: .count
        }
    }

    /// Whether events of this role are counted per reason (children rows, like kvm_stat's).
    public var hasReasons: Bool { self == .exit || self == .userspaceExit }
}

/// The events a source decodes, in the order of ``TraceEvent/event`` indices.
public struct EventCatalog: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var system: String
        public var name: String
        public var role: EventRole
        public init(system: String, name: String, role: EventRole) {
            self.system = system
            self.name = name
            self.role = role
        }
    }

    public private(set) var entries: [Entry] = []
    /// Names for the reason codes of exit and userspace-exit events.
    public var exitReasons = ExitReasonNames(kvmExitTables: [])
    public var userspaceExitReasons = UserspaceExitNames(kvmUserspaceExitTables: [])
    /// Exit reasons a text trace printed with a name no table knows, kept as spelled: the exit's reason is
    /// ``spelledReasonBase`` + index here, its ISA `.unknown`.
    public var spelledReasons: [String] = []
    public static let spelledReasonBase: UInt32 = 0xffff_0000

    public init() {}

    /// Adds an event and returns its index.
    @discardableResult
    public mutating func add(system: String, name: String, role: EventRole? = nil) -> UInt16 {
        if let i = index(of: name) { return i }
        entries.append(Entry(system: system, name: name, role: role ?? EventRole.of(eventName: name)))
        return UInt16(entries.count - 1)
    }

    public func index(of name: String) -> UInt16? {
        entries.firstIndex { $0.name == name }.map { UInt16($0) }
    }

    public var count: Int { entries.count }

    /// The catalog without its trailing ``EventRole/threadExit`` entries (which follow every kvm event, so the
    /// other indices stay): what the aggregate counts and every view shows.
    public var withoutThreadExits: EventCatalog {
        var c = self
        while c.entries.last?.role == .threadExit { c.entries.removeLast() }
        return c
    }
    public subscript(index: UInt16) -> Entry { entries[Int(index)] }

    /// The child-row name of an event's reason (`HLT`, `KVM_EXIT_IO`), or nil for events without reasons.
    public func reasonName(event: UInt16, reason: UInt32, isa: UInt8) -> String? {
        guard Int(event) < entries.count else { return nil }
        switch entries[Int(event)].role {
        case .exit:
            if isa == ISA.unknown.rawValue, reason >= Self.spelledReasonBase,
               Int(reason - Self.spelledReasonBase) < spelledReasons.count {
                return spelledReasons[Int(reason - Self.spelledReasonBase)]
            }
            return exitReasons.name(isa: ISA(rawValue: isa) ?? .unknown, rawReason: reason)
        case .userspaceExit: return userspaceExitReasons.name(reason)
        default: return nil
        }
    }
}
