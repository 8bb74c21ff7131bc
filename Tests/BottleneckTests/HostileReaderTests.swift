import Foundation
import XCTest
@testable import Bottleneck
@testable import BottleneckKernels

/// Damaged and hostile files (Tests/Fixtures/hostile, made by make_hostile_fixtures.py): each once crashed,
/// hung or was silently accepted, and must now be one line naming the file and what is wrong.
final class HostileReaderTests: XCTestCase {
    private var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    private func fixture(_ name: String) -> String { Fixtures.path("hostile/\(name)") }

    /// `body` throws an error whose one-line message names `name` and contains each of `phrases`.
    private func assertRefused(_ name: String, mentioning phrases: [String], file: StaticString = #filePath, line: UInt = #line,
                               _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), name, file: file, line: line) { error in
            let message = "\(error)"
            XCTAssertFalse(message.contains("\n"), "one line: \(message)", file: file, line: line)
            for phrase in [name] + phrases {
                XCTAssertTrue(message.contains(phrase), "'\(phrase)' in: \(message)", file: file, line: line)
            }
        }
    }

    // MARK: - HDF5 weights

    func testLinkCyclesInWeightsAreRefused() {
        for name in ["loop_weights.h5", "soft_loop_weights.h5"] {
            assertRefused(name, mentioning: ["weights file", "cycle"]) { _ = try StateDictFile.open(path: fixture(name)) }
            assertRefused(name, mentioning: ["cycle"]) { _ = try WeightsInspection(path: fixture(name)) }
        }
    }

    /// Found by Fuzz/ (fuzz-weights): damage on which libhdf5 1.10.8 spins forever opening a dataset. The
    /// structure-reading child is killed after `structureProbeSeconds` and the file is an error naming it.
    func testDamageThatLibhdf5LoopsOnIsAnErrorAfterTheProbeTime() {
        let saved = HDF5File.structureProbeSeconds
        defer { HDF5File.structureProbeSeconds = saved }
        HDF5File.structureProbeSeconds = 1
        assertRefused("libhdf5_spins_forever.h5", mentioning: ["weights file", "still reading it after 1 s"]) {
            _ = try StateDictFile.open(path: fixture("libhdf5_spins_forever.h5"))
        }
    }

    /// Found by Fuzz/ (fuzz-cache): a chunk record of /source/inode claiming 0xFFFFFFFF bytes in a 30 kB cache,
    /// which libhdf5 allocated before finding the damage.
    func testAChunkClaimingMoreThanTheFileIsRefusedBeforeReading() {
        let path = fixture("cache_chunk_size_4GB.h5")
        assertRefused("cache_chunk_size_4GB.h5:/source/inode", mentioning: ["4294967295 bytes", "more than the whole file"]) {
            _ = try HDF5File(path: path, mode: .readOnly).openGroup("source").openDataset("inode").read(as: Int64.self)
        }
        XCTAssertThrowsError(try FeatureCacheReader(path: path))
    }

    /// Found by Fuzz/: damage that crashes libhdf5 1.10.8 itself, by a read from address 0 (in H5Gget_info's count
    /// of a damaged symbol-table B-tree, or in H5Literate on a damaged local heap) or by a 2.9 GB malloc of a
    /// heap size read from the file. The structure is read in a child process first, which pays for the crash;
    /// the file is an error naming it.
    func testDamageThatCrashesLibhdf5ItselfIsAnError() {
        for name in ["damaged_group_btree.h5", "libhdf5_crash_local_heap.h5", "libhdf5_huge_malloc_local_heap.h5"] {
            assertRefused(name, mentioning: ["weights file", "read the structure"]) { _ = try StateDictFile.open(path: fixture(name)) }
            assertRefused(name, mentioning: ["read the structure"]) { _ = try TrainedModel(contentsOf: fixture(name)) }
        }
        assertRefused("libhdf5_crash_local_heap.h5", mentioning: ["libhdf5 crashed reading it"]) {
            _ = try HDF5File(path: fixture("libhdf5_crash_local_heap.h5"), mode: .readOnly)
        }
    }

    func testDeeplyNestedGroupsAreRefused() {
        assertRefused("deep_weights.h5", mentioning: ["nested more than \(HDF5WeightsFormat.maximumGroupDepth)"]) {
            _ = try StateDictFile.open(path: fixture("deep_weights.h5"))
        }
    }

    /// Values from another file would let the weights change under an unchanged sha256.
    func testValuesOutsideTheFileAreRefused() {
        for (name, phrase) in [("external_link_weights.h5", "external link"), ("external_storage_weights.h5", "external files"),
                               ("virtual_weights.h5", "virtual dataset")] {
            assertRefused(name, mentioning: ["features.1.bias", phrase]) { _ = try StateDictFile.open(path: fixture(name)) }
        }
    }

    // MARK: - safetensors

    func testSafetensorsWhoseTensorsOverlapOrLeaveGapsAreRefused() {
        assertRefused("overlapping.safetensors", mentioning: ["features.1.bias", "overlap"]) {
            _ = try StateDictFile.open(path: fixture("overlapping.safetensors"))
        }
        assertRefused("gap.safetensors", mentioning: ["features.1.bias", "belong to no tensor"]) {
            _ = try StateDictFile.open(path: fixture("gap.safetensors"))
        }
    }

    // MARK: - model.h5

    func testTheUnchangedModelLoads() throws {
        let model = try TrainedModel(contentsOf: fixture("model_ok.h5"))
        XCTAssertEqual(model.classes, ["cat", "dog"])
        XCTAssertEqual(try model.head().classCount, 2)
    }

    func testModelAttributesOutOfRangeAreRefused() {
        for (name, phrases) in [("model_dropout_2.h5", ["'dropout'", "2.0"]), ("model_dropout_nan.h5", ["'dropout'", "nan"]),
                                ("model_hidden_negative.h5", ["'config'", "hidden is -1"]),
                                ("model_conv_negative.h5", ["'config'", "-4 channels"]),
                                ("model_conv_huge.h5", ["'config'", "\(1 << 40) channels"]),
                                ("model_pooled_huge.h5", ["'config'", "pooledSize is 100000"]),
                                ("model_duplicate_classes.h5", ["'classes'", "cat twice"]),
                                ("model_crop_huge.h5", ["'preprocess'", "between 1 and 8192"])] {
            assertRefused(name, mentioning: phrases) { _ = try TrainedModel(contentsOf: fixture(name)) }
        }
    }

    func testModelDatasetsMustFitTheConfiguration() {
        assertRefused("model_wrong_shape.h5", mentioning: ["classifier.6.weight", "[2, 5]", "[2, 4]"]) {
            _ = try TrainedModel(contentsOf: fixture("model_wrong_shape.h5"))
        }
        assertRefused("model_extra_key.h5", mentioning: ["features.9.bias", "no place"]) {
            _ = try TrainedModel(contentsOf: fixture("model_extra_key.h5"))
        }
        assertRefused("model_loop.h5", mentioning: ["model file", "cycle"]) { _ = try TrainedModel(contentsOf: fixture("model_loop.h5")) }
    }

    func testAFailedModelWriteNamesTheModelFile() throws {
        let model = try TrainedModel(contentsOf: fixture("model_ok.h5"))
        let target = folder.appendingPathComponent("missing-folder/model.h5").path
        assertRefused("missing-folder/model.h5", mentioning: ["model file"]) { try model.save(to: target) }
    }

    // MARK: - Fine-tune checkpoints

    func testCheckpointsWhoseEpochsDisagreeOrWhoseOptimizerStateDoesNotFitAreRefused() throws {
        let path = folder.appendingPathComponent("checkpoint.h5").path
        let parameters = [(key: "classifier.6.weight", tensor: Tensor(zeros: [2, 3])),
                          (key: "classifier.6.bias", tensor: Tensor(zeros: [2]))]
        func checkpoint(epochs: Int, best: Int, optimizer: [String: Tensor]) -> FineTuneCheckpoint {
            let record = EpochRecord(epoch: 1, trainLoss: 1, trainAccuracy: 0.5, validationLoss: 1, validationAccuracy: 0.5,
                                     learningRate: 0.01, seconds: 1, trainSeconds: 1)
            return FineTuneCheckpoint(epochsDone: epochs, settingsJSON: "{}", history: [record], bestEpoch: best,
                                      stateDict: parameters, optimizerState: optimizer)
        }
        try checkpoint(epochs: 3, best: 5, optimizer: [:]).save(to: path)
        assertRefused("checkpoint.h5", mentioning: ["'epochs_done' 3", "disagree"]) { _ = try FineTuneCheckpoint(contentsOf: path) }

        for (key, values, phrase) in [("1000000000000.step", [Float(1)], "names no parameter"), ("0.step", [.nan], "whole step count"),
                                      ("0.exp_avg", [1, 2], "2 values for classifier.6.weight's 6")] {
            try checkpoint(epochs: 1, best: 1, optimizer: [key: Tensor(shape: [values.count], data: values)]).save(to: path)
            let loaded = try FineTuneCheckpoint(contentsOf: path)
            assertRefused("checkpoint.h5", mentioning: [key, phrase]) { try loaded.checkOptimizerState(against: parameters, path: path) }
        }
    }

    // MARK: - Caches

    private func cacheFingerprint(shard: String?) -> CacheFingerprint {
        var fingerprint = CacheFingerprint(backbone: "vgg16", layer: "fc7", layerPath: "classifier.4", activationShape: [2],
                                           weightsSHA256: String(repeating: "ab", count: 32), weightsSource: "/weights/vgg16.pth",
                                           preprocess: Preprocessing.imageNet.jsonDescription, imageRoot: "/data")
        fingerprint.shard = shard
        return fingerprint
    }

    /// An empty finished cache whose `shard` attribute is `shard`.
    private func shardCache(_ shard: String) throws -> String {
        let path = folder.appendingPathComponent("shard.h5").path
        _ = try FeatureCacheBuilder.open(path: path, fingerprint: cacheFingerprint(shard: shard), classes: ["cat"], manifest: [],
                                         overwrite: true) { _, _ in nil }.finish(compress: false)
        return path
    }

    func testShardAttributesOutOfRangeAreRefusedByMerge() throws {
        for shard in ["1/9223372036854775807", "1/300000000", "0/0"] {
            let path = try shardCache(shard)
            assertRefused("shard.h5", mentioning: ["'shard'", shard]) {
                _ = try CacheMerge.merge(shards: [path], into: folder.appendingPathComponent("merged.h5").path)
            }
        }
        XCTAssertThrowsError(try Shard("1/\(Shard.maximumCount + 1)"))
        XCTAssertEqual(try Shard("\(Shard.maximumCount)/\(Shard.maximumCount)").index, Shard.maximumCount)
    }

    func testCacheActivationShapeOutOfRangeIsRefused() throws {
        let path = try shardCache("1/1")
        for shape: [Int64] in [[1 << 40, 1 << 40], [0], [-2, 3], []] {
            try HDF5File(path: path, mode: .readWrite).setAttribute("activation_shape", values: shape)
            assertRefused("shard.h5", mentioning: ["'activation_shape'"]) { _ = try FeatureCacheReader(path: path) }
        }
    }

    /// The header's JSON length (bytes 12..<16) claiming 4 GB of a small file is refused before it is allocated.
    func testAJournalHeaderLongerThanItsFileIsRefused() throws {
        let path = folder.appendingPathComponent("journal.h5").path
        let item = ImageFolder.Item(path: "cat/a.jpg", label: 0, split: .train)
        _ = try FeatureCacheBuilder.open(path: path, fingerprint: cacheFingerprint(shard: nil), classes: ["cat"], manifest: [item],
                                         overwrite: true) { _, _ in nil }
        let journal = FeatureCacheBuilder.journalPath(for: path)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: journal))
        try handle.seek(toOffset: 12)
        try handle.write(contentsOf: [0xff, 0xff, 0xff, 0xff])
        try handle.close()
        assertRefused("journal.h5.partial", mentioning: ["not a bottleneck journal"]) { _ = try CacheJournal.read(path: journal) }
    }

    /// A chunked dataset never written takes no room in the file, whatever rows it claims.
    func testDatasetsClaimingMoreThanMemoryAreRefusedBeforeAllocating() throws {
        let path = folder.appendingPathComponent("sparse.h5").path
        try {
            let file = try HDF5File(path: path, mode: .createNew)
            try file.createDataset("labels", of: Int32.self, shape: [0], layout: .extendibleRows(chunkRows: 1024)).setRowCount(1 << 50)
        }()
        XCTAssertLessThan(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? .max, 1 << 20)
        assertRefused("sparse.h5:/labels", mentioning: ["more than half this machine's memory"]) {
            _ = try HDF5File(path: path, mode: .readOnly).openDataset("labels").read(as: Int32.self)
        }
    }

    /// Tensors each small enough to load that together are not: refused before the first is read, as models and
    /// checkpoints (which load every tensor) check.
    func testTensorsTogetherLargerThanMemoryAreRefused() throws {
        let path = folder.appendingPathComponent("many-sparse.h5").path
        let perTensor = 1 << 30
        let count = MemoryEstimate.fileReadLimitBytes / MemoryLayout<Float>.size / perTensor + 1
        try {
            let file = try HDF5File(path: path, mode: .createNew)
            for index in 0..<count {
                try file.createDataset("features.\(index).weight", of: Float.self, shape: [0], layout: .extendibleRows(chunkRows: 1 << 16))
                    .setRowCount(perTensor)
            }
        }()
        let weights = try StateDictFile.open(path: path)
        assertRefused("many-sparse.h5", mentioning: ["more than half this machine's memory"]) { try weights.checkFitsInMemory() }
        XCTAssertNoThrow(try StateDictFile.open(path: Fixtures.path("network/narrow_vgg16_legacy.pth")).checkFitsInMemory())
    }

    /// Damage HDF5 cannot get past is called that, not a damaged weights file (inspect reads a non-cache as weights).
    func testATruncatedCacheIsADamagedHDF5FileNotWeights() throws {
        let path = try shardCache("1/1")
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
        try FileHandle(forWritingTo: URL(fileURLWithPath: path)).truncate(atOffset: UInt64(size / 2))
        assertRefused("shard.h5", mentioning: ["damaged HDF5 file"]) { _ = try CacheInspection(path: path) }
        let (status, output) = try runTool(["inspect", path])
        XCTAssertEqual(status, 1, output)
        XCTAssertTrue(output.contains("damaged HDF5 file") && !output.contains("weights file"), output)
    }

    // MARK: - The command line

    /// The tool as a child process: its exit status and everything it wrote.
    private func runTool(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let products = Bundle.allBundles.first { $0.bundlePath.hasSuffix(".xctest") }?.bundleURL.deletingLastPathComponent()
            ?? Bundle.main.bundleURL
        let executable = products.appendingPathComponent("bottleneck")
        guard FileManager.default.isExecutableFile(atPath: executable.path) else {
            throw XCTSkip("no bottleneck executable at \(executable.path): swift build first")
        }
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    func testTheToolRefusesHostileFilesWithOneLine() throws {
        for arguments in [["inspect", fixture("loop_weights.h5")],
                          ["predict", "--model", fixture("model_conv_huge.h5"), Fixtures.path("images/rgb_17x23.jpg")],
                          ["evaluate", "--model", fixture("model_duplicate_classes.h5"), "--images", folder.path]] {
            let (status, output) = try runTool(arguments)
            XCTAssertEqual(status, 1, "\(arguments): \(output)")
            let lines = output.split(whereSeparator: \.isNewline)
            XCTAssertEqual(lines.count, 1, "\(arguments): \(output)")
            XCTAssertTrue(output.contains((arguments.first { $0.hasSuffix(".h5") } ?? "").split(separator: "/").last ?? ""), output)
        }
    }
}
