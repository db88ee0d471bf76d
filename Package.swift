// swift-tools-version: 6.1
import PackageDescription

// Modules are cut by stage; data flows one way:
//   KVMSources (tracefs, trace.dat, text, synthetic pages) ─▶ KVMExits (records, reasons, merge → pair →
//   aggregate) ─▶ KVMAnalysis (summary, timeline, storm rules) ─▶ KVMScopeViews (tables, JSON, /metrics,
//   HTML, the live view's screens) ─▶ kvmscope (commands).
// Beside the flow: KVMHost (/proc: processes, threads, children), KVMTerminal and KVMGuest, each with its
// own small C shim. KVMSources is the only module that imports the tracing shim.
let package = Package(
    name: "kvmscope",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "kvmscope", targets: ["kvmscope"]),
        .library(name: "KVMExits", targets: ["KVMExits"]),
        .library(name: "KVMSources", targets: ["KVMSources"]),
        .library(name: "KVMAnalysis", targets: ["KVMAnalysis"]),
        .library(name: "KVMScopeViews", targets: ["KVMScopeViews"]),
        .library(name: "KVMHost", targets: ["KVMHost"]),
        .library(name: "KVMServe", targets: ["KVMServe"]),
        .library(name: "KVMResources", targets: ["KVMResources"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
    ],
    targets: [
        // libtracefs + libtraceevent (kbuffer, event parsing), via pkg-config.
        .systemLibrary(name: "CTraceFS", path: "CShims/CTraceFS", pkgConfig: "libtracefs",
                       providers: [.apt(["libtracefs-dev", "libtraceevent-dev"])]),
        // The tracing shim: per-CPU readers, sub-buffer decoder, formats, instances, trace.dat compression.
        .target(name: "CKVMScope", dependencies: ["CTraceFS"], path: "CShims/CKVMScope",
                linkerSettings: [.linkedLibrary("pthread"), .linkedLibrary("z"), .linkedLibrary("zstd")]),
        // The process-level shim: stop signals that wake every wait, children that die with kvmscope.
        .target(name: "CKVMHost", path: "CShims/CKVMHost", linkerSettings: [.linkedLibrary("pthread")]),
        // The storm guest's shim: a real VM through the KVM ioctl API.
        .target(name: "CKVMGuest", dependencies: ["CKVMHost"], path: "CShims/CKVMGuest",
                linkerSettings: [.linkedLibrary("pthread")]),
        // libvirt's public API (read-only: domain names, UUIDs, statistics), via pkg-config.
        .systemLibrary(name: "CLibvirt", path: "CShims/CLibvirt", pkgConfig: "libvirt", providers: [.apt(["libvirt-dev"])]),
        // gzip through the system's zlib (zlib1g-dev): serve's compressed /metrics.
        .target(name: "CZlib", path: "CShims/CZlib", linkerSettings: [.linkedLibrary("z")]),
        // The live view's terminal, through ncursesw.
        .target(name: "CTerminal", dependencies: ["CKVMHost"], path: "CShims/CTerminal",
                linkerSettings: [.linkedLibrary("ncursesw")]),

        // Records, reasons, pairing, histograms, aggregation, the pipeline. Pure Swift: no C, no unsafe pointers.
        .target(name: "KVMExits", dependencies: [
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "HeapModule", package: "swift-collections"),
        ], path: "Sources/KVMExits"),
        // /proc: processes and threads of the host, guests by name, children with a known end.
        .target(name: "KVMHost", dependencies: ["CKVMHost", "KVMExits", .product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/KVMHost"),
        // Every source of records: tracefs (live), trace.dat, text traces, synthetic pages. The only Swift
        // module that imports the tracing shim; every Unsafe* pointer for tracing lives here.
        .target(name: "KVMSources", dependencies: ["CKVMScope", "KVMExits", "KVMHost",
                                                   .product(name: "SystemPackage", package: "swift-system"),
                                                   .product(name: "Logging", package: "swift-log")],
                path: "Sources/KVMSources"),
        // What each VM costs the host, from procfs and sysfs (CPU, run-queue wait, memory, I/O, taps), libvirt, and
        // QEMU's QMP sockets (per-device disk counters, configured memory, balloon, KVM's binary statistics).
        .target(name: "KVMResources", dependencies: ["CLibvirt", "KVMExits"], path: "Sources/KVMResources"),
        // What views read: summaries, timelines, storm rules.
        .target(name: "KVMAnalysis", dependencies: ["KVMExits"], path: "Sources/KVMAnalysis"),
        .target(name: "KVMScopeViews", dependencies: ["KVMAnalysis", "KVMExits", "KVMResources"], path: "Sources/KVMScopeViews"),
        // serve's HTTP/1.1 server: bounded request heads, timeouts, one polling thread (FlyingSocks' sockets).
        .target(name: "KVMServe", dependencies: ["CZlib", "KVMScopeViews", .product(name: "FlyingSocks", package: "FlyingFox")],
                path: "Sources/KVMServe"),
        .target(name: "KVMTerminal", dependencies: ["CTerminal", "KVMExits", "KVMHost"], path: "Sources/KVMTerminal"),
        .target(name: "KVMGuest", dependencies: ["CKVMGuest", "KVMExits", "KVMHost"], path: "Sources/KVMGuest"),
        .executableTarget(name: "kvmscope", dependencies: [
            "KVMSources", "KVMExits", "KVMAnalysis", "KVMScopeViews", "KVMServe", "KVMHost", "KVMTerminal", "KVMGuest",
            "KVMResources",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "FlyingSocks", package: "FlyingFox"),
        ], path: "Sources/kvmscope"),
        // What the tests share: processes and threads with bounded waits, a loopback HTTP client.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "KVMExitsTests", dependencies: ["KVMExits", "KVMAnalysis", "KVMSources", "TestSupport"],
                    path: "Tests/KVMExitsTests"),
        .testTarget(name: "KVMSourcesTests", dependencies: ["KVMSources", "KVMExits", "KVMAnalysis", "KVMHost",
                                                            "TestSupport"],
                    path: "Tests/KVMSourcesTests"),
        .testTarget(name: "kvmscopeTests", dependencies: ["KVMExits", "KVMSources", "KVMAnalysis", "KVMScopeViews",
                                                          "KVMHost", "KVMResources", "KVMServe", "TestSupport",
                                                          .product(name: "FlyingSocks", package: "FlyingFox")],
                    path: "Tests/kvmscopeTests"),
        .testTarget(name: "KVMResourcesTests", dependencies: ["KVMResources", "TestSupport"],
                    path: "Tests/KVMResourcesTests"),
    ],
    swiftLanguageModes: [.v6]
)
