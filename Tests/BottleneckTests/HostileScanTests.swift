#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest
@testable import Bottleneck
@testable import BottleneckKernels

/// Image folders, pipeline files and batch sizes made to hang, blow up or silently change the tool's
/// results: symbolic link loops, FIFOs, names that are not UTF-8, YAML alias bombs, huge batches.
final class HostileScanTests: FolderTestCase {
    private let image = Fixtures.path("images/rgb_97x131.png")

    /// Copies of the fixture image at each relative path under `root`.
    private func images(_ relatives: [String], under root: String) throws {
        for relative in relatives {
            let target = (root as NSString).appendingPathComponent(relative)
            try FileManager.default.createDirectory(atPath: (target as NSString).deletingLastPathComponent,
                                                    withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: image, toPath: target)
        }
    }

    /// A file (copy of the image) or folder at `parent`/`name`, where `name` is raw bytes (not UTF-8).
    private func makeRaw(_ name: [UInt8], in parent: String, folder: Bool) throws {
        let path = Array(parent.utf8) + [UInt8(ascii: "/")] + name + [0]
        let made = path.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { characters -> Bool in
                guard let base = characters.baseAddress else { return false }
                if folder { return mkdir(base, 0o755) == 0 }
                let descriptor = open(base, O_WRONLY | O_CREAT | O_EXCL, 0o644)
                guard descriptor >= 0 else { return false }
                close(descriptor)
                return true
            }
        }
        XCTAssertTrue(made, "cannot make \(DirectoryListing.escaped(name)) in \(parent)")
    }

    // MARK: the scan

    func testASymbolicLinkLoopIsWalkedOnceAndNamed() throws {
        let root = path("loops")
        try images(["c/a.png", "c/sub/b.png"], under: root)
        try FileManager.default.createSymbolicLink(atPath: root + "/c/loop", withDestinationPath: ".")
        try FileManager.default.createSymbolicLink(atPath: root + "/c/sub/up", withDestinationPath: "..")
        let started = Date()
        let folder = try ImageFolder(root: root)
        XCTAssertLessThan(Date().timeIntervalSince(started), 1, "two loops made the scan exponential")
        XCTAssertEqual(folder.items.map(\.path), ["c/a.png", "c/sub/b.png"])
        XCTAssertEqual(folder.warnings.count, 2, "\(folder.warnings)")
        XCTAssertTrue(folder.warnings.contains { $0.hasSuffix("c/loop: a symbolic link to a folder already scanned (a link loop?)") },
                      "\(folder.warnings)")
        XCTAssertTrue(folder.warnings.contains { $0.contains("c/sub/up: ") }, "\(folder.warnings)")
    }

    /// torchvision keeps a class whose folder is a link to another class's folder; so does the scan
    /// (each class is walked on its own), and it lists a folder linked into its own class under its real path.
    func testLinkedClassFoldersKeepTheirImagesAndRealPathsWinOverLinks() throws {
        let root = path("linked")
        try images(["b/x.png", "c/real/y.png"], under: root)
        try FileManager.default.createSymbolicLink(atPath: root + "/z", withDestinationPath: "b")
        try FileManager.default.createSymbolicLink(atPath: root + "/c/alias", withDestinationPath: "real")
        let folder = try ImageFolder(root: root)
        XCTAssertEqual(folder.classes, ["b", "c", "z"])
        XCTAssertEqual(folder.items.map(\.path), ["b/x.png", "c/real/y.png", "z/x.png"])
        XCTAssertEqual(folder.items.map(\.label), [0, 1, 2])
        XCTAssertEqual(folder.warnings.count, 1)
        XCTAssertTrue(folder.warnings[0].contains("c/alias: a symbolic link to a folder already scanned"), folder.warnings[0])
    }

    /// The class list and image order of torchvision's ImageFolder, as its `find_classes` and
    /// `make_dataset` (`sorted(os.walk(dir, followlinks=True))`, extension test on the lowercased name)
    /// give them for this folder (checked with those lines of Python).
    func testClassesAndOrderAreTorchvisions() throws {
        let root = path("torchvision")
        try images(["..x/1.png", ".hidden/.2.png", "B/3.JPG", "a b/4.jpeg",
                    "a/z.png", "a/sub/x.png", "a/sub-c/w.png", "a/sub.b/y.png", "a/sub/deeper/v.png", "a/.jpg",
                    "a/not-an-image.gif", "a/x.jpg.txt", "loose.png"], under: root)
        try FileManager.default.createDirectory(atPath: root + "/empty", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: root + "/linked", withDestinationPath: root + "/B")
        let folder = try ImageFolder(root: root)
        XCTAssertEqual(folder.classes, ["..x", ".hidden", "B", "a", "a b", "empty", "linked"])
        XCTAssertEqual(folder.items.map(\.path), [
            "loose.png", "..x/1.png", ".hidden/.2.png", "B/3.JPG",
            "a/.jpg", "a/z.png", "a/sub/x.png", "a/sub-c/w.png", "a/sub.b/y.png", "a/sub/deeper/v.png",
            "a b/4.jpeg", "linked/3.JPG",
        ])
        XCTAssertEqual(folder.items.map(\.label), [-1, 0, 1, 2, 3, 3, 3, 3, 3, 3, 4, 6])
        XCTAssertEqual(folder.emptyClassFolders, ["empty"])
        XCTAssertEqual(folder.warnings, [])
    }

    func testNamesThatAreNotUTF8AreNamedNotLost() throws {
        let root = path("latin1")
        try images(["cat/ok.png"], under: root)
        try makeRaw(Array("caf".utf8) + [0xe9] + Array(".png".utf8), in: root + "/cat", folder: false)
        try makeRaw([0xff, 0x41], in: root + "/cat", folder: true)
        let folder = try ImageFolder(root: root)
        XCTAssertEqual(folder.items.map(\.path), ["cat/ok.png"])
        XCTAssertEqual(folder.warnings.sorted(), [
            "skipped \(root)/cat/\\xffA: the name is not UTF-8",
            "skipped \(root)/cat/caf\\xe9.png: the name is not UTF-8",
        ])

        // A class folder cannot be left out: every later class index would shift.
        try makeRaw(Array("d".utf8) + [0xc3, 0x28], in: root, folder: true)
        XCTAssertThrowsError(try ImageFolder(root: root)) { error in
            XCTAssertEqual("\(error)", "\(root)/d\\xc3(: a class folder whose name is not UTF-8; rename it (leaving it out "
                           + "would shift the class indices torchvision's ImageFolder gives)")
        }
    }

    func testClassFoldersEqualOnlyUnderNormalizationAreRefused() throws {
        let root = path("nfc")
        try images(["caf\u{e9}/a.png", "cafe\u{301}/b.png"], under: root)
        XCTAssertThrowsError(try ImageFolder(root: root)) { error in
            XCTAssertTrue("\(error)".contains("differ only in Unicode normalization"), "\(error)")
        }
    }

    /// A FIFO named like an image is listed, as torchvision lists it, and then refused without being
    /// opened blocking: by the extraction's reader and by the decoder predict uses.
    func testAFIFONamedLikeAnImageFailsInsteadOfBlocking() throws {
        let root = path("fifo")
        try images(["c/a.png"], under: root)
        XCTAssertEqual(mkfifo(root + "/c/x.jpg", 0o644), 0)
        var job = ExtractionJob(imagesRoot: root, outputPath: path("fifo.h5"), weights: .random(seed: 0))
        job.layer = ExtractionJob.inputLayer
        job.preprocessing = Preprocessing(resize: 36, crop: 32)
        let summary = try job.run { _ in }
        XCTAssertEqual(summary.found, 2)
        XCTAssertEqual(summary.failed.map(\.path), ["c/x.jpg"])
        XCTAssertTrue(summary.failed[0].reason.contains("not a regular file"), summary.failed[0].reason)
        XCTAssertThrowsError(try ImageDecoder.decode(path: root + "/c/x.jpg")) { error in
            XCTAssertTrue("\(error)".contains("not a regular file"), "\(error)")
        }
    }

    // MARK: pipeline files

    /// 400 bytes whose aliases, used as mapping keys, expand to 2^9-fold nested copies: Yams hung composing it.
    func testYAMLAliasBombIsRefusedBeforeComposing() throws {
        var lines = ["a0: &a0 {x: 1, y: 2}"]
        for level in 1...9 { lines.append("a\(level): &a\(level) {? *a\(level - 1) : 1, ? [*a\(level - 1), *a\(level - 1)] : 2}") }
        lines += ["images: data", "stages:", "  - stage: extract"]
        let started = Date()
        XCTAssertThrowsError(try Pipeline(yaml: lines.joined(separator: "\n"), path: "bomb.yaml")) { error in
            XCTAssertEqual("\(error)", "bomb.yaml:1: YAML anchors and aliases (&name, *name) are not accepted in a pipeline "
                           + "file; write the value out where it is used")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 1)
        XCTAssertThrowsError(try Pipeline(yaml: "images: data\nout: x\nname: *missing\n", path: "p.yaml")) { error in
            XCTAssertTrue("\(error)".hasPrefix("p.yaml:3: YAML anchors and aliases"), "\(error)")
        }
    }

    func testPipelineFilesAreRegularFilesOfAtMostOneMegabyte() throws {
        XCTAssertEqual(mkfifo(path("fifo.yaml"), 0o644), 0)
        XCTAssertThrowsError(try Pipeline(contentsOf: path("fifo.yaml"))) { error in
            XCTAssertTrue("\(error)".contains("fifo.yaml: cannot read the pipeline file: not a regular file"), "\(error)")
        }
        try Data(repeating: UInt8(ascii: "#"), count: 3 << 19).write(to: URL(fileURLWithPath: path("big.yaml")))
        XCTAssertThrowsError(try Pipeline(contentsOf: path("big.yaml"))) { error in
            XCTAssertTrue("\(error)".hasSuffix("big.yaml: cannot read the pipeline file: "
                                               + "it is 1.6 MB, more than the 1.0 MB such a file can be"),
                          "\(error)")
        }
    }

    // MARK: memory

    func testBatchBuffersAreSizedByTheImagesPresent() throws {
        let root = path("two")
        try images(["a/1.png", "b/2.png"], under: root)
        var job = ExtractionJob(imagesRoot: root, outputPath: path("two.h5"), weights: .random(seed: 0))
        job.layer = ExtractionJob.inputLayer
        job.preprocessing = Preprocessing(resize: 36, crop: 32)
        job.batchSize = MemoryEstimate.batchSizes.upperBound
        // One slot of 3×32×32 floats per image present: 65536 slots would need 800 MB and be refused.
        job.memoryLimitBytes = FineTuneNetwork.fixedOverheadBytes + 3 * 2 * 3 * 32 * 32 * 4
        XCTAssertEqual(try job.run { _ in }.extracted, 2)

        job.memoryLimitBytes = FineTuneNetwork.fixedOverheadBytes
        job.overwrite = true
        XCTAssertThrowsError(try job.run { _ in }) { error in
            XCTAssertTrue("\(error)".hasPrefix("a batch of 2 images needs about 314.6 MB, but only 314.6 MB is available"),
                          "\(error)")
        }
        for bad in [0, 65537] {
            job.batchSize = bad
            XCTAssertThrowsError(try job.run { _ in }) { error in
                XCTAssertEqual("\(error)", "--batch-size must be between 1 and 65536 (got \(bad))")
            }
        }
    }

    func testPredictAndEvaluateRefuseBatchesThatDoNotFit() throws {
        var training = HeadTrainingJob(cachePath: SampleCaches.shared.pool5Subset, runDirectory: path("run"))
        training.config = SampleCaches.config
        training.settings.epochs = 1
        _ = try training.run { _ in }
        let model = path("run/model.h5")

        var prediction = PredictionJob(modelPath: model, inputs: [SampleCaches.shared.subsetRoot])
        prediction.batchSize = 4
        prediction.memoryLimitBytes = 1_000_000
        XCTAssertThrowsError(try prediction.run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("a batch of 4 images needs about"), "\(error)")
            XCTAssertTrue("\(error)".contains("but only 1.0 MB is available; use a smaller --batch-size"), "\(error)")
        }
        var evaluation = EvaluationJob(modelPath: model, source: .images(SampleCaches.shared.subsetRoot))
        evaluation.memoryLimitBytes = 1_000_000
        XCTAssertThrowsError(try evaluation.run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("images needs about"), "\(error)")
        }
        evaluation.batchSize = 70000
        XCTAssertThrowsError(try evaluation.run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("--batch-size must be between 1 and 65536 (got 70000)"), "\(error)")
        }
    }
}
