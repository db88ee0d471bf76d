import FuzzSupport
import KVMAnalysis

// --alert text → StormRule. A rule that parses must parse again from its own text to the same rule; one that
// does not gives a one-line reason.

Fuzz.run { data, size in
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        let rule = try StormRule(parsing: text)
        guard let again = try? StormRule(parsing: rule.description), again == rule else {
            Fuzz.fail("'\(rule.description)' does not parse back to the same rule")
        }
        _ = rule.holds(rule.threshold)
    } catch {
        Fuzz.checkError(error, naming: nil)
    }
}
