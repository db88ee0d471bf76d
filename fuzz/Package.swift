// swift-tools-version: 6.1
// kvmscope's libFuzzer targets for the readers of untrusted bytes (`make fuzz`). Kept out of the main
// package like benchmarks/: built with -sanitize=fuzzer,address (the Makefile passes it to every module, so
// the product code is instrumented too), never a dependency of anything, so unsafe flags are fine here.
// The raw sub-buffer decoder has a C target of its own (c/decode_subbuf.c, built by the Makefile with clang).
import PackageDescription

// The main package is "..": SwiftPM names a path dependency after its folder, which is whatever the clone
// was called, so take that name from where this manifest sits.
let mainPackage = Context.packageDirectory.split(separator: "/").dropLast().last.map { String($0).lowercased() } ?? "kvmscope"

// Each target's main.swift hands its one-input function to libFuzzer's driver (Fuzz.run).
func target(_ name: String, _ deps: [Target.Dependency]) -> Target {
    .executableTarget(name: name, dependencies: ["FuzzSupport"] + deps, path: "Sources/\(name)")
}

let package = Package(
    name: "kvmscope-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
    ],
    targets: [
        // What every target shares: the one-line error check, a file descriptor that holds the input.
        .target(name: "CLibFuzzer", path: "Sources/CLibFuzzer"),
        .target(name: "FuzzSupport", dependencies: [
            "CLibFuzzer",
            .product(name: "KVMSources", package: mainPackage),
            .product(name: "KVMExits", package: mainPackage),
            .product(name: "KVMAnalysis", package: mainPackage),
            .product(name: "KVMScopeViews", package: mainPackage),
        ], path: "Sources/FuzzSupport"),
        // trace.dat (v6, v7: none/zlib/zstd, options, buffers) → TraceDatReader → the report's analysis and views.
        target("fuzz-trace-dat", [
            .product(name: "KVMSources", package: mainPackage),
            .product(name: "KVMExits", package: mainPackage),
            .product(name: "KVMAnalysis", package: mainPackage),
            .product(name: "KVMScopeViews", package: mainPackage),
        ]),
        // Text traces (kernel text, trace-cmd report, perf script) → TextTraceReader → analysis and views.
        target("fuzz-text-trace", [
            .product(name: "KVMSources", package: mainPackage),
            .product(name: "KVMExits", package: mainPackage),
            .product(name: "KVMAnalysis", package: mainPackage),
            .product(name: "KVMScopeViews", package: mainPackage),
        ]),
        // --alert rules → StormRule.
        target("fuzz-storm-rule", [.product(name: "KVMAnalysis", package: mainPackage)]),
        // Request bytes on a socket → serve's own HTTP server (KVMServe.MetricsServer).
        target("fuzz-http", [
            .product(name: "KVMAnalysis", package: mainPackage),
            .product(name: "KVMExits", package: mainPackage),
            .product(name: "KVMScopeViews", package: mainPackage),
            .product(name: "KVMServe", package: mainPackage),
            .product(name: "FlyingSocks", package: "FlyingFox"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
