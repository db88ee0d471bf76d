import FuzzSupport
import KVMSources

// Text trace bytes (kernel trace text, trace-cmd report, perf script, split and CRLF lines) →
// TextTraceReader → the offline analysis and every view of it. A bad file throws one line naming it.

Fuzz.run { data, size in
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    do {
        let reader = try TextTraceReader(bytes: bytes, name: "fuzz.txt")
        if reader.events.count > size / 8 { Fuzz.fail("\(reader.events.count) events from \(size) bytes") }
        try Fuzz.analyse(reader)
    } catch {
        Fuzz.checkError(error, naming: "fuzz.txt")
    }
}
