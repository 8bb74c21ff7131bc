import Foundation
import XCTest
@testable import Bottleneck
@testable import BottleneckCLI
@testable import BottleneckKernels

/// evaluate and predict on models trained by train-head (and on a whole-network model, as full
/// fine-tuning writes them): from caches and from images, and their refusals.
final class EvaluatePredictTests: FolderTestCase {
    /// A head trained above pool5 on the sample subset; returns its model.h5.
    private func trainedModel(cache: String = SampleCaches.shared.pool5Subset, out: String = "run") throws -> String {
        var job = HeadTrainingJob(cachePath: cache, runDirectory: path(out))
        job.config = SampleCaches.config
        job.settings.epochs = 5
        job.settings.batchSize = 4
        job.settings.optimizer = .adam
        _ = try job.run { _ in }
        return path("\(out)/model.h5")
    }

    func testEvaluatingTheCacheGivesTheRunsValidationFigures() throws {
        let model = try trainedModel()
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let summary = try decoder.decode(TrainingSummary.self, from: Data(contentsOf: URL(fileURLWithPath: path("run/summary.json"))))
        let result = try EvaluationJob(modelPath: model, source: .cache(SampleCaches.shared.pool5Subset)).run { _ in }
        XCTAssertEqual(result.split, "val", "no test split: val")
        XCTAssertEqual(result.metrics.count, 6)
        XCTAssertEqual(result.metrics.accuracy, summary.bestValAccuracy)
        XCTAssertEqual(result.metrics.confusion, summary.confusionMatrix)
        XCTAssertTrue(result.metrics.report.contains("confusion matrix"))
        var all = EvaluationJob(modelPath: model, source: .cache(SampleCaches.shared.pool5Subset))
        all.split = "all"
        XCTAssertEqual(try all.run { _ in }.metrics.count, 18)
    }

    /// From the images: the frozen network with the weights the model records, then the head; the same
    /// predictions as from the cache the model was trained on.
    func testEvaluatingImagesEqualsEvaluatingTheirCache() throws {
        let model = try trainedModel()
        let fromCache = try EvaluationJob(modelPath: model, source: .cache(SampleCaches.shared.pool5Subset)).run { _ in }.metrics
        var job = EvaluationJob(modelPath: model, source: .images(SampleCaches.shared.subsetRoot))
        job.batchSize = 4
        let fromImages = try job.run { _ in }.metrics
        XCTAssertEqual(fromImages.confusion, fromCache.confusion)
        XCTAssertEqual(fromImages.meanLoss, fromCache.meanLoss, accuracy: 1e-5 * fromCache.meanLoss)
    }

    func testEvaluateRefusesCachesAndFoldersTheModelDoesNotFit() throws {
        let model = try trainedModel()
        func assertRefused(_ source: EvaluationJob.Source, _ expected: String, line: UInt = #line) {
            XCTAssertThrowsError(try EvaluationJob(modelPath: model, source: source).run { _ in }, line: line) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(error)", line: line)
            }
        }
        assertRefused(.cache(SampleCaches.shared.fc7Subset), "layer fc7 (classifier.4), not pool5 (features.30)")
        let otherWeights = try SyntheticCache.write(at: path("other.h5"))
        assertRefused(.cache(otherWeights), "weights random-seed-0")
        let zoo = folder.appendingPathComponent("zoo/val/giraffes")
        try FileManager.default.createDirectory(at: zoo, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("images/rgb_97x131.png"), toPath: zoo.appendingPathComponent("g.png").path)
        assertRefused(.images(path("zoo")), "class 'giraffes', which the model does not know")
        XCTAssertThrowsError(try EvaluationJob(modelPath: Fixtures.path("network/narrow_vgg16.h5"),
                                               source: .cache(SampleCaches.shared.pool5Subset))
            .run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("is not a bottleneck model"), "\(error)")
        }
    }

    /// `--model RUN_DIR` reads the run's model.h5; a folder without one is named with what it lacks.
    func testAModelIsItsFileOrItsRunDirectory() throws {
        let model = try trainedModel()
        let fromFile = try EvaluationJob(modelPath: model, source: .cache(SampleCaches.shared.pool5Subset)).run { _ in }
        let fromFolder = try EvaluationJob(modelPath: path("run"), source: .cache(SampleCaches.shared.pool5Subset)).run { _ in }
        XCTAssertEqual(fromFolder.metrics.confusion, fromFile.metrics.confusion)
        try FileManager.default.createDirectory(atPath: path("empty-run"), withIntermediateDirectories: true)
        XCTAssertThrowsError(try PredictionJob(modelPath: path("empty-run"), inputs: [SampleCaches.shared.subsetRoot]).run { _ in }) {
            XCTAssertEqual("\($0)", "\(self.path("empty-run")) is a folder without model.h5: give a model file or the run directory "
                           + "of a finished train-head or full-finetune run")
        }
    }

    /// `inspect` tells a model from weights and says what it is, with the validation accuracy of its run.
    func testInspectionDescribesAModel() throws {
        let model = try trainedModel()
        let inspection = try XCTUnwrap(try ModelInspection(path: path("run")))
        XCTAssertEqual(inspection.path, model)
        XCTAssertEqual(inspection.mode, "head")
        XCTAssertEqual(inspection.cutLayer, "pool5")
        XCTAssertEqual(inspection.imageSize, SampleCaches.preprocessing.crop)
        XCTAssertEqual(inspection.classes, try TrainedModel(contentsOf: model).classes)
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let summary = try decoder.decode(TrainingSummary.self, from: Data(contentsOf: URL(fileURLWithPath: path("run/summary.json"))))
        XCTAssertEqual(inspection.bestValAccuracy, summary.bestValAccuracy)
        for expected in ["model: \(model) (a head trained by train-head on cached features)", "mode: head",
                         "cut layer: pool5 (features.30)", "trained on weights: sha256 ",
                         String(format: "validation accuracy: %.4f (best epoch %d", summary.bestValAccuracy, summary.bestEpoch)] {
            XCTAssertTrue(inspection.report.contains(expected), inspection.report)
        }
        XCTAssertNil(try ModelInspection(path: Fixtures.path("network/narrow_vgg16_legacy.pth")), "weights are not a model")
        try FileManager.default.copyItem(atPath: model, toPath: path("alone.h5"))
        XCTAssertTrue(try XCTUnwrap(try ModelInspection(path: path("alone.h5"))).report
            .contains("validation accuracy: not recorded (no summary.json beside the model)"))
    }

    /// As extract does: an unreadable image is skipped and listed, and the command fails only when none could be
    /// read, or with --strict.
    func testEvaluateAndPredictSkipUnreadableImages() throws {
        _ = try trainedModel()
        try FileManager.default.copyItem(atPath: SampleCaches.shared.subsetRoot, toPath: path("images"))
        let classFolder = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: path("images/val")).sorted().first)
        try FileManager.default.copyItem(atPath: Fixtures.path("images/bad/truncated.jpg"),
                                         toPath: path("images/val/\(classFolder)/bad.jpg"))
        let result = try EvaluationJob(modelPath: path("run"), source: .images(path("images"))).run { _ in }
        XCTAssertEqual(result.metrics.count, 6)
        XCTAssertEqual(result.failed.map(\.path), ["val/\(classFolder)/bad.jpg"])

        XCTAssertNoThrow(try Evaluate.parse(["--model", path("run"), "--images", path("images"), "--format", "json"]).run())
        XCTAssertThrowsError(try Evaluate.parse(["--model", path("run"), "--images", path("images"), "--strict"]).run()) { error in
            XCTAssertEqual(BottleneckCommand.message(for: error), "1 of 7 images could not be read (--strict)")
        }
        let bad = path("images/val/\(classFolder)/bad.jpg")
        XCTAssertNoThrow(try Predict.parse(["--model", path("run"), path("images/val")]).run())
        XCTAssertThrowsError(try Predict.parse(["--model", path("run"), "--strict", path("images/val")]).run()) { error in
            XCTAssertEqual(BottleneckCommand.message(for: error), "1 of 7 images could not be read (--strict)")
        }
        XCTAssertThrowsError(try Predict.parse(["--model", path("run"), bad]).run()) { error in
            XCTAssertEqual(BottleneckCommand.message(for: error), "no image could be read (1 failed)")
        }
    }

    func testPredictRanksClassesAsTheHeadDoes() throws {
        let model = try trainedModel()
        let trained = try TrainedModel(contentsOf: model)
        let cache = try FeatureCacheReader(path: SampleCaches.shared.pool5Subset)
        let valRows = cache.splits.indices.filter { cache.splits[$0] == .val }
        let expected = SoftmaxCrossEntropy.probabilities(try trained.head().forward(try cache.readRows(at: valRows)))

        let broken = path("broken.jpg")
        try FileManager.default.copyItem(atPath: Fixtures.path("images/bad/truncated.jpg"), toPath: broken)
        var job = PredictionJob(modelPath: model, inputs: [SampleCaches.shared.subsetRoot + "/val", broken])
        job.topK = 2
        job.batchSize = 4
        var reported: [PredictionJob.Prediction] = []
        let predictions = try job.run { reported.append($0) }
        XCTAssertEqual(reported, predictions)
        XCTAssertEqual(predictions.count, 7, "the folder's 6 images, then the broken one")
        for (index, row) in valRows.enumerated() {
            let prediction = predictions[index]
            XCTAssertTrue(prediction.path.hasSuffix(cache.paths[row].dropFirst("val".count)), "\(prediction.path) vs \(cache.paths[row])")
            XCTAssertEqual(prediction.predictions.count, 2)
            let probabilities = expected.data[(index * 3)..<(index * 3 + 3)]
            let best = probabilities.indices.max { probabilities[$0] < probabilities[$1] }! - index * 3
            XCTAssertEqual(prediction.predictions[0].className, trained.classes[best])
            XCTAssertEqual(prediction.predictions[0].probability, Double(probabilities.max()!), accuracy: 1e-5)
            XCTAssertGreaterThanOrEqual(prediction.predictions[0].probability, prediction.predictions[1].probability)
        }
        XCTAssertEqual(predictions.last?.path, broken)
        XCTAssertTrue(predictions.last?.predictions.isEmpty ?? false)
        XCTAssertNotNil(predictions.last?.error)
    }

    /// The head only makes sense after the prefix it was trained behind: other weights are refused, a
    /// missing recorded file asks for --weights, and the same file under another path is accepted.
    func testPredictNeedsTheBackboneWeightsTheModelWasTrainedOn() throws {
        let weightsCopy = path("narrow.pth")
        try FileManager.default.copyItem(atPath: Fixtures.path("network/narrow_vgg16_legacy.pth"), toPath: weightsCopy)
        var extraction = ExtractionJob(imagesRoot: SampleCaches.shared.subsetRoot, outputPath: path("cache.h5"),
                                       weights: .file(weightsCopy))
        extraction.config = SampleCaches.config
        extraction.preprocessing = SampleCaches.preprocessing
        extraction.layer = "fc7"
        _ = try extraction.run { _ in }
        let model = try trainedModel(cache: path("cache.h5"))
        let image = SampleCaches.shared.subsetRoot + "/val/discs/" + (try FileManager.default.contentsOfDirectory(
            atPath: SampleCaches.shared.subsetRoot + "/val/discs").sorted()[0])

        var wrong = PredictionJob(modelPath: model, inputs: [image])
        wrong.weights = .random(seed: 5)
        XCTAssertThrowsError(try wrong.run { _ in }) { error in
            XCTAssertEqual((error as? TrainingError)?.kind, .mismatch, "\(error)")
            XCTAssertTrue("\(error)".contains("random-seed-5"), "\(error)")
        }
        let recorded = try PredictionJob(modelPath: model, inputs: [image]).run { _ in }
        try FileManager.default.removeItem(atPath: weightsCopy)
        XCTAssertThrowsError(try PredictionJob(modelPath: model, inputs: [image]).run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("are not there; pass --weights"), "\(error)")
        }
        var elsewhere = PredictionJob(modelPath: model, inputs: [image])
        elsewhere.weights = SampleCaches.weights
        XCTAssertEqual(try elsewhere.run { _ in }, recorded)
    }

    /// A model holding the whole state dict (what full fine-tuning writes) needs no weights file: its
    /// predictions are the whole network's softmax.
    func testWholeNetworkModelsPredictWithoutAWeightsFile() throws {
        var config = SampleCaches.config
        config.classes = 3
        let network = VGG.randomlyInitialized(config: config, seed: 8)
        let stateDict = config.stateDictShapes.map { entry -> (key: String, tensor: Tensor) in
            let position = config.layers.first { entry.key.hasPrefix($0.path + ".") }!.position
            switch network.modules[position] {
            case .conv(let conv): return (entry.key, entry.key.hasSuffix(".weight") ? conv.weight : conv.bias)
            case .linear(let linear): return (entry.key, entry.key.hasSuffix(".weight") ? linear.weight : linear.bias)
            default: preconditionFailure("parameters belong to convs and linears")
            }
        }
        let model = TrainedModel(mode: .finetune, config: config, classes: ["a", "b", "c"], cut: try CutPoint("fc7", in: config),
                                 cutName: "fc7", weights: .random(seed: 8), preprocessing: SampleCaches.preprocessing,
                                 trainableLayers: config.layers.compactMap(\.parameterPrefix), dropout: 0.5,
                                 split: .init(source: .hashed, seed: 3, validationFraction: 0.25), stateDict: stateDict)
        try model.save(to: path("whole.h5"))
        let reloaded = try TrainedModel(contentsOf: path("whole.h5"))
        XCTAssertEqual(reloaded.split, model.split)
        XCTAssertEqual(reloaded.stateDict.map(\.key), config.stateDictShapes.map(\.key), "torchvision's order")

        let imagePath = Fixtures.path("images/rgb_97x131.png")
        var job = PredictionJob(modelPath: path("whole.h5"), inputs: [imagePath])
        job.topK = 3
        let prediction = try XCTUnwrap(try job.run { _ in }.first)
        let image = SampleCaches.preprocessing.tensor(from: try ImageDecoder.decode(path: imagePath))
        let logits = try network.forward(image.reshaped([1] + image.shape), through: try CutPoint("logits", in: config))
        let probabilities = SoftmaxCrossEntropy.probabilities(logits).data
        for ranked in prediction.predictions {
            XCTAssertEqual(ranked.probability, Double(probabilities[["a", "b", "c"].firstIndex(of: ranked.className)!]), accuracy: 1e-5)
        }
    }
}
