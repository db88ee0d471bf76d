import FlyingSocks
import Foundation
import KVMScopeViews
import KVMServe
import Testing
import TestSupport

/// `/metrics` compressed with gzip when the scraper accepts it (Prometheus always asks), plain otherwise.
@Suite struct MetricsGzipTests {
    @Test func acceptEncodingNegotiation() {
        let cases: [(String?, ContentCoding)] = [
            (nil, .identity), ("", .identity), ("gzip", .gzip), ("GZip", .gzip), ("x-gzip", .gzip),
            ("deflate, gzip;q=1.0, *;q=0.5", .gzip),  // Go's http client, and Prometheus' own "gzip"
            ("gzip;q=0", .identity), ("gzip; q=0.000", .identity), ("gzip;q=0.001", .gzip), (" gzip ; q = 0.5 ", .gzip),
            ("identity", .identity), ("br, deflate", .identity), ("*", .gzip), ("*;q=0", .identity),
            ("gzip;q=0, *", .identity),  // named gzip refused: * does not bring it back
            ("br;q=1, *;q=0.1", .gzip), ("gzip;q=2", .identity), ("gzip;q=abc", .identity), ("gzip;q=0.5555", .identity),
            ("gzip;level=9", .gzip), ("x-gzip;q=0, gzip", .gzip),
        ]
        for (header, expected) in cases {
            #expect(ContentCoding.negotiate(acceptEncoding: header) == expected, "\(String(describing: header))")
        }
    }

    /// A fixed exposition, as a MetricsSource.
    final class Fixed: MetricsSource {
        let body: [UInt8]
        init(_ body: String) { self.body = Array(body.utf8) }
        func render(_ format: ExpositionFormat) throws -> [UInt8] { body }
    }

    /// 200 series of one family, as a scrape of a few VMs looks.
    static let body = "# HELP kvmscope_exits_total Exits by reason.\n# TYPE kvmscope_exits_total counter\n"
        + (0..<200).map { "kvmscope_exits_total{vm=\"\(1000 + $0 / 20)\",vm_name=\"guest\($0 / 20)\",reason=\"R\($0 % 20)\"} \($0 * 7919)\n" }.joined()

    static func gunzip(_ bytes: [UInt8]) throws -> String {
        let r = try Spawned.run("/usr/bin/gzip", ["-dc"], input: Data(bytes))
        #expect(r.status == 0, "gzip -d: \(r.stderr)")
        return r.stdout
    }

    @Test func scrapeIsGzipWhenAskedAndPlainOtherwise() throws {
        let port = freeLoopbackPort()
        let server = try MetricsServer(address: try sockaddr_in.inet(ip4: "127.0.0.1", port: port), source: Fixed(Self.body), version: "test")
        server.start()
        defer { server.stop() }
        let url = "http://127.0.0.1:\(port)/metrics"
        let plainBytes = Array(Self.body.utf8)

        let z = try #require(httpRequest(url, headers: [("Accept-Encoding", "gzip")]))
        #expect(z.status == 200)
        #expect(z.headers["content-encoding"] == "gzip")
        #expect(z.headers["vary"] == "Accept, Accept-Encoding")
        #expect(z.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
        #expect(z.headers["content-length"] == String(z.body.count))
        #expect(Array(z.body.prefix(3)) == [0x1f, 0x8b, 8], "a gzip member, deflate")
        #expect(try Self.gunzip(z.body) == Self.body)
        #expect(z.body.count * 5 < plainBytes.count, "\(z.body.count) of \(plainBytes.count) bytes")

        for header in [nil, "gzip;q=0", "identity", "br"] as [String?] {
            let p = try #require(httpRequest(url, headers: header.map { [("Accept-Encoding", $0)] } ?? []))
            #expect(p.status == 200)
            #expect(p.headers["content-encoding"] == nil, "\(String(describing: header))")
            #expect(p.headers["vary"] == "Accept, Accept-Encoding")
            #expect(p.body == plainBytes, "\(String(describing: header))")
        }

        // HEAD: the headers of the GET, no body.
        let head = try #require(httpRequest(url, method: "HEAD", headers: [("Accept-Encoding", "deflate, gzip")]))
        #expect(head.headers["content-encoding"] == "gzip" && head.headers["content-length"] == String(z.body.count))
        #expect(head.body.isEmpty)
        // Other paths are never compressed.
        let health = try #require(httpRequest("http://127.0.0.1:\(port)/healthz", headers: [("Accept-Encoding", "gzip")]))
        #expect(health.headers["content-encoding"] == nil && health.body == Array("ok\n".utf8))
    }
}
