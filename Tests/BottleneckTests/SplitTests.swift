@testable import Bottleneck
import Foundation
import XCTest
@testable import BottleneckKernels

/// One split, decided by the image: the hash rule against Python's hashlib, its stability when images
/// are added, and train-head (cache rows), full-finetune (folder files, unreadable ones included),
/// evaluate and report agreeing on the validation images.
final class SplitTests: FolderTestCase {
    private static let classes = ["cats", "dogs", "zebras"]

    /// `perClass` images of each class, flat (no split folders), as ImageFolder and the cache list them.
    private func rows(_ classes: [String] = classes, perClass: Int = 12) -> (paths: [String], labels: [Int32]) {
        let pairs = classes.enumerated().flatMap { label, name in (0..<perClass).map { ("\(name)/img\($0).jpg", Int32(label)) } }
        return (pairs.map(\.0), pairs.map(\.1))
    }

    private func hashed(_ rows: (paths: [String], labels: [Int32]), classes: [String] = classes, seed: UInt64 = 0,
                        fraction: Double = 0.25) throws -> TrainingSplit {
        try TrainingSplit.make(paths: rows.paths, labels: rows.labels, splits: Array(repeating: .none, count: rows.paths.count),
                               classes: classes, seed: seed, validationFraction: fraction)
    }

    private func validationPaths(_ split: TrainingSplit, _ rows: (paths: [String], labels: [Int32])) -> Set<String> {
        Set(split.validationRows.map { rows.paths[$0] })
    }

    func testMembershipIsTheDocumentedHashOfSeedClassAndPath() throws {
        // Python: (int.from_bytes(hashlib.sha256(f"{seed}/{cls}/{path}".encode()).digest()[:8], "big") >> 11) / 2**53
        XCTAssertEqual(TrainingSplit.hashPosition(path: "zebras/img0.jpg", className: "zebras", seed: 0), 0.029147890188645942)
        XCTAssertEqual(TrainingSplit.hashPosition(path: "train/cats/a b/ü.png", className: "cats", seed: 7), 0.22374786777907096)

        let all = rows()
        let split = try hashed(all)
        XCTAssertEqual(split.source, .hashed)
        XCTAssertEqual(validationPaths(split, all), Set([1, 3, 4, 9, 10, 11].map { "cats/img\($0).jpg" }
            + [2, 5, 6, 9].map { "dogs/img\($0).jpg" } + [0, 1, 9].map { "zebras/img\($0).jpg" }))
        XCTAssertEqual(Set(split.trainRows + split.validationRows), Set(all.paths.indices))
        XCTAssertTrue(Set(split.trainRows).isDisjoint(with: split.validationRows))

        // Python, seed 1: another set.
        XCTAssertEqual(validationPaths(try hashed(all, seed: 1), all), Set([4, 9, 10].map { "cats/img\($0).jpg" } + ["dogs/img7.jpg"]
            + [4, 5, 6, 8, 9, 10].map { "zebras/img\($0).jpg" }))
        XCTAssertTrue(validationPaths(try hashed(all, fraction: 0.2), all).isSubset(of: validationPaths(split, all)),
                      "a smaller fraction only moves images back to training")
    }

    /// Membership depends on nothing but the image: more images, a new class, unreadable or unlabeled
    /// neighbours, test rows, a seen order move no image from its side.
    func testAddingImagesMovesNoOldImage() throws {
        let old = rows()
        let before = validationPaths(try hashed(old), old)
        let grown = rows(["ants"] + Self.classes, perClass: 20)
        let paths = grown.paths + ["loose.jpg", "test/cats/t.jpg"]
        let labels = grown.labels + [-1, 1]
        let splits = Array(repeating: ImageFolder.Split.none, count: grown.paths.count) + [.none, .test]
        let after = try TrainingSplit.make(paths: paths, labels: labels, splits: splits, classes: ["ants"] + Self.classes,
                                           seed: 0, validationFraction: 0.25)
        let validation = Set(after.validationRows.map { paths[$0] })
        XCTAssertEqual(validation.intersection(old.paths), before)
        XCTAssertFalse(Set(after.trainRows + after.validationRows).contains(paths.count - 1), "test rows do neither")
        XCTAssertFalse(Set(after.trainRows + after.validationRows).contains(paths.count - 2), "unlabeled rows do neither")
    }

    func testRefusesAnEmptyValidationSideAndAClassWithoutTrainingRows() {
        XCTAssertThrowsError(try hashed(rows(), fraction: 0.002)) { error in
            XCTAssertTrue("\(error)".contains("the validation split is empty: none of the 36 labeled rows hashes below "
                                              + "--val-fraction 0.002, --split-seed 0"), "\(error)")
        }
        XCTAssertThrowsError(try hashed(rows(perClass: 1), fraction: 0.2)) { error in
            XCTAssertTrue("\(error)".contains("class zebras has no training rows: all 1 of its rows hash to validation"), "\(error)")
        }
    }

    // MARK: the jobs

    /// 6 sample images of each class, flat, plus two unreadable files: discs/broken_1.jpg hashes to
    /// validation and stripes/broken.jpg to training at fraction 0.3, seed 0 (Python).
    private func folderWithUnreadableFiles() throws -> String {
        let root = path("images")
        let manager = FileManager.default
        for name in ["checkerboard", "discs", "stripes"] {
            let source = SampleCaches.imagesRoot + "/train/" + name
            try manager.createDirectory(atPath: "\(root)/\(name)", withIntermediateDirectories: true)
            for file in try manager.contentsOfDirectory(atPath: source).sorted().prefix(6) {
                try manager.copyItem(atPath: "\(source)/\(file)", toPath: "\(root)/\(name)/\(file)")
            }
        }
        for broken in ["discs/broken_1.jpg", "stripes/broken.jpg"] {
            try manager.copyItem(atPath: Fixtures.path("images/bad/truncated.jpg"), toPath: "\(root)/\(broken)")
        }
        return root
    }

    /// The hashed validation images of that folder: those below 0.3 (Python), the unreadable one left out.
    private static let expectedValidation = TrainingSplit.Record(
        rule: .init(source: .hashed, seed: 0, validationFraction: 0.3),
        validationPaths: ["checkerboard/checkerboard_002.jpg", "checkerboard/checkerboard_004.jpg", "discs/discs_002.jpg",
                          "discs/discs_005.png", "stripes/stripes_001.JPG", "stripes/stripes_004.jpg"])

    private func extract(_ images: String) throws -> String {
        var extraction = ExtractionJob(imagesRoot: images, outputPath: path("fc7.h5"), weights: SampleCaches.weights)
        extraction.config = SampleCaches.config
        extraction.preprocessing = SampleCaches.preprocessing
        extraction.layer = "fc7"
        _ = try extraction.run { _ in }
        return path("fc7.h5")
    }

    private func trainHead(_ cache: String, out: String, splitSeed: UInt64 = 0) throws -> TrainingSummary {
        var job = HeadTrainingJob(cachePath: cache, runDirectory: path(out))
        job.config = SampleCaches.config
        job.settings.epochs = 2
        job.settings.batchSize = 4
        job.settings.validationFraction = 0.3
        job.settings.splitSeed = splitSeed
        return try job.run { _ in }
    }

    func testTrainHeadAndFullFinetuneValidateOnTheSameImagesAndReportChecksIt() throws {
        let images = try folderWithUnreadableFiles()
        let head = try trainHead(try extract(images), out: "head")
        XCTAssertEqual(head.split, Self.expectedValidation)
        XCTAssertEqual(head.trainRows, 12)

        var fineTune = FineTuneJob(imagesRoot: images, runDirectory: path("finetune"), weights: SampleCaches.weights)
        fineTune.config = SampleCaches.config
        fineTune.settings.epochs = 1
        fineTune.settings.batchSize = 4
        fineTune.settings.imageSize = 32
        fineTune.settings.validationFraction = 0.3
        fineTune.settings.seed = 5
        let tuned = try fineTune.run { _ in }
        XCTAssertEqual(tuned.split, Self.expectedValidation, "the training seed does not move the split")
        XCTAssertEqual(tuned.valImages, 6)
        XCTAssertEqual(tuned.failedImages, ["discs/broken_1.jpg", "stripes/broken.jpg"], "an unreadable validation image is reported too")

        let report = try Report(title: "t", runs: try ["head", "finetune"].map { try RunRecord(directory: path($0)) })
        XCTAssertTrue(report.markdown.contains("All runs validated on the same 6 images (hashed split, seed 0, fraction 0.3)."))

        _ = try trainHead(path("fc7.h5"), out: "head-seed1", splitSeed: 1)
        XCTAssertThrowsError(try Report(title: "t", runs: try ["head-seed1", "finetune"].map { try RunRecord(directory: path($0)) })) {
            XCTAssertTrue("\($0)".contains("head-seed1: "), "\($0)")
            XCTAssertTrue("\($0)".contains("(hashed split, seed 1, fraction 0.3; paths sha256"), "\($0)")
        }
    }

    /// evaluate scores the model's held-out rows by default, of the cache and of the folder alike, and
    /// says so; --split val, train and all work on a cache without val/.
    func testEvaluateDefaultsToTheHeldOutRowsOfTheModelsSplit() throws {
        let images = try folderWithUnreadableFiles()
        let cache = try extract(images)
        let summary = try trainHead(cache, out: "head")
        let model = path("head/model.h5")
        func evaluate(_ source: EvaluationJob.Source, split: String? = nil) throws -> EvaluationJob.Result {
            var job = EvaluationJob(modelPath: model, source: source)
            job.split = split
            return try job.run { _ in }
        }
        let held = try evaluate(.cache(cache))
        XCTAssertEqual(held.split, "val")
        XCTAssertEqual(held.metrics.count, 6)
        XCTAssertEqual(held.scored, "held-out validation rows of the split the model was trained with (hashed split, seed 0, fraction 0.3)")
        XCTAssertEqual(held.metrics.accuracy, summary.bestValAccuracy)
        XCTAssertEqual(held.metrics.confusion, summary.confusionMatrix)
        XCTAssertEqual(try evaluate(.cache(cache), split: "val").metrics.confusion, held.metrics.confusion)
        XCTAssertEqual(try evaluate(.cache(cache), split: "train").metrics.count, 12)
        XCTAssertEqual(try evaluate(.cache(cache), split: "all").metrics.count, 18)

        let fromImages = try evaluate(.images(images))
        XCTAssertEqual(fromImages.metrics.confusion, held.metrics.confusion)
        XCTAssertEqual(fromImages.failed.map(\.path), ["discs/broken_1.jpg"], "the unreadable validation image, no other")
    }

    /// A model validated on its folder's val/ cannot find its held-out rows in rows without val/: evaluate
    /// scores them all and says why, and refuses --split val.
    func testEvaluateSaysWhenTheModelsHeldOutRowsCannotBeFound() throws {
        let trained = try SyntheticCache.write(at: path("folders.h5"))
        var job = HeadTrainingJob(cachePath: trained, runDirectory: path("run"))
        job.config = SampleCaches.config
        job.settings.epochs = 1
        _ = try job.run { _ in }
        let flat = try SyntheticCache.write(at: path("flat.h5"), splits: .none)
        let all = try EvaluationJob(modelPath: path("run/model.h5"), source: .cache(flat)).run { _ in }
        XCTAssertEqual(all.split, "all")
        XCTAssertEqual(all.metrics.count, 36)
        XCTAssertTrue(all.scored.contains("has no val/ rows and the model validated on its own folder's val/"), all.scored)
        var val = EvaluationJob(modelPath: path("run/model.h5"), source: .cache(flat))
        val.split = "val"
        XCTAssertThrowsError(try val.run { _ in }) { XCTAssertTrue("\($0)".contains("use --split all"), "\($0)") }
    }
}
