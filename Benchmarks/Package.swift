// swift-tools-version:6.1
// IOLoop's benchmarks, kept out of the root package so its build and tests stay lean.
//
// - `IOLoopBenchmarks` (Benchmarks/IOLoopBenchmarks): package-benchmark suites with malloc counters and
//   regression tracking: `swift package benchmark` in this directory.
// - `ioloop-bench` (Sources/ioloop-bench): a standalone runner with exactly the methodology and output
//   format of the C libev and C++ Boost.Asio comparators in Comparators/, for side-by-side ratios:
//   `./compare` in this directory builds and runs everything.
import PackageDescription

let package = Package(
    name: "IOLoopBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "IOLoop", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .target(
            name: "BenchSupport",
            dependencies: [
                .product(name: "IOLoop", package: "IOLoop"),
                .product(name: "ControlChannel", package: "IOLoop"),
            ],
            path: "Sources/BenchSupport"
        ),
        .executableTarget(
            name: "ioloop-bench",
            dependencies: [
                "BenchSupport",
                .product(name: "IOLoop", package: "IOLoop"),
                .product(name: "ControlChannel", package: "IOLoop"),
            ],
            path: "Sources/ioloop-bench"
        ),
        // UNIX-stream socket workloads (bulk read, connection churn) mirroring Comparators/socket_libev_bench.c;
        // `SocketBench read <path>` is the IOLoop reader of compare's bulk_read workload (writer: bulk-stream).
        .executableTarget(
            name: "SocketBench",
            dependencies: [.product(name: "IOLoop", package: "IOLoop")],
            path: "Sources/SocketBench"
        ),
        .executableTarget(
            name: "IOLoopBenchmarks",
            dependencies: [
                "BenchSupport",
                .product(name: "IOLoop", package: "IOLoop"),
                .product(name: "ControlChannel", package: "IOLoop"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/IOLoopBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
