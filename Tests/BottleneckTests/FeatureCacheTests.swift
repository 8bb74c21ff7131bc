import Foundation
import XCTest
@testable import Bottleneck
@testable import BottleneckKernels

/// The HDF5 feature cache: round trip, crash recovery from every torn journal, refusals,
/// incremental runs, failures, compression, readability by other tools.
final class FeatureCacheTests: XCTestCase {
    private static let activationShape = [2, 3]
    private static let rowSize = 6

    private var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("feature-cache-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    // MARK: - Synthetic runs

    private func fingerprint(layer: String = "fc7", layerPath: String = "classifier.4",
                             weights: String = String(repeating: "ab", count: 32)) -> CacheFingerprint {
        CacheFingerprint(backbone: "vgg16", layer: layer, layerPath: layerPath, activationShape: Self.activationShape,
                         weightsSHA256: weights, weightsSource: "/weights/vgg16.pth",
                         preprocess: Preprocessing.imageNet.jsonDescription, imageRoot: "/data/pets")
    }

    /// Image `index` of a synthetic folder: class `index % classes.count` (every fifth unlabeled), split by index.
    private func item(_ index: Int, classes: [String] = ["cat", "dog"]) -> ImageFolder.Item {
        let label = index % 5 == 4 ? -1 : index % classes.count
        let split: ImageFolder.Split = index % 3 == 0 ? .val : .train
        let folderName = label < 0 ? "" : "\(classes[label])/"
        return ImageFolder.Item(path: "\(split.rawValue)/\(folderName)image\(index).jpg", label: Int32(label), split: split)
    }

    /// Paths whose synthetic file has been given other contents since the test began.
    private var editedPaths: Set<String> = []
    /// Paths whose synthetic file has new times, not new contents.
    private var touchedPaths: Set<String> = []

    /// What item's synthetic file holds: the same on every run, until its path is in `editedPaths`.
    private func identity(_ item: ImageFolder.Item) -> FileIdentity {
        let contents = item.path + (editedPaths.contains(item.path) ? " (edited)" : "")
        return FileIdentity(size: Int64(item.path.utf8.count),
                            mtimeNanoseconds: 1_700_000_000_000_000_000 + (touchedPaths.contains(item.path) ? 1 : 0),
                            ctimeNanoseconds: 1_700_000_000_000_000_000, inode: UInt64(item.path.utf8.count),
                            sha256: SHA256.digest(Array(contents.utf8)))
    }

    /// Features that depend on the image's contents only, with all kinds of bit patterns.
    private func features(of items: [ImageFolder.Item]) -> [Float] {
        items.flatMap { item in
            let contents = item.path + (editedPaths.contains(item.path) ? " (edited)" : "")
            let seed = Float(contents.utf8.reduce(UInt32(7)) { $0 &* 31 &+ UInt32($1) } % 10_007)
            return (0..<Self.rowSize).map { column in (seed + Float(column)).squareRoot() * (column % 2 == 0 ? 1 : -1.5) }
        }
    }

    private func cachePath(_ name: String = "cache.h5") -> String { folder.appendingPathComponent(name).path }

    /// A run over `manifest` whose files hold what `identity` says.
    private func openBuilder(_ path: String? = nil, fingerprint: CacheFingerprint? = nil, classes: [String] = ["cat", "dog"],
                             manifest: [ImageFolder.Item], overwrite: Bool = false) throws -> FeatureCacheBuilder {
        try FeatureCacheBuilder.open(path: path ?? cachePath(), fingerprint: fingerprint ?? self.fingerprint(), classes: classes,
                                     manifest: manifest, overwrite: overwrite) { item, recorded in
            let now = identity(item)
            return recorded.sha256 == now.sha256 ? now : nil
        }
    }

    private func failedItem(_ path: String) -> ImageFolder.Item {
        ImageFolder.Item(path: path, label: -1, split: .none)
    }

    /// A cache at `cachePath()` holding `items`, written by one run in one batch; `unprocessed` are images of
    /// the run that neither got a row nor failed (an incomplete cache).
    @discardableResult
    private func writeCache(_ items: [ImageFolder.Item], failed: [(path: String, reason: String)] = [],
                            unprocessed: [ImageFolder.Item] = [], compress: Bool = false) throws -> CacheSummary {
        let builder = try openBuilder(manifest: items + failed.map { failedItem($0.path) } + unprocessed)
        try append(items, failed: failed, to: builder)
        return try builder.finish(compress: compress)
    }

    private func append(_ items: [ImageFolder.Item], failed: [(path: String, reason: String)] = [],
                        to builder: FeatureCacheBuilder) throws {
        _ = try features(of: items).withUnsafeBufferPointer {
            try builder.append(features: $0, rows: items.map { ($0, identity($0)) }, failed: failed)
        }
    }

    /// `/features` exactly as stored, as bit patterns.
    private func storedFeatureBits(_ path: String) throws -> [UInt32] {
        try HDF5File(path: path, mode: .readOnly).openDataset("features").read(as: Float.self).map(\.bitPattern)
    }

    private func assertFails(_ kind: FeatureCacheError.Kind, mentioning phrases: [String], file: StaticString = #filePath,
                             line: UInt = #line, _ body: () throws -> Void) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            guard let error = error as? FeatureCacheError else {
                return XCTFail("not a FeatureCacheError: \(error)", file: file, line: line)
            }
            XCTAssertEqual(error.kind, kind, error.description, file: file, line: line)
            XCTAssertFalse(error.description.contains("\n"), "one line: \(error.description)", file: file, line: line)
            for phrase in phrases {
                XCTAssertTrue(error.description.contains(phrase), "'\(phrase)' in: \(error.description)", file: file, line: line)
            }
        }
    }

    // MARK: - Round trip

    func testBatchesReadBackExactly() throws {
        let items = (0..<12).map { item($0) }
        let builder = try openBuilder(manifest: items)
        XCTAssertTrue(FileManager.default.fileExists(atPath: builder.journalPath), "the journal is created at open")
        for batch in [0..<4, 4..<7, 7..<12] { try append(Array(items[batch]), to: builder) }
        let summary = try builder.finish(compress: false)
        XCTAssertEqual(summary.rows, 12)
        XCTAssertEqual(summary.extractedRows, 12)
        XCTAssertFalse(FileManager.default.fileExists(atPath: builder.journalPath), "the journal is gone after finish")

        let cache = try FeatureCacheReader(path: cachePath())
        XCTAssertEqual(cache.fingerprint, fingerprint())
        XCTAssertEqual(cache.count, 12)
        XCTAssertTrue(cache.isComplete)
        XCTAssertEqual(cache.classes, ["cat", "dog"])
        XCTAssertEqual(cache.paths, items.map(\.path))
        XCTAssertEqual(cache.labels, items.map(\.label))
        XCTAssertEqual(cache.splits, items.map(\.split))
        XCTAssertEqual(cache.failed, [])
        XCTAssertEqual(cache.attributes["schema"], "bottleneck-cache/3")
        XCTAssertEqual(cache.identities, items.map(identity))
        XCTAssertEqual(cache.attributes["rows_done"], "12")
        XCTAssertEqual(cache.attributes["activation_shape"], "[2, 3]")
        XCTAssertEqual(try cache.readRows(0..<12), Tensor(shape: [12, 2, 3], data: features(of: items)))
        XCTAssertEqual(try cache.readRows(5..<7).data, features(of: Array(items[5..<7])))
        let picked = [9, 2, 3, 9, 0]
        XCTAssertEqual(try cache.readRows(at: picked).data, features(of: picked.map { items[$0] }))
        assertFails(.invalidInput, mentioning: ["row 12"]) { _ = try cache.readRows(at: [12]) }
    }

    func testEmptyRunGivesAnEmptyCache() throws {
        let builder = try openBuilder(classes: [], manifest: [])
        XCTAssertEqual(try builder.finish(compress: true).rows, 0)
        let cache = try FeatureCacheReader(path: cachePath())
        XCTAssertEqual(cache.count, 0)
        XCTAssertEqual(try cache.readRows(0..<0).shape, [0, 2, 3])
    }

    // MARK: - Crash safety

    /// A kill at any byte of the journal, then the same run again: it recovers every whole
    /// record, drops the torn one, and ends with `/features` identical to an uninterrupted run.
    func testContinuesAfterTheJournalIsCutAnywhere() throws {
        let items = (0..<14).map { item($0) }
        let batches = [0..<3, 3..<5, 5..<9, 9..<10, 10..<14]
        let failedInBatch = [1: [(path: "train/cat/broken.jpg", reason: "not a JPEG file")]]
        let manifest = items + [failedItem("train/cat/broken.jpg")]

        let reference = cachePath("reference.h5")
        let uninterrupted = try openBuilder(reference, manifest: manifest)
        for (index, batch) in batches.enumerated() {
            try append(Array(items[batch]), failed: failedInBatch[index] ?? [], to: uninterrupted)
        }
        _ = try uninterrupted.finish(compress: false)
        let referenceBits = try storedFeatureBits(reference)

        // The journal a run leaves when killed after its last batch, and its record boundaries.
        let journalOnly = cachePath("killed.h5")
        var boundaries: [(bytes: Int, rows: Int)] = []
        do {
            let killed = try openBuilder(journalOnly, manifest: manifest)
            boundaries.append((try journalSize(killed.journalPath), 0))
            for (index, batch) in batches.enumerated() {
                try append(Array(items[batch]), failed: failedInBatch[index] ?? [], to: killed)
                boundaries.append((try journalSize(killed.journalPath), batch.upperBound))
            }
        }
        let journal = try Data(contentsOf: URL(fileURLWithPath: FeatureCacheBuilder.journalPath(for: journalOnly)))

        var generator = SystemRandomNumberGenerator()
        var cuts = boundaries.map(\.bytes)
        for (start, end) in zip(boundaries.dropLast(), boundaries.dropFirst()) {
            cuts += [start.bytes + 1, start.bytes + 12, start.bytes + 13, end.bytes - 1]
            cuts += (0..<2).map { _ in Int.random(in: (start.bytes + 1)..<end.bytes, using: &generator) }
        }
        for cut in Set(cuts).sorted() {
            let path = cachePath("cut-\(cut).h5")
            try journal.prefix(cut).write(to: URL(fileURLWithPath: FeatureCacheBuilder.journalPath(for: path)))
            let whole = boundaries.last { $0.bytes <= cut }!

            let resumed = try openBuilder(path, manifest: manifest)
            XCTAssertEqual(resumed.recoveredRowCount, whole.rows, "cut at byte \(cut)")
            XCTAssertEqual(resumed.tornJournalBytes, cut - whole.bytes, "cut at byte \(cut)")
            // The rerun processes what is not done (the broken image included), in batches of its own.
            XCTAssertEqual(resumed.pending, Array(items[whole.rows...]) + [failedItem("train/cat/broken.jpg")], "cut at byte \(cut)")
            let remaining = resumed.pending.dropLast()
            for start in stride(from: 0, to: remaining.count, by: 4) {
                let retriedFailure = start == 0 && whole.rows < 5 ? failedInBatch[1]! : []
                try append(Array(remaining[start..<min(start + 4, remaining.count)]), failed: retriedFailure, to: resumed)
            }
            _ = try resumed.finish(compress: false)

            XCTAssertEqual(try storedFeatureBits(path), referenceBits, "cut at byte \(cut)")
            let cache = try FeatureCacheReader(path: path)
            XCTAssertEqual(cache.paths, items.map(\.path), "cut at byte \(cut)")
            XCTAssertEqual(cache.labels, items.map(\.label), "cut at byte \(cut)")
            XCTAssertEqual(cache.failed, [CacheFailure(path: "train/cat/broken.jpg", reason: "not a JPEG file")],
                           "cut at byte \(cut)")
        }
    }

    private func journalSize(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as! NSNumber).intValue
    }

    /// A kill after the finished cache was renamed into place but before the journal was deleted.
    func testJournalAlreadyInTheCacheIsNotCopiedTwice() throws {
        let items = (0..<6).map { item($0) }
        let builder = try openBuilder(manifest: items)
        try append(items, to: builder)
        let journal = try Data(contentsOf: URL(fileURLWithPath: builder.journalPath))
        _ = try builder.finish(compress: false)
        try journal.write(to: URL(fileURLWithPath: builder.journalPath))
        let before = try FileManager.default.attributesOfItem(atPath: cachePath())

        let rerun = try openBuilder(manifest: items)
        XCTAssertEqual(rerun.reusedRowCount, 6)
        XCTAssertEqual(rerun.recoveredRowCount, 0)
        XCTAssertEqual(try rerun.finish(compress: false).rows, 6)
        XCTAssertEqual(try FeatureCacheReader(path: cachePath()).paths, items.map(\.path))
        let after = try FileManager.default.attributesOfItem(atPath: cachePath())
        XCTAssertEqual(after[.systemFileNumber] as? Int, before[.systemFileNumber] as? Int, "the finished cache is left as it was")
    }

    func testSecondWriterIsRefused() throws {
        let first = try openBuilder(classes: [], manifest: [])
        assertFails(.busy, mentioning: [first.path, "another bottleneck extract"]) {
            _ = try openBuilder(classes: [], manifest: [])
        }
    }

    // MARK: - Refusals

    func testJournalWithAnotherFingerprintIsRefused() throws {
        let journalPath: String
        do {
            let builder = try openBuilder(manifest: [item(0)])
            try append([item(0)], to: builder)
            journalPath = builder.journalPath
        }
        let pool5 = fingerprint(layer: "pool5", layerPath: "features.30")
        assertFails(.mismatch, mentioning: [journalPath, "was made with layer fc7 (classifier.4), not pool5 (features.30)",
                                            "--overwrite"]) {
            _ = try openBuilder(fingerprint: pool5, manifest: [item(0)])
        }
        XCTAssertEqual(try CacheJournal.read(path: journalPath).rows.count, 1, "a refused journal is left as it was")
    }

    func testCacheWithOtherWeightsIsRefusedAndOverwriteDiscardsBoth() throws {
        try writeCache([item(0), item(1)])
        do {
            let interrupted = try openBuilder(manifest: [item(0), item(1), item(2)])
            try append([item(2)], to: interrupted)
        }

        let otherWeights = fingerprint(weights: String(repeating: "cd", count: 32))
        assertFails(.mismatch, mentioning: [cachePath(), "weights sha256 abababababab… (/weights/vgg16.pth), not sha256 cdcdcdcdcdcd…"]) {
            _ = try openBuilder(fingerprint: otherWeights, manifest: [item(3)])
        }
        let fresh = try openBuilder(fingerprint: otherWeights, manifest: [item(3)], overwrite: true)
        XCTAssertEqual(fresh.reusedRowCount, 0)
        XCTAssertEqual(fresh.recoveredRowCount, 0)
        XCTAssertEqual(fresh.pending, [item(3)])
        try append([item(3)], to: fresh)
        _ = try fresh.finish(compress: false)
        let cache = try FeatureCacheReader(path: cachePath())
        XCTAssertEqual(cache.paths, [item(3).path])
        XCTAssertEqual(cache.fingerprint.weightsSHA256, otherWeights.weightsSHA256)
    }

    func testCRC32MatchesZlib() {
        let bytes = Array("123456789".utf8)
        bytes.withUnsafeBytes { all in
            XCTAssertEqual(CRC32.checksum(all), 0xCBF4_3926)
            let split = CRC32.checksum(UnsafeRawBufferPointer(rebasing: all[4...]),
                                       continuing: CRC32.checksum(UnsafeRawBufferPointer(rebasing: all[..<4])))
            XCTAssertEqual(split, 0xCBF4_3926)
        }
    }

    func testDifferencesNameOnlyWhatChanged() {
        var other = fingerprint()
        other.weightsSource = "/elsewhere/vgg16.pth"
        other.toolVersion = "9.9.9"
        XCTAssertEqual(fingerprint().differences(from: other), [], "the weights' path and the tool version are not compared")
        other.preprocess = Preprocessing(resize: 288, crop: 256).jsonDescription
        other.imageRoot = "/data/cars"
        XCTAssertEqual(fingerprint().differences(from: other),
                       ["preprocessing crop 224 resize 256, not crop 256 resize 288", "image root /data/pets, not /data/cars"])
    }

    /// As train-head makes its run folder, extract and merge make the cache's; a file where a folder goes is refused before any work.
    func testMissingOutputFoldersAreCreatedAndAFileInTheWayRefused() throws {
        let path = folder.appendingPathComponent("runs/new/cache.h5").path
        _ = try openBuilder(path, classes: [], manifest: [])
        var isDirectory: ObjCBool = false
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("runs/new").path, isDirectory: &isDirectory))
        XCTAssertTrue(isDirectory.boolValue)

        let blocker = folder.appendingPathComponent("plain-file").path
        XCTAssertTrue(FileManager.default.createFile(atPath: blocker, contents: Data()))
        assertFails(.writeFailed, mentioning: [blocker, "is not a folder"]) {
            _ = try openBuilder(blocker + "/cache.h5", classes: [], manifest: [])
        }
    }

    func testReaderRefusesForeignDamagedAndIncompleteFiles() throws {
        let foreign = cachePath("foreign.h5")
        try HDF5File(path: foreign, mode: .truncate).createDataset("x", of: Float.self, shape: [1]).write([1])
        assertFails(.notACache, mentioning: [foreign, "no 'schema' attribute"]) { _ = try FeatureCacheReader(path: foreign) }

        let damaged = cachePath("damaged.h5")
        do {
            let file = try HDF5File(path: damaged, mode: .truncate)
            try fingerprint().writeAttributes(to: file)
            try file.setAttribute("complete", Int32(1))
        }
        assertFails(.damaged, mentioning: [damaged, "no /features dataset"]) { _ = try FeatureCacheReader(path: damaged) }

        try writeCache([item(0)], unprocessed: [item(1)])
        assertFails(.incomplete, mentioning: [cachePath(), "incomplete"]) { _ = try FeatureCacheReader(path: cachePath()) }
        XCTAssertFalse(try FeatureCacheReader(path: cachePath(), allowIncomplete: true).isComplete)

        assertFails(.missing, mentioning: ["nothing.h5: no such file"]) { _ = try FeatureCacheReader(path: cachePath("nothing.h5")) }
    }

    // MARK: - Incremental runs and failures

    func testIncrementalRunReusesRowsAndRemapsLabelsByName() throws {
        let first = (0..<5).map { item($0) }
        try writeCache(first)

        // Images added later, with a new class that sorts first and shifts the old indices.
        let classes = ["bird", "cat", "dog"]
        let all = first.map { old in
            ImageFolder.Item(path: old.path, label: old.label < 0 ? -1 : old.label + 1, split: old.split)
        } + (5..<9).map { item($0, classes: classes) }
        let rerun = try openBuilder(classes: classes, manifest: all)
        XCTAssertEqual(rerun.reusedRowCount, 5)
        let added = rerun.pending
        XCTAssertEqual(added, Array(all[5...]))
        try append(added, to: rerun)
        let summary = try rerun.finish(compress: false)
        XCTAssertEqual(summary.reusedRows, 5)
        XCTAssertEqual(summary.extractedRows, 4)

        let cache = try FeatureCacheReader(path: cachePath())
        XCTAssertEqual(cache.classes, classes)
        XCTAssertEqual(cache.paths, all.map(\.path))
        XCTAssertEqual(cache.labels, all.map(\.label))
        XCTAssertEqual(try cache.readRows(0..<9).data, features(of: all))
    }

    /// An interrupted run continued after a class folder appeared: the journal's earlier
    /// labels still name their classes.
    func testInterruptedRunContinuesWithANewClass() throws {
        do {
            let interrupted = try openBuilder(manifest: [item(0), item(1)])
            try append([item(0), item(1)], to: interrupted)
        }
        let classes = ["ant", "cat", "dog"]
        let ant = ImageFolder.Item(path: "train/ant/a.jpg", label: 0, split: .train)
        let dog = ImageFolder.Item(path: "train/dog/d.jpg", label: 2, split: .train)
        let shifted = [item(0), item(1)].map { ImageFolder.Item(path: $0.path, label: $0.label + 1, split: $0.split) }
        let rerun = try openBuilder(classes: classes, manifest: shifted + [ant, dog])
        XCTAssertEqual(rerun.recoveredRowCount, 2)
        try append([ant, dog], to: rerun)
        _ = try rerun.finish(compress: false)

        let cache = try FeatureCacheReader(path: cachePath())
        XCTAssertEqual(cache.classes, classes)
        XCTAssertEqual(cache.paths, [item(0).path, item(1).path, ant.path, dog.path])
        XCTAssertEqual(cache.labels, [1, 2, 0, 2], "cat and dog shift by one, by name")
    }

    func testFailedPathsAreRecordedAndRetried() throws {
        XCTAssertEqual(try writeCache([item(0)], failed: [("train/cat/a.jpg", "truncated JPEG"),
                                                          ("train/dog/b.png", "not a PNG file")]).failed, 2)
        XCTAssertEqual(try FeatureCacheReader(path: cachePath()).failed,
                       [CacheFailure(path: "train/cat/a.jpg", reason: "truncated JPEG"),
                        CacheFailure(path: "train/dog/b.png", reason: "not a PNG file")])

        let repaired = ImageFolder.Item(path: "train/cat/a.jpg", label: 0, split: .train)
        let rerun = try openBuilder(manifest: [item(0), repaired, failedItem("train/dog/b.png")])
        XCTAssertEqual(rerun.pending.map(\.path), ["train/cat/a.jpg", "train/dog/b.png"], "failed paths are tried again")
        try append([repaired], failed: [("train/dog/b.png", "still not a PNG file")], to: rerun)
        _ = try rerun.finish(compress: false)
        let cache = try FeatureCacheReader(path: cachePath())
        XCTAssertEqual(cache.paths, [item(0).path, repaired.path])
        XCTAssertEqual(cache.failed, [CacheFailure(path: "train/dog/b.png", reason: "still not a PNG file")])
    }

    // MARK: - A cache as fresh as its folder

    /// A rerun after images were edited, deleted, renamed and added holds exactly what a fresh run over the
    /// folder as it is now holds, in the same order, and its counts add up.
    func testRerunAfterTheFolderChangedEqualsAFreshRun() throws {
        let before = (0..<10).map { item($0) }
        try writeCache(before)
        editedPaths = [item(3).path]
        touchedPaths = [item(4).path]
        let renamed = ImageFolder.Item(path: "train/cat/renamed.jpg", label: 0, split: .train)
        let added = item(12)
        // item(5) deleted, item(7) renamed.
        let now = [item(0), item(1), item(2), item(3), item(4), item(6), item(8), renamed, item(9), added]
        let rerun = try openBuilder(manifest: now)
        XCTAssertEqual(rerun.pending, [item(3), renamed, added])
        try append(rerun.pending, to: rerun)
        let summary = try rerun.finish(compress: false)
        XCTAssertEqual([summary.reusedRows, summary.extractedRows, summary.changedRows, summary.removedRows], [7, 2, 1, 2])
        XCTAssertEqual(summary.refreshedRows, 1, "item 4 was touched: same bytes, new times")

        let fresh = cachePath("fresh.h5")
        let freshBuilder = try openBuilder(fresh, manifest: now)
        try append(now, to: freshBuilder)
        _ = try freshBuilder.finish(compress: false)
        XCTAssertEqual(try storedFeatureBits(cachePath()), try storedFeatureBits(fresh))
        let (updated, reference) = (try FeatureCacheReader(path: cachePath()), try FeatureCacheReader(path: fresh))
        XCTAssertEqual(updated.paths, reference.paths)
        XCTAssertEqual(updated.labels, reference.labels)
        XCTAssertEqual(updated.identities, reference.identities)
    }

    /// A file changed while a run was interrupted: its journal row is not reused, and the row extracted again
    /// replaces it when the journal is read back.
    func testJournalRowOfAChangedFileIsExtractedAgain() throws {
        let items = (0..<4).map { item($0) }
        do {
            let interrupted = try openBuilder(manifest: items)
            try append(Array(items[0..<3]), to: interrupted)
        }
        editedPaths = [item(1).path]
        do {
            let second = try openBuilder(manifest: items)
            XCTAssertEqual(second.recoveredRowCount, 2)
            XCTAssertEqual(second.pending, [item(1), item(3)])
            try append([item(1)], to: second)
        }
        XCTAssertEqual(try CacheJournal.read(path: FeatureCacheBuilder.journalPath(for: cachePath())).rows.map(\.path),
                       items[0..<3].map(\.path), "the later row of item 1 replaced the earlier")
        let third = try openBuilder(manifest: items)
        XCTAssertEqual(third.pending, [item(3)])
        try append([item(3)], to: third)
        _ = try third.finish(compress: false)
        XCTAssertEqual(try FeatureCacheReader(path: cachePath()).readRows(0..<4).data, features(of: items))
    }

    func testRepeatedJournalRecordIsRefusedAsDamage() throws {
        let journalPath: String
        do {
            let builder = try openBuilder(manifest: [item(0), item(1)])
            journalPath = builder.journalPath
            let header = try journalSize(journalPath)
            try append([item(0)], to: builder)
            let bytes = try Data(contentsOf: URL(fileURLWithPath: journalPath))
            try (bytes + bytes[header...]).write(to: URL(fileURLWithPath: journalPath))
        }
        assertFails(.damaged, mentioning: [journalPath, "\(item(0).path) has the same row twice", "--overwrite"]) {
            _ = try openBuilder(manifest: [item(0), item(1)])
        }
    }

    func testNonFiniteFeaturesAreNeverWritten() throws {
        let items = (0..<5).map { item($0) }
        let builder = try openBuilder(manifest: items)
        var values = features(of: items)
        for (row, poison) in [(1, Float.nan), (2, .infinity), (4, -.infinity)] { values[row * Self.rowSize + 2] = poison }
        let failures = try values.withUnsafeBufferPointer {
            try builder.append(features: $0, rows: items.map { ($0, identity($0)) }, failed: [("val/x.jpg", "truncated")])
        }
        XCTAssertEqual(failures.map(\.path), ["val/x.jpg"] + [1, 2, 4].map { item($0).path })
        XCTAssertTrue(failures[1].reason.contains("non-finite"), failures[1].reason)
        XCTAssertEqual(builder.pending, [item(1), item(2), item(4)])
        try append([item(1), item(2), item(4)], to: builder)
        _ = try builder.finish(compress: false)
        let cache = try FeatureCacheReader(path: cachePath())
        XCTAssertEqual(cache.paths, items.map(\.path))
        XCTAssertEqual(try cache.readRows(0..<5).data, features(of: items))
    }

    func testShardsSharingAnImageAreRefused() throws {
        for (index, items) in [(1, [item(0), item(1)]), (2, [item(1), item(2)])] {
            var shardFingerprint = fingerprint()
            shardFingerprint.shard = "\(index)/2"
            let builder = try openBuilder(cachePath("shard\(index).h5"), fingerprint: shardFingerprint, manifest: items)
            try append(items, to: builder)
            _ = try builder.finish(compress: false)
        }
        assertFails(.invalidInput, mentioning: [cachePath("shard2.h5"), "\(item(1).path) is in shard 1/2 and in shard 2/2"]) {
            _ = try CacheMerge.merge(shards: [cachePath("shard1.h5"), cachePath("shard2.h5")], into: cachePath())
        }
    }

    // MARK: - Integrity

    /// One flipped bit inside `/features` is a clear error naming the dataset, never silently different numbers.
    func testFlippedBitInTheFeaturesIsAnError() throws {
        let items = (0..<40).map { item($0) }
        try writeCache(items)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: cachePath()))
        let row7 = features(of: [item(7)]).withUnsafeBytes { Data($0) }
        let offset = try XCTUnwrap(bytes.range(of: row7)).lowerBound
        bytes[offset + 5] ^= 0x10
        try bytes.write(to: URL(fileURLWithPath: cachePath()))
        let cache = try FeatureCacheReader(path: cachePath())
        assertFails(.damaged, mentioning: [cachePath(), "/features", "--overwrite"]) { _ = try cache.readRows(0..<40) }
    }

    /// Nothing of a cache lives in HDF5's global heap, which no checksum covers (a damaged one crashes libhdf5 1.10):
    /// no global heap collection ("GCOL") is in the file at all.
    func testCacheHasNoGlobalHeap() throws {
        try writeCache((0..<5).map { item($0) }, failed: [("val/x.jpg", "truncated")])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: cachePath()))
        XCTAssertNil(bytes.range(of: Data("GCOL".utf8)))
        XCTAssertEqual(try HDF5File(path: cachePath(), mode: .readOnly).stringAttribute("layer"), "fc7")
    }

    func testCacheOfTheOlderSchemaNamesTheWayOut() throws {
        let path = cachePath("old.h5")
        do {
            let file = try HDF5File(path: path, mode: .truncate)
            var old = fingerprint()
            old.schema = "bottleneck-cache/1"
            try old.writeAttributes(to: file)
        }
        assertFails(.notACache, mentioning: [path, "bottleneck-cache/1", "older bottleneck", "--overwrite"]) {
            _ = try FeatureCacheReader(path: path)
        }
    }

    func testReaderRefusesRepeatedPathsAndClasses() throws {
        try writeCache([item(0), item(1)])
        let valid = try FeatureCacheReader(path: cachePath())
        for (name, paths, classes) in [("paths", [item(0).path, item(0).path], valid.classes), ("classes", valid.paths, ["cat", "cat"])] {
            let path = cachePath("repeated-\(name).h5")
            do {
                let file = try HDF5File(path: path, mode: .truncate)
                try valid.fingerprint.writeAttributes(to: file)
                try file.setAttribute("complete", Int32(1))
                try file.createDataset("features", of: Float.self, shape: [2, 2, 3]).write(try valid.readRows(0..<2).data)
                try file.createDataset("labels", of: Int32.self, shape: [2]).write(valid.labels)
                try file.createStringDataset("classes", strings: classes)
                try file.createStringDataset("paths", strings: paths)
                try file.createStringDataset("split", strings: valid.splits.map(\.rawValue))
                let source = try file.createGroup("source")
                for field in ["size", "mtime_ns", "ctime_ns"] { try source.createDataset(field, of: Int64.self, shape: [2]).write([1, 1]) }
                try source.createDataset("inode", of: UInt64.self, shape: [2]).write([1, 1])
                try source.createStringDataset("sha256", strings: valid.identities.map { SHA256.hex($0.sha256) })
                let failed = try file.createGroup("failed")
                try failed.createStringDataset("paths", strings: [])
                try failed.createStringDataset("reasons", strings: [])
            }
            assertFails(.damaged, mentioning: [path, "/\(name)", "twice"]) { _ = try FeatureCacheReader(path: path) }
        }
    }

    // MARK: - Storage and other readers

    func testCompressedCacheReadsTheSame() throws {
        let items = (0..<40).map { item($0) }
        try writeCache(items, compress: true)
        let cache = try FeatureCacheReader(path: cachePath())
        XCTAssertEqual(cache.storage.filters.map(\.name), ["shuffle", "deflate", "fletcher32"])
        XCTAssertEqual(cache.storage.filters[1].parameters, [4])
        XCTAssertEqual(cache.chunkRows, 40, "a chunk never exceeds the row count")
        XCTAssertEqual(try cache.readRows(0..<40).data, features(of: items))
    }

    func testInspectionReportsCacheAndJournal() throws {
        let builder = try openBuilder(manifest: (0..<5).map { item($0) } + [failedItem("val/dog/x.jpg")])
        try append((0..<5).map { item($0) }, failed: [("val/dog/x.jpg", "cannot decode")], to: builder)
        let inProgress = try CacheInspection(path: cachePath()).report
        XCTAssertTrue(inProgress.contains("extraction in progress or interrupted: 5 rows durable in \(builder.journalPath); "
                                          + "rerun the same extract command to continue"), inProgress)
        _ = try builder.finish(compress: true)

        let inspection = try CacheInspection(path: cachePath())
        XCTAssertNil(inspection.journal)
        XCTAssertEqual(inspection.classes, [
            .init(name: "cat", perSplit: ["val": 1, "train": 1], total: 2),
            .init(name: "dog", perSplit: ["train": 1, "val": 1], total: 2),
            .init(name: nil, perSplit: ["train": 1], total: 1),
        ])
        let report = inspection.report
        for line in ["schema: bottleneck-cache/3", "layer: fc7 (classifier.4)", "activation shape: [2, 3]", "rows: 5",
                     "  class         train     val   total", "  cat               1       1       2",
                     "  (unlabeled)       1       0       1",
                     "image root: /data/pets", "storage: chunks of 5 rows, shuffle+deflate level 4", "failed: 1",
                     "  val/dog/x.jpg: cannot decode"] {
            XCTAssertTrue(report.contains(line), "'\(line)' in:\n\(report)")
        }
    }

    func testH5dumpReadsTheCache() throws {
        let h5dump = "/usr/bin/h5dump"
        guard FileManager.default.isExecutableFile(atPath: h5dump) else { throw XCTSkip("h5dump is not installed") }
        try writeCache((0..<3).map { item($0) }, compress: true)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: h5dump)
        process.arguments = ["-H", cachePath()]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        XCTAssertTrue(text.contains("DATASET \"features\""), text)
        XCTAssertTrue(text.contains("GROUP \"failed\""), text)
    }
}
