// swift-tools-version:6.0
// libFuzzer targets for every reader of bottleneck, in their own package so the main build and its tests
// never see the sanitizers. Build: swift build -c release -Xswiftc -sanitize=fuzzer,address (run.sh does it, with
// -Xcc -fsanitize=fuzzer-no-link,address for the C codecs too).
import Foundation
import PackageDescription

// A path dependency is known by its folder's name, which is whatever the clone was called.
let mainPackage = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent().lastPathComponent
let bottleneck = Target.Dependency.product(name: "Bottleneck", package: mainPackage)
let readers = ["image", "weights", "cache", "journal", "model", "pipeline"]
// gold (Debian's default) dies with "internal error in format_file_lineno" linking some of these with ASan.
let linker = [LinkerSetting.unsafeFlags(["-use-ld=lld"])]

let package = Package(
    name: "bottleneck-fuzz",
    platforms: [.macOS(.v13)],
    dependencies: [.package(path: "..")],
    targets: [.target(name: "FuzzDriver", dependencies: [bottleneck])]
        + readers.map { .executableTarget(name: "fuzz-\($0)", dependencies: ["FuzzDriver", bottleneck], linkerSettings: linker) }
        // Not a fuzz target: writes the seeds that need the library (caches, a journal, a model).
        + [.executableTarget(name: "fuzz-seeds", dependencies: [bottleneck], linkerSettings: linker)]
)
