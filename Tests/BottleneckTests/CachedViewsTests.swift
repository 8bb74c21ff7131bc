@testable import Bottleneck
import Foundation
import XCTest
import BottleneckKernels

/// `extract --views K`: each training-side image's K augmented views, the network on the crops that
/// (path, view) draws, stored beside an unchanged `/features`; reused by reruns and merges, and part of the fingerprint.
final class CachedViewsTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bottleneck-views-\(UUID().uuidString)")
        let layout = [
            "train/cats": ["rgb_q90_420_300x200.jpg", "gray_64x64.jpg"],
            "train/dogs": ["rgb_97x131.png"],
            "val/dogs": ["l_131x97.png"],
        ]
        for (subfolder, files) in layout {
            let target = folder.appendingPathComponent("images/" + subfolder)
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            for file in files {
                try FileManager.default.copyItem(atPath: Fixtures.path("images/" + file), toPath: target.appendingPathComponent(file).path)
            }
        }
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    private func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// Batch 1: every forward pass holds one image, as the reference's, so the bytes are comparable.
    private func job(views: Int, out: String = "cache.h5", batchSize: Int = 1) -> ExtractionJob {
        var job = ExtractionJob(imagesRoot: path("images"), outputPath: path(out), weights: ExtractionTests.weights)
        job.config = ExtractionTests.config
        job.preprocessing = ExtractionTests.preprocessing
        job.layer = "fc7"
        job.batchSize = batchSize
        job.views = views
        return job
    }

    private func views(of cache: FeatureCacheReader, row: Int) throws -> [Float] {
        var values = [Float](repeating: 0, count: cache.fingerprint.views * cache.rowSize)
        try values.withUnsafeMutableBufferPointer { try cache.readViews(ofRow: row, into: $0) }
        return values
    }

    func testViewsAreTheNetworkOnAugmentedCropsOfTrainingImagesAndFeaturesAreUnchanged() throws {
        _ = try job(views: 0, out: "plain.h5").run { _ in }
        let summary = try job(views: 2).run { _ in }
        XCTAssertEqual(summary.extracted, 4)
        let plain = try FeatureCacheReader(path: path("plain.h5"))
        let cache = try FeatureCacheReader(path: path("cache.h5"))
        XCTAssertEqual(cache.fingerprint.schema, "bottleneck-cache/3")
        XCTAssertEqual(cache.fingerprint.views, 2)
        XCTAssertEqual(plain.fingerprint.views, 0)
        XCTAssertEqual(cache.paths, plain.paths)
        XCTAssertEqual(try cache.readRows(0..<cache.count).data, try plain.readRows(0..<plain.count).data, "/features as without views")
        XCTAssertEqual(cache.viewBlockOfRow, [0, 1, 2, -1], "\(cache.paths): train rows have views, the val row none")
        XCTAssertEqual(plain.viewBlockOfRow, [-1, -1, -1, -1])

        // What h5py sees: /views/features [3, 2, 64] and /views/rows [0, 1, 2]; no /views group without views.
        let file = try HDF5File(path: path("cache.h5"), mode: .readOnly)
        let group = try file.openGroup("views")
        XCTAssertEqual(try group.openDataset("features").shape(), [3, 2, 64])
        XCTAssertEqual(try group.openDataset("rows").read(as: Int64.self), [0, 1, 2])
        XCTAssertFalse(try HDF5File(path: path("plain.h5"), mode: .readOnly).contains("views"))

        let network = try NetworkLoader.load(config: ExtractionTests.config, weights: ExtractionTests.weights).network
        let cut = try CutPoint("fc7", in: ExtractionTests.config)
        let augmentation = Augmentation(matching: ExtractionTests.preprocessing)
        for row in 0..<3 {
            let image = try ImageDecoder.decode(path: path("images/" + cache.paths[row]))
            var expected: [Float] = []
            for view in 1...2 {
                var generator = TrainingRandomness.cachedViewGenerator(path: cache.paths[row], view: view)
                let crop = Tensor(shape: [1] + ExtractionTests.preprocessing.outputShape) {
                    augmentation.write(image, generator: &generator, into: $0)
                }
                expected += try network.forward(crop, through: cut).data
            }
            XCTAssertEqual(try views(of: cache, row: row), expected, cache.paths[row])
        }
        XCTAssertNotEqual(try views(of: cache, row: 0).prefix(64), try cache.readRows(0..<1).data[...], "a view is not the eval crop")
    }

    func testRerunsReuseViewsLikeAFreshExtractionAndOtherKIsRefused() throws {
        _ = try job(views: 2).run { _ in }
        try FileManager.default.copyItem(atPath: Fixtures.path("images/rgba_64x64.png"), toPath: path("images/train/cats/new.png"))
        let rerun = try job(views: 2).run { _ in }
        XCTAssertEqual(rerun.reused, 4)
        XCTAssertEqual(rerun.extracted, 1)
        _ = try job(views: 2, out: "fresh.h5").run { _ in }
        let cache = try FeatureCacheReader(path: path("cache.h5"))
        let fresh = try FeatureCacheReader(path: path("fresh.h5"))
        XCTAssertEqual(cache.paths, fresh.paths)
        XCTAssertEqual(cache.viewBlockOfRow, fresh.viewBlockOfRow)
        XCTAssertEqual(try cache.readRows(0..<cache.count).data, try fresh.readRows(0..<fresh.count).data)
        for row in 0..<cache.count where cache.viewBlockOfRow[row] >= 0 {
            XCTAssertEqual(try views(of: cache, row: row), try views(of: fresh, row: row), cache.paths[row])
        }

        XCTAssertThrowsError(try job(views: 3).run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("views 2 per training image, not 3"), "\(error)")
        }
        XCTAssertThrowsError(try job(views: -1).run { _ in }) { error in
            XCTAssertEqual("\(error)", "--views must be between 0 and 1000, not -1")
        }
        var overwrite = job(views: 3)
        overwrite.overwrite = true
        XCTAssertEqual(try overwrite.run { _ in }.extracted, 5)
        XCTAssertEqual(try FeatureCacheReader(path: path("cache.h5")).fingerprint.views, 3)
    }

    /// The journal keeps each row's views: a run killed after a batch is continued with them; a batch whose rows
    /// lack their views is refused.
    func testAnInterruptedRunKeepsItsViews() throws {
        var fingerprint = CacheFingerprint(config: SampleCaches.config, cut: try CutPoint("fc7", in: SampleCaches.config),
                                           weights: .random(seed: 0), preprocessing: SampleCaches.preprocessing, imageRoot: folder.path)
        fingerprint.views = 2
        let train = ImageFolder.Item(path: "train/cats/a.jpg", label: 0, split: .train)
        let validation = ImageFolder.Item(path: "val/cats/b.jpg", label: 0, split: .val)
        let identity = FileIdentity(size: 1, mtimeNanoseconds: 0, ctimeNanoseconds: 0, inode: 0, sha256: Array(repeating: 7, count: 32))
        func open() throws -> FeatureCacheBuilder {
            try FeatureCacheBuilder.open(path: path("cache.h5"), fingerprint: fingerprint, classes: ["cats"], manifest: [train, validation],
                                         overwrite: false) { _, recorded in recorded }
        }
        let trainValues = (0..<(3 * 64)).map { Float($0) }
        do {
            let builder = try open()
            XCTAssertThrowsError(try Array(trainValues.prefix(64)).withUnsafeBufferPointer {
                try builder.append(features: $0, rows: [(train, identity)], failed: [])
            }) { error in XCTAssertTrue("\(error)".contains("64 feature values for 1 rows with 2 augmented views"), "\(error)") }
            try trainValues.withUnsafeBufferPointer { _ = try builder.append(features: $0, rows: [(train, identity)], failed: []) }
        }
        let resumed = try open()
        XCTAssertEqual(resumed.recoveredRowCount, 1)
        XCTAssertEqual(resumed.pending, [validation])
        try [Float](repeating: -1, count: 64).withUnsafeBufferPointer {
            _ = try resumed.append(features: $0, rows: [(validation, identity)], failed: [])
        }
        _ = try resumed.finish(compress: true)
        let cache = try FeatureCacheReader(path: path("cache.h5"))
        XCTAssertEqual(cache.viewBlockOfRow, [0, -1])
        XCTAssertEqual(try cache.readRows(0..<2).data, Array(trainValues.prefix(64)) + [Float](repeating: -1, count: 64))
        XCTAssertEqual(try views(of: cache, row: 0), Array(trainValues.dropFirst(64)))
    }

    func testShardsWithViewsMergeIntoTheSingleProcessCache() throws {
        _ = try job(views: 2, out: "single.h5", batchSize: 3).run { _ in }
        let shards = try [1, 2].map { index in
            var shard = job(views: 2, out: "shard\(index).h5", batchSize: 3)
            shard.shard = try Shard("\(index)/2")
            return try shard.run { _ in }.path
        }
        _ = try CacheMerge.merge(shards: shards, into: path("merged.h5"))
        let single = try FeatureCacheReader(path: path("single.h5"))
        let merged = try FeatureCacheReader(path: path("merged.h5"))
        XCTAssertEqual(merged.viewBlockOfRow, single.viewBlockOfRow)
        XCTAssertEqual(try merged.readRows(0..<merged.count).data, try single.readRows(0..<single.count).data)
        for row in 0..<3 { XCTAssertEqual(try views(of: merged, row: row), try views(of: single, row: row)) }
    }
}
