// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "kvmscope",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "kvmscope", targets: ["kvmscope"]),
        .library(name: "KVMExits", targets: ["KVMExits"]),
        .library(name: "KVMTrace", targets: ["KVMTrace"]),
        .library(name: "KVMScopeViews", targets: ["KVMScopeViews"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // libtracefs + libtraceevent (kbuffer, event parsing) + ncursesw, via pkg-config.
        .systemLibrary(name: "CTraceFS", path: "CShims/CTraceFS", pkgConfig: "libtracefs",
                       providers: [.apt(["libtracefs-dev", "libtraceevent-dev"])]),
        // The C shim: per-CPU reader, sub-buffer decoder, trace.dat I/O, KVM guest generator.
        .target(name: "CKVMScope", dependencies: ["CTraceFS"], path: "CShims/CKVMScope",
                cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])],
                linkerSettings: [.linkedLibrary("pthread"), .linkedLibrary("z"), .linkedLibrary("zstd"),
                                 .linkedLibrary("ncursesw")]),
        // Pure Swift: events, reasons, pairing, histograms, aggregation. No C, no unsafe pointers.
        .target(name: "KVMExits", path: "Sources/KVMExits",
                swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]),
        // The only Swift module that imports the shim; every Unsafe* pointer lives here.
        .target(name: "KVMTrace", dependencies: ["CKVMScope", "KVMExits",
                                                 .product(name: "Logging", package: "swift-log"),
                                                 .product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/KVMTrace"),
        .target(name: "KVMScopeViews", dependencies: ["KVMExits"], path: "Sources/KVMScopeViews"),
        .executableTarget(name: "kvmscope", dependencies: [
            "KVMTrace", "KVMExits", "KVMScopeViews",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "FlyingFox", package: "FlyingFox"),
            .product(name: "FlyingSocks", package: "FlyingFox"),
        ], path: "Sources/kvmscope"),
        // What the tests share: processes and threads with bounded waits, a loopback HTTP client.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "KVMExitsTests", dependencies: ["KVMExits", "TestSupport"], path: "Tests/KVMExitsTests"),
        .testTarget(name: "KVMTraceTests", dependencies: ["KVMTrace", "KVMExits", "TestSupport"], path: "Tests/KVMTraceTests"),
        .testTarget(name: "kvmscopeTests", dependencies: ["KVMExits", "KVMTrace", "KVMScopeViews", "TestSupport"],
                    path: "Tests/kvmscopeTests"),
    ],
    swiftLanguageModes: [.v6]
)
