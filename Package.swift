// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "IOLoop",
    products: [
        .library(name: "IOLoop", targets: ["IOLoop"]),
        .library(name: "ControlChannel", targets: ["ControlChannel"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
    ],
    targets: [
        // Thin shim over the system libev (Debian libev-dev): static inline wrappers for macros only.
        .target(
            name: "CLibev",
            linkerSettings: [.linkedLibrary("ev")]
        ),
        .target(
            name: "IOLoop",
            dependencies: [
                "CLibev",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(
            name: "ControlChannel",
            dependencies: [
                "IOLoop",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "packet-server",
            dependencies: [
                "IOLoop",
                "ControlChannel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "ioloop-ctl",
            dependencies: ["ControlChannel", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(name: "IOLoopTests", dependencies: ["IOLoop", "CLibev"]),
        .testTarget(
            name: "PacketServerTests",
            dependencies: ["packet-server", "ControlChannel", "IOLoop"]
        ),
        .testTarget(
            name: "ControlChannelTests",
            dependencies: ["ControlChannel", "IOLoop", .product(name: "Logging", package: "swift-log")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
