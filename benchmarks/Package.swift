// swift-tools-version: 6.1
// kvmscope's benchmarks: micro suites for the ordo-one benchmark plugin (Benchmarks/<Suite>/) and the
// harness behind `make bench` (Sources/kvmscope-bench), which prints markdown tables and writes
// results/<date>.json. Kept out of the main package so CI never builds the benchmark dependencies.
import PackageDescription

// The main package is "..": SwiftPM names a path dependency after its folder, which is whatever the clone
// was called, so take that name from where this manifest sits.
let mainPackage = Context.packageDirectory.split(separator: "/").dropLast().last.map { String($0).lowercased() } ?? "kvmscope"

let package = Package(
    name: "kvmscope-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/ordo-one/malloc-interposer", from: "1.6.1"),
    ],
    targets: [
        // Synthetic workloads shared by the suites and the harness: sub-buffer pages with a realistic reason mix.
        .target(name: "BenchSupport", dependencies: [
            .product(name: "KVMSources", package: mainPackage),
            .product(name: "KVMExits", package: mainPackage),
        ], path: "Sources/BenchSupport"),
        // `make bench`: the in-process decode benchmark plus the process-level comparisons with peers.
        .executableTarget(name: "kvmscope-bench", dependencies: [
            "BenchSupport",
            .product(name: "KVMSources", package: mainPackage),
            .product(name: "KVMExits", package: mainPackage),
            .product(name: "KVMAnalysis", package: mainPackage),
            .product(name: "KVMScopeViews", package: mainPackage),
            .product(name: "KVMHost", package: mainPackage),
            .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
        ], path: "Sources/kvmscope-bench"),
        // `swift package benchmark`: micro suites (throughput, wall clock, mallocs).
        .executableTarget(name: "Decode", dependencies: [
            "BenchSupport",
            .product(name: "KVMSources", package: mainPackage),
            .product(name: "KVMExits", package: mainPackage),
            .product(name: "Benchmark", package: "benchmark"),
        ], path: "Benchmarks/Decode",
           plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
    ],
    swiftLanguageModes: [.v6]
)
