import KVMAnalysis
import KVMExits

/// What the live view shows and how: everything the keys change. Pure data; the command owns one.
public struct LiveViewState: Sendable {
    /// The body of the screen.
    public enum Mode: Sendable, Equatable {
        /// kvm_stat's table of events with their children.
        case events
        /// `b`: one row per VM (kvm_stat's "by guest"); Enter picks one.
        case guests
        /// `v`: the selected VM's rows per vCPU.
        case vcpus
        /// `i`: I/O exits per port and MMIO address, each named by its device (perf kvm stat's ioport and mmio).
        case io
    }

    /// A question at the bottom of the screen (kvm_stat's `f`, `p`, `g`, `s` masks).
    public struct Prompt: Sendable, Equatable {
        public enum Kind: Sendable, Equatable { case regex, pid, guest, delay }
        public var kind: Kind
        public var input = ""
        /// Why the last answer was refused.
        public var message = ""
        public init(kind: Kind) { self.kind = kind }
    }

    /// kvm_stat's `-f` / `f`: a regular expression on event names (nil: everything).
    public var fields: String?
    /// `-p` / `p` / `g` / Enter in the guest list: the VM shown (nil: all). Each choice has sparklines of its
    /// own (``history``): the whole host's go on while a VM is shown, and a VM's go on while it is not, for the
    /// last ``keptVMHistories`` VMs chosen; a VM chosen for the first time (or again after it was dropped) starts
    /// with none.
    public var pid: Int32? {
        didSet { if let pid, pid != oldValue { keepHistory(of: pid) } }
    }
    /// The guest's name when `pid` is set, kept to find the guest again after it restarts.
    public var guestName: String?
    /// The process `pid` has exited (kvm_stat: "Guest is DEAD"); cleared when the name resolves again.
    public var guestDead = false
    /// `o`: sort by Total instead of CurAvg/s.
    public var sortByTotal = false
    /// `x`: show child rows such as `kvm_exit(HLT)`.
    public var showChildren = true
    public var mode: Mode = .events
    /// The address spaces the `i` screen lists (`--event ioport` / `mmio`, as perf kvm stat live); empty: both.
    public var ioSpaces: Set<DeviceMap.Space> = []
    /// The row under the cursor (arrow keys), counted from the first body row.
    public var selected = 0
    /// `s`: the refresh interval, seconds.
    public var delay: Double = 3
    /// `h`: the help screen is up.
    public var showingHelp = false
    public var prompt: Prompt?
    /// A line shown at the bottom until the next key (refused input, "no VM selected").
    public var message: String?
    /// A permanent notice at the bottom (the demo guest).
    public var notice: String?
    /// The sparklines of what is shown now: the chosen VM's (``pid``), else the whole host's.
    public var history: RateHistory {
        get { pid.flatMap { vmHistories[$0] } ?? summaryHistory }
        set {
            if let pid { vmHistories[pid] = newValue } else { summaryHistory = newValue }
        }
    }
    /// The whole host's sparklines (no VM chosen).
    public var summaryHistory = RateHistory()
    /// The sparklines of each VM chosen lately, by pid (the command samples each at every refresh).
    public private(set) var vmHistories: [Int32: RateHistory] = [:]
    /// The VMs whose sparklines are kept, least recently chosen first.
    private var chosenVMs: [Int32] = []
    /// How many VMs' sparklines go on beside the host's: a refresh computes one summary for each.
    public static let keptVMHistories = 8

    /// Records one sample for the host's sparklines (`vm` nil) or for a kept VM's (ignored for any other).
    public mutating func record(_ rates: [String: Double], vm: Int32?) {
        guard let vm else { return summaryHistory.record(rates) }
        vmHistories[vm]?.record(rates)
    }

    /// `pid`'s sparklines go on from now (the most recently chosen; the least recently chosen beyond
    /// ``keptVMHistories`` are dropped).
    private mutating func keepHistory(of pid: Int32) {
        chosenVMs.removeAll { $0 == pid }
        chosenVMs.append(pid)
        if vmHistories[pid] == nil {
            var h = RateHistory()
            h.capacity = summaryHistory.capacity
            vmHistories[pid] = h
        }
        while chosenVMs.count > Self.keptVMHistories { vmHistories[chosenVMs.removeFirst()] = nil }
    }

    /// Sets every kept history's capacity (a new delay).
    mutating func setHistoryCapacity(_ capacity: Int) {
        summaryHistory.capacity = capacity
        for k in vmHistories.keys { vmHistories[k]!.capacity = capacity }
    }
    /// Pids of kernel threads that caused events (`kdamond.0`, `kvm-pit/PID`): no guests, so not listed by
    /// `b` nor offered by the `p` and `g` prompts. The command finds them (/proc/PID/stat's PF_KTHREAD).
    public var kernelThreads: Set<Int32> = []
    /// Pids of VMs that have exited: still in `b`'s totals, no longer offered by the `p` and `g` prompts.
    public var exited: Set<Int32> = []

    public init(fields: String? = nil, pid: Int32? = nil, guestName: String? = nil, delay: Double = 3) {
        self.fields = fields
        self.pid = pid
        if let pid { keepHistory(of: pid) }
        self.guestName = guestName
        self.delay = delay
        setHistoryCapacity(RateHistory.capacity(forDelay: delay))
    }

    /// The summary filter this state asks for: `f` matched at the start of a name, as kvm_stat's `re.match`
    /// (and `stat -f`).
    public var filter: SummaryFilter {
        var f = SummaryFilter(vms: pid.map { [$0] }, fields: fields)
        f.fieldsAtStart = true
        return f
    }

    /// `c`: kvm_stat clears the regex and the pid.
    public mutating func clearFilters() {
        fields = nil
        pid = nil
        guestName = nil
        guestDead = false
        if mode == .vcpus { mode = .events }
        selected = 0
    }

    /// `f`: sets the regex filter; empty clears it. Returns a message when the regex does not compile.
    public mutating func setRegex(_ text: String) -> String? {
        if text.isEmpty {
            fields = nil
            return nil
        }
        do { _ = try Regex(text) } catch { return "\"\(text)\": Not a valid regular expression" }
        fields = text
        selected = 0
        return nil
    }

    /// `s`: kvm_stat's rules: empty → default 3 s, else 0.1 to 25.5.
    public mutating func setDelay(_ text: String) -> String? {
        if text.isEmpty {
            delay = 3
        } else {
            guard let d = Double(text) else { return "\"\(text)\": Invalid value" }
            if d < 0.1 { return "\"\(text)\": Value must be >=0.1" }
            if d > 25.5 { return "\"\(text)\": Value must be <=25.5" }
            delay = d
        }
        setHistoryCapacity(RateHistory.capacity(forDelay: delay))
        return nil
    }

    /// Moves the cursor by `by` rows within `count` rows.
    public mutating func moveSelection(by: Int, count: Int) {
        selected = Swift.max(0, Swift.min(Swift.max(0, count - 1), selected + by))
    }
}

/// The exit rate of each row over the last minute, one sample per refresh, for the sparklines.
public struct RateHistory: Sendable, Equatable {
    public var samples: [String: [Double]] = [:]
    /// Samples kept per row (a minute's worth).
    public var capacity = 20 {
        didSet { for k in samples.keys where samples[k]!.count > capacity { samples[k]!.removeFirst(samples[k]!.count - capacity) } }
    }

    public init() {}

    public static func capacity(forDelay delay: Double) -> Int { Swift.max(2, Swift.min(600, Int((60 / delay).rounded()))) }

    /// Adds one sample per row; rows absent from `rates` get 0, rows never seen start now.
    public mutating func record(_ rates: [String: Double]) {
        for k in Set(samples.keys).union(rates.keys) {
            var s = samples[k] ?? []
            s.append(rates[k] ?? 0)
            if s.count > capacity { s.removeFirst(s.count - capacity) }
            samples[k] = s
        }
    }

    /// `width` cells of ▁▂▃▄▅▆▇█ (blank for zero), newest at the right, scaled to the row's own maximum.
    /// Older samples are grouped when there are more than `width`.
    public func sparkline(_ id: String, width: Int) -> String {
        guard width > 0 else { return "" }
        let s = samples[id] ?? []
        var cells: [Double] = []
        if s.count <= width {
            cells = s
        } else {
            // Group consecutive samples into `width` cells (average), oldest first.
            for i in 0..<width {
                let lo = i * s.count / width
                let hi = (i + 1) * s.count / width
                let part = s[lo..<Swift.max(hi, lo + 1)]
                cells.append(part.reduce(0, +) / Double(part.count))
            }
        }
        let top = cells.max() ?? 0
        let bars: [Character] = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]
        let drawn = cells.map { v -> Character in
            guard v > 0, top > 0 else { return " " }
            return bars[Swift.min(7, Swift.max(0, Int((v / top * 8).rounded(.up)) - 1))]
        }
        return String(repeating: " ", count: width - drawn.count) + String(drawn)
    }
}
