import CZlib

/// The content codings `/metrics` can send: gzip when the scraper accepts it (Prometheus sends
/// `Accept-Encoding: gzip` on every scrape, and client_golang's and node_exporter's handlers answer it
/// compressed), else the plain bytes.
public enum ContentCoding: Equatable, Sendable {
    case identity
    case gzip

    /// zlib's level for a scrape: 1, the fastest. Exposition text is repetitive (the same family and label
    /// names on every line), so level 1 already makes it 5× (a few VMs) to 26× (1,000 vCPU threads) smaller,
    /// in about a third of the default level's CPU (README, serve): a scrape is rendered on the server's one
    /// thread.
    public static let level: Int32 = 1

    /// The coding an `Accept-Encoding` header asks for (RFC 9110 §12.5.3): gzip when `gzip` (or its old
    /// alias `x-gzip`) is listed with a q-value above 0, or when it is not listed and `*` is (q above 0);
    /// identity otherwise — no header, `gzip;q=0`, or a q-value that is no number between 0 and 1 (that entry
    /// is ignored). Codings are case-insensitive; whitespace around entries and parameters is allowed.
    public static func negotiate(acceptEncoding header: String?) -> ContentCoding {
        guard let header else { return .identity }
        var gzip: Double?
        var star: Double?
        for entry in header.split(separator: ",") {
            let parts = entry.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            guard let coding = parts.first?.lowercased(), !coding.isEmpty else { continue }
            var q = 1.0
            var valid = true
            for parameter in parts.dropFirst() {
                let kv = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard kv.count == 2, kv[0].lowercased() == "q" else { continue }
                if let v = qValue(kv[1]) { q = v } else { valid = false }
            }
            guard valid else { continue }
            switch coding {
            case "gzip", "x-gzip": gzip = max(gzip ?? 0, q)
            case "*": star = q
            default: break
            }
        }
        return (gzip ?? star ?? 0) > 0 ? .gzip : .identity
    }

    /// An RFC 9110 qvalue: `0`, `1`, or up to three decimals (`0.5`, `1.000`); nil for anything else.
    static func qValue(_ text: String) -> Double? {
        let digits = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let whole = digits.first, whole == "0" || whole == "1",
              digits.count == 1 || (digits[1].count <= 3 && digits[1].allSatisfy { $0 >= "0" && $0 <= "9" }),
              let v = Double(text), v <= 1 else { return nil }
        return v
    }

    /// `bytes` as one gzip member, compressed by the system's zlib at `level` (1…9, -1 zlib's default); nil
    /// when zlib fails (out of memory): the caller sends the bytes plain.
    public static func gzip(_ bytes: [UInt8], level: Int32 = ContentCoding.level) -> [UInt8]? {
        let bound = ckvmscope_gzip_bound(bytes.count)
        var status: Int32 = 0
        let out = [UInt8](unsafeUninitializedCapacity: bound) { buffer, count in
            var written = bound
            status = bytes.withUnsafeBytes { ckvmscope_gzip($0.baseAddress, $0.count, level, buffer.baseAddress, &written) }
            count = status == 0 ? written : 0
        }
        return status == 0 ? out : nil
    }
}
