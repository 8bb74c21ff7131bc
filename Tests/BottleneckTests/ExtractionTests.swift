@testable import Bottleneck
import Foundation
import XCTest
import BottleneckKernels

/// `extract` end to end at fixture size: the narrow VGG16, PIL-made images (some broken),
/// Resize 73 / CenterCrop 64, into a real cache, then read back.
final class ExtractionTests: XCTestCase {
    static let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
    static let preprocessing = Preprocessing(resize: 73, crop: 64)
    static let weights = WeightsChoice.file(Fixtures.path("network/narrow_vgg16_legacy.pth"))

    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bottleneck-extract-\(UUID().uuidString)")
        let layout = [
            "train/cats": ["rgb_q90_420_300x200.jpg", "gray_64x64.jpg", "rgba_64x64.png", "cmyk_40x500.jpg"],
            "train/dogs": ["rgb_97x131.png", "p_trns_64x64.png", "rgb16_97x131.png"],
            "val/cats": ["rgb_progressive_131x97.jpg"],
            "val/dogs": ["photo_500x375_q90.jpg", "l_131x97.png"],
        ]
        for (subfolder, files) in layout {
            let target = folder.appendingPathComponent("images/" + subfolder)
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            for file in files {
                try FileManager.default.copyItem(atPath: Fixtures.path("images/" + file), toPath: target.appendingPathComponent(file).path)
            }
        }
        for bad in ["empty.jpg", "truncated.jpg", "text.png", "bad_crc.png", "huge.png"] {
            try FileManager.default.copyItem(atPath: Fixtures.path("images/bad/" + bad),
                                             toPath: folder.appendingPathComponent("images/train/dogs/bad_" + bad).path)
        }
        // A class with an empty folder still gets its index.
        try FileManager.default.createDirectory(at: folder.appendingPathComponent("images/val/zebras"), withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func job(layer: String = "pool5", batchSize: Int = 3, out: String = "cache.h5") -> ExtractionJob {
        var job = ExtractionJob(imagesRoot: folder.appendingPathComponent("images").path,
                                outputPath: folder.appendingPathComponent(out).path, weights: Self.weights)
        job.config = Self.config
        job.preprocessing = Self.preprocessing
        job.layer = layer
        job.batchSize = batchSize
        return job
    }

    func testExtractsEveryReadableImageAndRecordsTheBrokenOnes() throws {
        var messages: [String] = []
        let summary = try job().run { messages.append($0) }
        XCTAssertEqual(summary.found, 15)
        XCTAssertEqual(summary.extracted, 10)
        XCTAssertEqual(summary.failed.count, 5)
        XCTAssertEqual(summary.emptyClassFolders, ["val/zebras"])
        XCTAssertTrue(messages.contains { $0.contains("val/zebras") }, "\(messages)")

        let cache = try FeatureCacheReader(path: folder.appendingPathComponent("cache.h5").path)
        XCTAssertTrue(cache.isComplete)
        XCTAssertEqual(cache.count, 10)
        XCTAssertEqual(cache.classes, ["cats", "dogs", "zebras"])
        XCTAssertEqual(cache.activationShape, [32, 2, 2])
        XCTAssertEqual(cache.paths.first, "train/cats/cmyk_40x500.jpg")
        XCTAssertEqual(cache.paths, cache.paths.sorted { a, b in
            (a.hasPrefix("train") ? 0 : 1, a) < (b.hasPrefix("train") ? 0 : 1, b)
        })
        XCTAssertEqual(cache.labels, [0, 0, 0, 0, 1, 1, 1, 0, 1, 1])
        XCTAssertEqual(cache.splits.map(\.rawValue), Array(repeating: "train", count: 7) + Array(repeating: "val", count: 3))
        XCTAssertEqual(Set(cache.failed.map(\.path)), Set(["empty.jpg", "truncated.jpg", "text.png", "bad_crc.png", "huge.png"]
            .map { "train/dogs/bad_" + $0 }))
        for failure in cache.failed { XCTAssertFalse(failure.reason.isEmpty, failure.path) }
        XCTAssertEqual(cache.fingerprint.layer, "pool5")
        XCTAssertEqual(cache.fingerprint.layerPath, "features.30")
    }

    /// The stored features are the network applied to torchvision's own preprocessed tensor.
    func testFeaturesEqualTheNetworkOnTorchvisionsTensor() throws {
        _ = try job(layer: "fc7").run { _ in }
        let cache = try FeatureCacheReader(path: folder.appendingPathComponent("cache.h5").path)
        let row = try XCTUnwrap(cache.paths.firstIndex(of: "train/cats/rgb_q90_420_300x200.jpg"))
        let reference = try Fixtures.float32("images/reference/rgb_q90_420_300x200.r73c64.f32", shape: [1, 3, 64, 64])
        let network = try NetworkLoader.load(config: Self.config, weights: Self.weights).network
        let expected = try network.forward(reference, through: try CutPoint("fc7", in: Self.config))
        assertClose(try cache.readRows(row..<(row + 1)), expected, tolerance: 1e-5, "fc7 row of the cache")
    }

    func testBatchSizeDoesNotChangeTheBytes() throws {
        try skipUnlessFeaturesAreBatchInvariant()
        _ = try job(batchSize: 1, out: "one.h5").run { _ in }
        _ = try job(batchSize: 4, out: "four.h5").run { _ in }
        let one = try FeatureCacheReader(path: folder.appendingPathComponent("one.h5").path)
        let four = try FeatureCacheReader(path: folder.appendingPathComponent("four.h5").path)
        XCTAssertEqual(try one.readRows(0..<one.count).data, try four.readRows(0..<four.count).data)
    }

    func testRerunExtractsOnlyNewImagesAndRefusesOtherSettings() throws {
        _ = try job().run { _ in }
        try FileManager.default.copyItem(atPath: Fixtures.path("images/rgb_q75_420_101x67.jpg"),
                                         toPath: folder.appendingPathComponent("images/val/zebras/z.jpg").path)
        let second = try job().run { _ in }
        XCTAssertEqual(second.reused, 10)
        XCTAssertEqual(second.extracted, 1)
        let cache = try FeatureCacheReader(path: folder.appendingPathComponent("cache.h5").path)
        XCTAssertEqual(cache.count, 11)
        XCTAssertEqual(cache.paths.last, "val/zebras/z.jpg")
        XCTAssertEqual(cache.labels.last, 2)

        XCTAssertThrowsError(try job(layer: "fc7").run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("cache.h5") && "\(error)".contains("pool5"), "\(error)")
        }
        var overwrite = job(layer: "fc7")
        overwrite.overwrite = true
        XCTAssertEqual(try overwrite.run { _ in }.extracted, 11)
    }

    /// A rerun that finds nothing new must not copy the cache onto itself (minutes for a large pool5
    /// cache); a change of what the file would hold (here compression) must still rewrite it.
    func testRerunWithNothingNewLeavesTheCacheUntouched() throws {
        let path = folder.appendingPathComponent("cache.h5").path
        _ = try job().run { _ in }
        let before = try FileManager.default.attributesOfItem(atPath: path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let rerun = try job().run { _ in }
        XCTAssertEqual(rerun.reused, 10)
        XCTAssertEqual(rerun.extracted, 0)
        XCTAssertEqual(rerun.fileBytes, bytes.count)
        let after = try FileManager.default.attributesOfItem(atPath: path)
        XCTAssertEqual(after[.systemFileNumber] as? Int, before[.systemFileNumber] as? Int, "the same file, not a replacement")
        XCTAssertEqual(after[.modificationDate] as? Date, before[.modificationDate] as? Date)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), bytes)
        XCTAssertFalse(FileManager.default.fileExists(atPath: FeatureCacheBuilder.journalPath(for: path)), "journal removed")

        var compressed = job()
        compressed.compress = true
        _ = try compressed.run { _ in }
        let cache = try FeatureCacheReader(path: path)
        XCTAssertTrue(cache.storage.filters.contains { $0.name == "deflate" }, "asked for compression: rewritten")
        XCTAssertEqual(cache.count, 10)
    }

    /// The folder changes between runs — an image deleted, one replaced by other bytes of the same size with
    /// its modification time set back (`touch -d`), one renamed, one added — and the rerun's cache equals a
    /// fresh extraction of the folder as it is now, byte for byte. At the input layer, so that the bytes are
    /// exact whatever the BLAS kernel (BatchInvarianceTests checks the network's part).
    func testRerunAfterTheFolderChangedEqualsAFreshExtraction() throws {
        let images = folder.appendingPathComponent("images")
        _ = try job(layer: "input", batchSize: 4).run { _ in }

        try FileManager.default.removeItem(at: images.appendingPathComponent("train/dogs/rgb_97x131.png"))
        try FileManager.default.moveItem(at: images.appendingPathComponent("train/cats/gray_64x64.jpg"),
                                         to: images.appendingPathComponent("val/cats/gray_renamed.jpg"))
        try FileManager.default.copyItem(atPath: Fixtures.path("images/rgb_q75_420_101x67.jpg"),
                                         toPath: images.appendingPathComponent("train/cats/added.jpg").path)
        // Other pixels, same size and mtime: the DC step of the first quantisation table moves by one.
        let replaced = images.appendingPathComponent("val/dogs/photo_500x375_q90.jpg").path
        var status = stat()
        XCTAssertEqual(stat(replaced, &status), 0)
        var jpeg = try Data(contentsOf: URL(fileURLWithPath: replaced))
        let table = try XCTUnwrap(jpeg.range(of: Data([0xFF, 0xDB]))).lowerBound
        jpeg[table + 5] += 1
        try jpeg.write(to: URL(fileURLWithPath: replaced))
        var times = [status.st_atim, status.st_mtim]
        XCTAssertEqual(utimensat(AT_FDCWD, replaced, &times, 0), 0)
        var after = stat()
        XCTAssertEqual(stat(replaced, &after), 0)
        XCTAssertEqual([after.st_size, after.st_mtim.tv_sec, after.st_mtim.tv_nsec],
                       [status.st_size, status.st_mtim.tv_sec, status.st_mtim.tv_nsec])

        let rerun = try job(layer: "input", batchSize: 3).run { _ in }
        XCTAssertEqual(rerun.found, 15)
        XCTAssertEqual([rerun.extracted, rerun.reused, rerun.changed, rerun.removed, rerun.failed.count], [2, 7, 1, 2, 5], rerun.counts)
        XCTAssertEqual(rerun.counts, "15 images (2 extracted, 7 reused, 1 changed, 2 removed, 5 failed)")

        _ = try job(layer: "input", batchSize: 5, out: "fresh.h5").run { _ in }
        let updated = try FeatureCacheReader(path: folder.appendingPathComponent("cache.h5").path)
        let fresh = try FeatureCacheReader(path: folder.appendingPathComponent("fresh.h5").path)
        XCTAssertEqual(updated.paths, fresh.paths)
        XCTAssertEqual(updated.labels, fresh.labels)
        XCTAssertEqual(updated.splits, fresh.splits)
        XCTAssertEqual(updated.failed, fresh.failed)
        XCTAssertEqual(updated.identities.map(\.sha256), fresh.identities.map(\.sha256))
        let (updatedBits, freshBits) = (try updated.readRows(0..<updated.count).data.map(\.bitPattern),
                                        try fresh.readRows(0..<fresh.count).data.map(\.bitPattern))
        XCTAssertEqual(updatedBits.count, freshBits.count)
        XCTAssertEqual(zip(updatedBits, freshBits).count { $0 != $1 }, 0, "values whose bits differ from a fresh extraction")
    }

    /// A FIFO named like an image would block a plain open() forever: it is recorded as failed instead.
    func testFIFOInTheFolderIsRecordedNotWaitedFor() throws {
        let fifo = folder.appendingPathComponent("images/train/cats/pipe.jpg").path
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        let summary = try job().run { _ in }
        XCTAssertEqual(summary.rows, 10)
        let failure = try XCTUnwrap(summary.failed.first { $0.path == "train/cats/pipe.jpg" })
        XCTAssertTrue(failure.reason.contains("not a regular file"), failure.reason)
    }

    /// Damaged weights stop the job before anything is extracted, and leave no journal behind.
    func testNonFiniteWeightsStopTheJobAndLeaveNoJournal() throws {
        var damaged = job()
        damaged.weights = .file(try Fixtures.damagedWeights("narrow_vgg16_legacy.pth", key: "features.0.weight", index: 5,
                                                             value: .nan, at: folder.appendingPathComponent("nan.pth").path))
        XCTAssertThrowsError(try damaged.run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("tensor features.0.weight holds NaN at index 5"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: FeatureCacheBuilder.journalPath(for: damaged.outputPath)))
        XCTAssertFalse(FileManager.default.fileExists(atPath: damaged.outputPath))
    }

    func testInputLayerStoresThePreprocessedTensor() throws {
        _ = try job(layer: "input").run { _ in }
        let cache = try FeatureCacheReader(path: folder.appendingPathComponent("cache.h5").path)
        XCTAssertEqual(cache.activationShape, [3, 64, 64])
        let row = try XCTUnwrap(cache.paths.firstIndex(of: "train/cats/rgb_q90_420_300x200.jpg"))
        let reference = try Fixtures.float32("images/reference/rgb_q90_420_300x200.r73c64.f32", shape: [1, 3, 64, 64])
        assertClose(try cache.readRows(row..<(row + 1)), reference, tolerance: 1e-6, "input row")
    }

    func testFoldersWithoutImagesAreClearErrors() throws {
        let empty = folder.appendingPathComponent("nothing")
        try FileManager.default.createDirectory(at: empty.appendingPathComponent("class"), withIntermediateDirectories: true)
        var noImages = job()
        noImages.imagesRoot = empty.path
        XCTAssertThrowsError(try noImages.run { _ in }) { XCTAssertTrue("\($0)".contains("no images found"), "\($0)") }
        var missing = job()
        missing.imagesRoot = folder.appendingPathComponent("missing").path
        XCTAssertThrowsError(try missing.run { _ in }) { XCTAssertTrue("\($0)".contains("no such folder"), "\($0)") }
        // A missing output folder is made, as train-head makes its run folder; a file in its place is refused.
        var newFolders = job()
        newFolders.outputPath = folder.appendingPathComponent("no/such/dir/cache.h5").path
        XCTAssertNoThrow(try newFolders.run { _ in })
        XCTAssertTrue(FileManager.default.fileExists(atPath: newFolders.outputPath))
        var badOutput = job()
        badOutput.outputPath = newFolders.outputPath + "/cache.h5"
        XCTAssertThrowsError(try badOutput.run { _ in }) { XCTAssertTrue("\($0)".contains("is not a folder"), "\($0)") }
    }

    /// Shards cut at whole batches and merged give the bytes of one process (the scale-out check).
    func testShardsMergeIntoTheSingleProcessCache() throws {
        for bad in try FileManager.default.contentsOfDirectory(atPath: folder.appendingPathComponent("images/train/dogs").path)
            where bad.hasPrefix("bad_") {
            try FileManager.default.removeItem(at: folder.appendingPathComponent("images/train/dogs/" + bad))
        }
        _ = try job(batchSize: 2, out: "single.h5").run { _ in }
        var shardPaths: [String] = []
        for index in [2, 1, 3] {
            var shardJob = job(batchSize: 2, out: "shard\(index).h5")
            shardJob.shard = try Shard("\(index)/3")
            _ = try shardJob.run { _ in }
            shardPaths.append(shardJob.outputPath)
        }
        let merged = folder.appendingPathComponent("merged.h5").path
        XCTAssertEqual(try CacheMerge.merge(shards: shardPaths, into: merged).rows, 10)
        let single = try FeatureCacheReader(path: folder.appendingPathComponent("single.h5").path)
        let joined = try FeatureCacheReader(path: merged)
        XCTAssertEqual(joined.paths, single.paths)
        XCTAssertEqual(joined.labels, single.labels)
        XCTAssertEqual(joined.splits, single.splits)
        XCTAssertNil(joined.fingerprint.shard)
        XCTAssertEqual(try joined.readRows(0..<joined.count).data, try single.readRows(0..<single.count).data)

        XCTAssertThrowsError(try CacheMerge.merge(shards: Array(shardPaths.prefix(2)), into: merged + ".2")) { error in
            XCTAssertTrue("\(error)".contains("missing 3/3"), "\(error)")
        }
        XCTAssertThrowsError(try Shard("4/3"))
        XCTAssertEqual(try Shard("2/3").range(of: 10, alignedTo: 2), 2..<6)
    }
}
