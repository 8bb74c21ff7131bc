#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import XCTest
@testable import Bottleneck
@testable import BottleneckKernels

/// Files planted where the tool reads or writes: FIFOs, devices and folders are refused without blocking,
/// planted symbolic links are never written through, a second writer of a cache is refused before it deletes
/// anything, dead runs' temporaries are cleaned, and stage names cannot climb out of the output folder.
final class HostileFileTests: XCTestCase {
    private var folder: String!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: folder)
    }

    private func path(_ name: String) -> String { folder + "/" + name }

    private func makeFIFO(_ name: String) throws -> String {
        let fifo = path(name)
        guard mkfifo(fifo, 0o644) == 0 else { throw XCTSkip("mkfifo: \(systemMessage(errno))") }
        return fifo
    }

    /// Runs `body`, which must not block on the FIFO at `fifo`; if it does, a writer is opened to release it and the test fails.
    private func assertDoesNotBlock(on fifo: String, _ what: String, file: StaticString = #filePath, line: UInt = #line,
                                    _ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            body()
            done.signal()
        }
        if done.wait(timeout: .now() + 10) == .timedOut {
            XCTFail("\(what) blocked on the FIFO \(fifo)", file: file, line: line)
            let writer = open(fifo, O_RDWR | O_NONBLOCK)
            close(writer)
            _ = done.wait(timeout: .now() + 10)
        }
    }

    private func assertRefusal(_ error: Error?, mentioning phrases: [String], file: StaticString = #filePath, line: UInt = #line) {
        guard let error else { return XCTFail("accepted", file: file, line: line) }
        let message = "\(error)"
        XCTAssertFalse(message.contains("\n"), "one line: \(message)", file: file, line: line)
        for phrase in phrases { XCTAssertTrue(message.contains(phrase), "'\(phrase)' in: \(message)", file: file, line: line) }
    }

    private func errorOf(_ body: () throws -> Void) -> Error? {
        do { try body() } catch { return error }
        return nil
    }

    // MARK: - Reading: regular files only

    func testFIFOAsWeightsModelCacheOrPipelineIsRefusedWithoutBlocking() throws {
        let fifo = try makeFIFO("x.pth")
        let readers: [(String, @Sendable () throws -> Void)] = [
            ("weights", { _ = try StateDictFile.open(path: fifo) }),
            ("inspect weights", { _ = try WeightsInspection(path: fifo) }),
            ("model", { _ = try TrainedModel(contentsOf: fifo) }),
            ("cache", { _ = try FeatureCacheReader(path: fifo) }),
            ("inspect cache", { _ = try CacheInspection(path: fifo) }),
            ("HDF5", { _ = try HDF5File(path: fifo, mode: .readOnly) }),
            ("pipeline", { _ = try Pipeline(contentsOf: fifo) }),
            ("sha256", { _ = try SHA256.hexDigest(ofFileAt: fifo) }),
            ("image to predict", { _ = try ImageDecoder.decode(path: fifo) }),
            ("image to extract", { _ = try FileIdentity.read(path: fifo) }),
        ]
        for (what, read) in readers {
            let failure = UncheckedSendable(NSMutableArray())
            assertDoesNotBlock(on: fifo, what) {
                do { try read() } catch { failure.value.add("\(error)") }
            }
            let message = failure.value.firstObject as? String
            XCTAssertNotNil(message, "\(what) accepted a FIFO")
            assertRefusal(message.map { PipelineError($0) }, mentioning: [fifo, "FIFO"])
        }
    }

    func testFolderAndDeviceAsWeightsAreRefusedByKind() {
        assertRefusal(errorOf { _ = try StateDictFile.open(path: folder) }, mentioning: [folder, "a directory"])
        assertRefusal(errorOf { _ = try StateDictFile.open(path: "/dev/null") }, mentioning: ["/dev/null", "a character device"])
        assertRefusal(errorOf { _ = try HDF5File(path: "/dev/null", mode: .readOnly) }, mentioning: ["/dev/null", "a character device"])
    }

    /// A sparse file can claim any size: an "image" of 2 GB is refused before its bytes are allocated.
    func testAnImageLargerThanAnyDecodableOneIsRefusedBeforeReading() throws {
        let image = path("huge.jpg")
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: Data("\u{FF}\u{D8}".utf8)))
        XCTAssertEqual(truncate(image, 2 << 30), 0)
        assertRefusal(errorOf { _ = try FileIdentity.read(path: image) }, mentioning: [image, "it is 2.15 GB, more than the 1.07 GB"])
    }

    func testFIFOJournalBesideACacheIsRefusedWithoutBlocking() throws {
        let cache = path("cache.h5")
        let fifo = try makeFIFO("cache.h5.partial")
        let failure = UncheckedSendable(NSMutableArray())
        assertDoesNotBlock(on: fifo, "reading the journal") {
            do { _ = try CacheJournal.read(path: fifo) } catch { failure.value.add("\(error)") }
        }
        XCTAssertTrue((failure.value.firstObject as? String)?.contains("FIFO") == true, "\(failure.value)")
        assertRefusal(errorOf { _ = try openBuilder(cache) }, mentioning: [fifo, "FIFO"])
    }

    // MARK: - Writing: fresh temporaries, no planted link followed

    private func fingerprint() -> CacheFingerprint {
        CacheFingerprint(backbone: "vgg16", layer: "fc7", layerPath: "classifier.4", activationShape: [2],
                         weightsSHA256: String(repeating: "ab", count: 32), weightsSource: "/weights/vgg16.pth",
                         preprocess: Preprocessing.imageNet.jsonDescription, imageRoot: "/data")
    }

    private let item = ImageFolder.Item(path: "cat/a.jpg", label: 0, split: .train)

    private func openBuilder(_ cache: String, overwrite: Bool = false) throws -> FeatureCacheBuilder {
        try FeatureCacheBuilder.open(path: cache, fingerprint: fingerprint(), classes: ["cat"], manifest: [item],
                                     overwrite: overwrite) { _, recorded in recorded }
    }

    private func writeCache(_ cache: String) throws {
        let builder = try openBuilder(cache)
        let identity = FileIdentity(size: 1, mtimeNanoseconds: 1, ctimeNanoseconds: 1, inode: 1, sha256: SHA256.digest([1]))
        try [Float(1), 2].withUnsafeBufferPointer { _ = try builder.append(features: $0, rows: [(item, identity)], failed: []) }
        _ = try builder.finish(compress: false)
    }

    private func plantVictim() throws -> (path: String, contents: String) {
        let victim = path("victim.json")
        try "precious".write(toFile: victim, atomically: false, encoding: .utf8)
        return (victim, "precious")
    }

    private func assertRegularFile(_ path: String, file: StaticString = #filePath, line: UInt = #line) {
        var status = stat()
        XCTAssertEqual(lstat(path, &status), 0, path, file: file, line: line)
        XCTAssertEqual(status.st_mode & S_IFMT, S_IFREG, "\(path) is a regular file", file: file, line: line)
    }

    func testLinksPlantedAtTheCachesOldTemporaryNamesAreNotFollowed() throws {
        let cache = path("cache.h5")
        let victim = try plantVictim()
        for name in ["cache.h5.partial.new", "cache.h5.tmp", "cache.h5.partial-\(getpid())"] {
            XCTAssertEqual(symlink(victim.path, path(name)), 0)
        }
        try writeCache(cache)
        XCTAssertEqual(try String(contentsOfFile: victim.path, encoding: .utf8), victim.contents)
        assertRegularFile(cache)
        XCTAssertEqual(try FeatureCacheReader(path: cache).count, 1)
    }

    func testTemporariesAreFreshUnpredictableNamesBesideTheDestination() {
        let destination = path("model.h5")
        let names = Set((0..<20).map { _ in DurableFiles.temporaryPath(for: destination) })
        XCTAssertEqual(names.count, 20)
        XCTAssertTrue(names.allSatisfy { $0.hasPrefix(destination + ".partial-\(getpid())-") }, "\(names)")
    }

    func testDestinationThatIsALinkOrADeviceIsRefusedAndLeftAlone() throws {
        let victim = try plantVictim()
        let link = path("report.html")
        XCTAssertEqual(symlink(victim.path, link), 0)
        assertRefusal(errorOf { try DurableFiles.writeAtomically(Array("new".utf8), to: link) },
                      mentioning: [link, "symbolic link", victim.path])
        var status = stat()
        XCTAssertEqual(lstat(link, &status), 0)
        XCTAssertEqual(status.st_mode & S_IFMT, S_IFLNK, "the link is left as it was")
        XCTAssertEqual(try String(contentsOfFile: victim.path, encoding: .utf8), victim.contents)

        assertRefusal(errorOf { try DurableFiles.writeAtomically(Array("new".utf8), to: "/dev/null") },
                      mentioning: ["/dev/null", "a character device, not a regular file"])
        XCTAssertEqual(stat("/dev/null", &status), 0)
        XCTAssertEqual(status.st_mode & S_IFMT, S_IFCHR, "/dev/null is still a device")

        let model = path("model.h5")
        XCTAssertEqual(symlink(victim.path, model), 0)
        assertRefusal(errorOf { try writeStateDictHDF5(path: model, tensors: [("w", Tensor(shape: [1], data: [1]))]) },
                      mentioning: [model, "symbolic link"])
        let cache = path("linked.h5")
        XCTAssertEqual(symlink(victim.path, cache), 0)
        assertRefusal(errorOf { try writeCache(cache) }, mentioning: [cache, "symbolic link"])
        XCTAssertEqual(try String(contentsOfFile: victim.path, encoding: .utf8), victim.contents)
    }

    func testWritesReplaceARegularFileWhole() throws {
        let destination = path("summary.json")
        try DurableFiles.writeAtomically(Array("old, longer".utf8), to: destination)
        try DurableFiles.writeAtomically(Array("new".utf8), to: destination)
        XCTAssertEqual(try String(contentsOfFile: destination, encoding: .utf8), "new")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), ["summary.json"], "no temporary left")
    }

    // MARK: - The cache lock comes before any delete

    func testSecondWriterWithOverwriteIsRefusedBeforeDeletingAnything() throws {
        let cache = path("cache.h5")
        try writeCache(cache)
        let first = try openBuilder(cache)
        XCTAssertTrue(FileManager.default.fileExists(atPath: first.journalPath))
        XCTAssertThrowsError(try openBuilder(cache, overwrite: true)) { error in
            XCTAssertEqual((error as? FeatureCacheError)?.kind, .busy)
            assertRefusal(error, mentioning: [cache, "another bottleneck extract is writing"])
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: first.journalPath), "the first writer's journal is kept")
        XCTAssertEqual(try FeatureCacheReader(path: cache).count, 1, "the cache is kept")
    }

    /// Two trainings into one --out (train-head, full-finetune, --resume) would delete and write each other's files.
    func testASecondRunIntoTheSameFolderIsRefusedWhileTheFirstTrains() throws {
        let runFolder = path("run")
        let config = runFolder + "/" + RunDirectory.configFile
        do {
            let first = try RunDirectory(path: runFolder, overwrite: false)
            try first.writeJSON(["epochs": 1], to: RunDirectory.configFile)
            for second in [{ _ = try RunDirectory(path: runFolder, overwrite: true) }, { _ = try RunDirectory(resuming: runFolder) }] {
                assertRefusal(errorOf(second), mentioning: [runFolder, "is in use: another bottleneck run is training into it"])
            }
            XCTAssertTrue(FileManager.default.fileExists(atPath: config), "the first run's files are kept")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: runFolder + "/" + RunDirectory.lockFile), "deleted as it is let go")
        XCTAssertNoThrow(try RunDirectory(path: runFolder, overwrite: true), "let go with the first run")
    }

    func testTheLockIsLetGoWithTheBuilderAndALeftoverLockFileIsTaken() throws {
        let cache = path("cache.h5")
        do { _ = try openBuilder(cache) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: WriterLock.cachePath(for: cache)), "deleted as it is let go")
        XCTAssertTrue(FileManager.default.createFile(atPath: WriterLock.cachePath(for: cache), contents: nil))
        XCTAssertNoThrow(try writeCache(cache), "a killed run's lock file holds no lock")
        let link = WriterLock.cachePath(for: cache)
        XCTAssertEqual(symlink(path("victim"), link), 0)
        assertRefusal(errorOf { _ = try openBuilder(cache) }, mentioning: [link])
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("victim")), "no file created through the link")
    }

    // MARK: - Temporaries of dead runs

    private func deadProcessID() throws -> pid_t {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/true")
        try process.run()
        process.waitUntilExit()
        return process.processIdentifier
    }

    func testTemporariesOfDeadRunsAreDeletedAndALiveOnesKept() throws {
        let dead = try deadProcessID()
        let live = getppid()
        let orphans = ["model.h5.partial-\(dead)", "checkpoint.h5.partial-\(dead)-k3x9", "summary.json.partial-\(dead)-a1"]
        let kept = ["model.h5.partial-\(live)-zz", "notes.partial-\(dead)", "model.h5.partial"]
        for name in orphans + kept { XCTAssertTrue(FileManager.default.createFile(atPath: path(name), contents: Data(count: 10))) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path(RunDirectory.configFile), contents: Data("{}".utf8)))
        _ = try RunDirectory(resuming: folder)
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: folder)), Set(kept + [RunDirectory.configFile]))
    }

    // MARK: - Pipeline stage names

    func testStageNamesMustBePlainNames() {
        for bad in ["../victimrun", "/etc", ".stages", "a/b", "", "é"] {
            let yaml = "images: data\nstages:\n  - stage: extract\n  - stage: train-head\n    name: '\(bad)'\n"
            assertRefusal(errorOf { _ = try Pipeline(yaml: yaml, path: "p.yaml") }, mentioning: ["p.yaml:5:", "plain name"])
        }
        let yaml = "images: data\nstages:\n  - stage: extract\n  - stage: train-head\n    name: head-1.v2_b\n"
        XCTAssertEqual(try Pipeline(yaml: yaml, path: "p.yaml").stages.last?.name, "head-1.v2_b")
    }

    // MARK: - --resume without a checkpoint

    func testResumeWithoutCheckpointSaysWhetherEpochsFinished() throws {
        let checkpoint = path(FineTuneCheckpoint.fileName)
        let header = EpochRecord.csvColumns.joined(separator: ",") + "\n"
        try header.write(toFile: path(RunDirectory.metricsFile), atomically: true, encoding: .utf8)
        assertRefusal(errorOf { _ = try FineTuneCheckpoint(contentsOf: checkpoint) }, mentioning: ["did not finish an epoch"])
        try (header + "1,0.5,0.5,0.5,0.5,0.01,1\n2,0.4,0.6,0.4,0.6,0.01,1\n")
            .write(toFile: path(RunDirectory.metricsFile), atomically: true, encoding: .utf8)
        let error = errorOf { _ = try FineTuneCheckpoint(contentsOf: checkpoint) }
        assertRefusal(error, mentioning: ["2 finished epochs", "--overwrite"])
        XCTAssertFalse("\(error.map { "\($0)" } ?? "")".contains("did not finish"))
    }
}
