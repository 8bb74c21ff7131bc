// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "bottleneck",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "bottleneck", targets: ["bottleneck"]),
        .library(name: "Bottleneck", targets: ["Bottleneck"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // SHA-256 of 528 MB weights and of every image: BoringSSL's is 6.8x the hand-written Swift one's speed.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        // JPEG/PNG decoding with setjmp-protected error handling (Swift cannot survive libjpeg/libpng's longjmp).
        .target(name: "CImageCodecs", dependencies: ["CJPEG", "CPNG"]),
        // Reads an HDF5 file's structure in a child process first: libhdf5 1.10 crashes inside itself on some damage.
        .target(name: "CHDF5Probe", dependencies: ["CHDF5"]),
        // Dependencies run one way: BottleneckKernels (tensors, layers, gemm, threads) → Bottleneck (model, images,
        // cache, training, jobs, pipeline, report) → BottleneckCLI (the commands) → bottleneck (main.swift).
        // What crosses a target is `package`; `public` is the library API a Swift user imports.
        .target(name: "BottleneckKernels", dependencies: ["COpenBLAS"]),
        .target(
            name: "Bottleneck",
            dependencies: ["BottleneckKernels", "CHDF5", "CHDF5Probe", "COpenBLAS", "CJPEG", "CPNG", "CImageCodecs",
                           .product(name: "Yams", package: "Yams"), .product(name: "Crypto", package: "swift-crypto")]
        ),
        .target(
            name: "BottleneckCLI",
            dependencies: ["Bottleneck", "BottleneckKernels", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(name: "bottleneck", dependencies: ["BottleneckCLI"]),
        .testTarget(
            name: "BottleneckTests",
            dependencies: ["Bottleneck", "BottleneckKernels", "BottleneckCLI"]
        ),
        // The README's library example, compiled against the public API alone (no @testable import).
        .testTarget(name: "LibraryExampleTests", dependencies: ["Bottleneck"]),
    ]
)
