import Foundation
import XCTest
@testable import Bottleneck

/// Every result says which backbone weights it came from, and a random backbone is said out loud: extract's
/// summary, train-head's and full-finetune's summary.json, evaluate's result.
final class RandomWeightsNoteTests: FolderTestCase {
    func testExtractionFromRandomWeightsCarriesTheNote() throws {
        var job = ExtractionJob(imagesRoot: SampleCaches.shared.subsetRoot, outputPath: path("random.h5"), weights: .random(seed: 3))
        job.config = SampleCaches.config
        job.preprocessing = SampleCaches.preprocessing
        job.layer = "pool5"
        let summary = try job.run { _ in }
        XCTAssertEqual(summary.weights, .random(seed: 3))
        let note = try XCTUnwrap(summary.weights?.randomWeightsNote)
        XCTAssertTrue(note.contains("RANDOM backbone weights (random-seed-3)"), note)
        XCTAssertTrue(note.contains(WeightsChoice.downloadCommand), note)
    }

    func testPretrainedWeightsCarryNoNote() throws {
        var job = HeadTrainingJob(cachePath: SampleCaches.shared.pool5Subset, runDirectory: path("run"))
        job.config = SampleCaches.config
        job.settings.epochs = 2
        let summary = try job.run { _ in }
        let weights = try XCTUnwrap(summary.backboneWeights)
        XCTAssertTrue(weights.isPretrained)
        XCTAssertTrue(weights.source.hasSuffix("narrow_vgg16_legacy.pth"), weights.source)
        XCTAssertNil(weights.randomWeightsNote)
        let evaluation = try EvaluationJob(modelPath: path("run/model.h5"), source: .cache(SampleCaches.shared.pool5Subset)).run { _ in }
        XCTAssertEqual(evaluation.weights, weights)
    }

    /// A head on a cache of random features: its summary.json (what report reads) and evaluate both say so.
    func testHeadOnRandomFeaturesRecordsItsWeights() throws {
        let cache = try SyntheticCache.write(at: path("synthetic.h5"), weights: .random(seed: 5))
        var job = HeadTrainingJob(cachePath: cache, runDirectory: path("run"))
        job.config = SampleCaches.config
        job.settings.epochs = 2
        _ = try job.run { _ in }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let written = try decoder.decode(TrainingSummary.self, from: Data(contentsOf: URL(fileURLWithPath: path("run/summary.json"))))
        XCTAssertEqual(written.backboneWeights, .random(seed: 5))
        let evaluation = try EvaluationJob(modelPath: path("run/model.h5"), source: .cache(cache)).run { _ in }
        XCTAssertEqual(evaluation.weights.randomWeightsNote, WeightsIdentity.random(seed: 5).randomWeightsNote)
        XCTAssertNotNil(evaluation.weights.randomWeightsNote)
    }
}
