@testable import Bottleneck
import Foundation
import XCTest
@testable import BottleneckKernels

/// Full fine-tuning: the conv and pool backward passes against finite differences and torch, one SGD step
/// of the narrow VGG16 against torch (Tests/Fixtures/finetune/make_finetune_fixtures.py), freezing, and
/// the job's resume, divergence and refusals on a tiny image folder at 32 px.
final class FineTuneTests: XCTestCase {
    // MARK: backward passes

    /// Convolution is linear in x, W and b, so central differences are exact but for Float rounding.
    /// Eight output channels make the input gradient (a convolution over them) take the Winograd path.
    func testConv2DBackwardMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 11)
        let x = randomTensor([2, 3, 5, 6], &generator)
        let weight = randomTensor([8, 3, 3, 3], &generator)
        let bias = randomTensor([8], &generator)
        let probe = randomTensor([2, 8, 5, 6], &generator)
        func objective(_ x: Tensor, _ weight: Tensor, _ bias: Tensor) -> Double {
            dot(Conv2D(weight: weight, bias: bias).forward(x), probe)
        }
        let conv = Conv2D(weight: weight, bias: bias)
        var gradWeight = Tensor(zeros: [])
        var gradBias = Tensor(zeros: [])
        conv.parameterGradients(input: x, gradOutput: probe, weight: &gradWeight, bias: &gradBias)
        let step: Float = 1e-2
        assertClose(conv.inputGradient(gradOutput: probe), numericalGradient(at: x, step: step) { objective($0, weight, bias) },
                    tolerance: 1e-3, "conv dx")
        assertClose(gradWeight, numericalGradient(at: weight, step: step) { objective(x, $0, bias) }, tolerance: 1e-3, "conv dW")
        assertClose(gradBias, numericalGradient(at: bias, step: step) { objective(x, weight, $0) }, tolerance: 1e-3, "conv db")
    }

    func testMaxPoolBackwardMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 12)
        // Distinct values, so no difference moves the maximum of a window.
        let x = Tensor(shape: [2, 2, 4, 6], data: (0..<96).map { Float($0) * 0.37 }.shuffled(using: &generator))
        let probe = randomTensor([2, 2, 2, 3], &generator)
        let pool = MaxPool2D()
        let numerical = numericalGradient(at: x, step: 1e-2) { dot(pool.forward($0), probe) }
        assertClose(pool.backward(input: x, gradOutput: probe), numerical, tolerance: 1e-4, "max pool dx")
    }

    /// torch's CPU kernel: ties go to the first maximum in row-major order, a NaN takes the gradient (the last NaN of its window).
    func testMaxPoolBackwardRoutesTiesAndNaNAsTorch() throws {
        let manifest = try Fixtures.json("finetune/manifest.json")["pool"] as! [String: [String: Any]]
        func load(_ name: String) throws -> Tensor {
            try Fixtures.float32("finetune/" + (manifest[name]!["file"] as! String), shape: manifest[name]!["shape"] as! [Int])
        }
        let gradInput = MaxPool2D().backward(input: try load("input"), gradOutput: try load("grad_output"))
        XCTAssertEqual(gradInput, try load("grad_input"))
    }

    /// The pool's backward through the ReLU below it is the two backwards one after the other, on a ReLU's output
    /// with zeros, ties and NaN, on sizes the windows do not cover (whose last row and column get no gradient).
    func testMaxPoolBackwardThroughReLUIsBothBackwards() {
        var generator = SeededGenerator(seed: 14)
        for (height, width) in [(4, 6), (5, 7), (3, 2)] {
            var x = randomTensor([2, 3, height, width], &generator)
            x.data[1] = .nan
            x.data[x.count - 1] = .nan
            ReLU.forward(&x)
            for pool in [MaxPool2D(), MaxPool2D(kernel: 3, stride: 1)] {
                let (outHeight, outWidth) = pool.outputSize(height: height, width: width)
                guard outHeight > 0, outWidth > 0 else { continue }
                let probe = randomTensor([2, 3, outHeight, outWidth], &generator)
                var expected = pool.backward(input: x, gradOutput: probe)
                ReLU.backward(output: x, gradOutput: &expected)
                let fused = pool.backward(input: x, gradOutput: probe, throughReLU: true)
                XCTAssertEqual(fused.data.map(\.bitPattern), expected.data.map(\.bitPattern),
                               "\(height)x\(width), kernel \(pool.kernel) stride \(pool.stride)")
            }
        }
    }

    /// A conv's input gradient through the ReLU below it is the two backwards one after the other, through Winograd
    /// and im2col, on sizes whose last tiles hang over the edge, with zeros and NaN in the ReLU's output.
    func testConvInputGradientThroughReLUIsBothBackwards() {
        var generator = SeededGenerator(seed: 15)
        for (height, width) in [(5, 7), (8, 8), (13, 6)] {
            var x = randomTensor([2, 9, height, width], &generator)
            x.data[3] = .nan
            ReLU.forward(&x)
            let conv = Conv2D(weight: randomTensor([10, 9, 3, 3], &generator), bias: randomTensor([10], &generator))
            let dy = randomTensor([2, 10, height, width], &generator)
            for algorithm in [Conv2D.Algorithm.winograd, .im2col] {
                Conv2D.$algorithm.withValue(algorithm) {
                    var expected = conv.inputGradient(gradOutput: dy)
                    ReLU.backward(output: x, gradOutput: &expected)
                    let fused = conv.inputGradient(gradOutput: dy, throughReLUWithOutput: x)
                    XCTAssertEqual(fused.data.map(\.bitPattern), expected.data.map(\.bitPattern), "\(height)x\(width), \(algorithm)")
                    XCTAssertTrue(fused.data.contains(0) && fused.data.contains { $0 != 0 }, "the mask keeps some and drops some")
                }
            }
        }
    }

    /// Windows overlap when the input is smaller than the output (1x1 -> 7x7) or does not divide it (5 -> 3).
    func testAdaptiveAvgPoolBackwardMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 13)
        for size in [1, 2, 5, 14] {
            let x = randomTensor([2, 3, size, size], &generator)
            let pool = AdaptiveAvgPool2D(outputSize: size == 5 ? 3 : 7)
            let probe = randomTensor([2, 3, pool.outputHeight, pool.outputWidth], &generator)
            let numerical = numericalGradient(at: x, step: 1e-2) { dot(pool.forward($0), probe) }
            assertClose(pool.backward(gradOutput: probe, inputShape: x.shape), numerical, tolerance: 1e-4, "avgpool \(size) dx")
        }
    }

    // MARK: one step against torch

    func testOneSGDStepMatchesTorch() throws {
        try checkOneStep(variant: "full", frozenThrough: -1)
    }

    /// Frozen through features.15: features.0–14 are untouched, and no gradient is made below conv4_1.
    func testFrozenStepMatchesTorchAndSkipsTheFrozenLayers() throws {
        let outcome = try checkOneStep(variant: "frozen", frozenThrough: 15)
        XCTAssertEqual(outcome.updatedPositions.min(), 17, "conv4_1 is the lowest layer that learns")
        XCTAssertFalse(outcome.inputGradientPositions.contains { $0 <= 17 }, "no input gradient at or below conv4_1")
    }

    @discardableResult
    private func checkOneStep(variant: String, frozenThrough: Int) throws -> FineTuneNetwork.StepOutcome {
        let manifest = try Fixtures.json("finetune/manifest.json")
        let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
        let loaded = try NetworkLoader.load(config: config, weights: .file(Fixtures.path("network/narrow_vgg16_legacy.pth")))
        var network = try FineTuneNetwork(loaded.network, dropout: 0, frozenThrough: frozenThrough)
        let before = Dictionary(uniqueKeysWithValues: network.stateDict.map { ($0.key, $0.tensor) })
        let input = try Fixtures.float32("network/input_64.f32", shape: [2, 3, 64, 64])
        var optimizer = SGD(momentum: manifest["momentum"] as! Double, weightDecay: manifest["weight_decay"] as! Double)
        let outcome = network.trainStep(images: input, labels: (manifest["labels"] as! [Int]).map(Int32.init), optimizer: &optimizer,
                                        learningRate: { _ in manifest["lr"] as! Double }) { _, _ in SeededGenerator(seed: 0) }
        XCTAssertEqual(outcome.loss.mean, manifest["\(variant)_loss"] as! Double, accuracy: 1e-4)
        let after = Dictionary(uniqueKeysWithValues: network.stateDict.map { ($0.key, $0.tensor) })
        for (key, entry) in manifest[variant] as! [String: [String: Any]] {
            let expected = try Fixtures.float32("finetune/" + (entry["file"] as! String), shape: entry["shape"] as! [Int])
            assertClose(after[key]!, expected, tolerance: 1e-4, "\(variant) \(key)")
            if expected == before[key]! {
                XCTAssertEqual(after[key]!, before[key]!, "\(key) is frozen: exactly unchanged")
            } else {
                // The step itself, not only the weights it moved (measured: weights 9e-7, steps 2.5e-6 relative).
                let update = Tensor(shape: expected.shape, data: zip(after[key]!.data, before[key]!.data).map { $0 - $1 })
                let expectedUpdate = Tensor(shape: expected.shape, data: zip(expected.data, before[key]!.data).map { $0 - $1 })
                assertClose(update, expectedUpdate, tolerance: 1e-4, "\(variant) \(key) update")
            }
        }
        return outcome
    }

    /// `--per-layer`: a profiled step times each phase of each layer that runs it, and nothing of the frozen layers'
    /// backward.
    func testStepProfileTimesThePhasesEachLayerRuns() throws {
        let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
        var network = try FineTuneNetwork(VGG.randomlyInitialized(config: config, seed: 0), dropout: 0.5, frozenThrough: 15)
        var generator = SeededGenerator(seed: 1)
        let images = Tensor(shape: [2, 3, 32, 32]) { values in
            for index in values.indices { values[index] = generator.nextNormal() }
        }
        var optimizer = SGD(momentum: 0.9)
        let profile = StepProfile(layers: config.layers.count)
        _ = network.trainStep(images: images, labels: [1, 2], optimizer: &optimizer, learningRate: { _ in 0.01 },
                              profile: profile) { _, _ in SeededGenerator(seed: 0) }
        for layer in config.layers {
            let seconds = profile.seconds[layer.position]
            let (forward, input, weight, update) = (seconds[0], seconds[1], seconds[2], seconds[3])
            // A conv's ReLU runs inside the conv's forward.
            var fusedReLU = false
            if layer.kind == .relu, case .conv = config.layers[layer.position - 1].kind { fusedReLU = true }
            XCTAssertEqual(forward > 0, !fusedReLU, layer.name)
            let learns = layer.position > 15 && layer.parameterPrefix != nil
            XCTAssertEqual(weight > 0, learns, layer.name)
            XCTAssertEqual(update > 0, learns, layer.name)
            // conv4_1 (position 17) is the lowest that learns: no input gradient at or below it.
            XCTAssertEqual(input > 0, layer.position > 17, layer.name)
        }
    }

    // MARK: the job

    func testResumedRunEndsEqualToAnUninterruptedOne() throws {
        let images = try tinyImageFolder()
        let uninterrupted = try runJob(images: images, epochs: 2)
        let interrupted = try temporaryDirectory()
        var first = job(images: images, out: interrupted, epochs: 2)
        first.interruptAfterEpochs = 1
        XCTAssertThrowsError(try first.run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("interrupted"), "\(error)")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: interrupted + "/checkpoint.h5"))
        var second = job(images: images, out: interrupted, epochs: 2)
        second.resume = true
        _ = try second.run { _ in }
        let expected = try StateDictFile.open(path: uninterrupted + "/model.h5")
        let actual = try StateDictFile.open(path: interrupted + "/model.h5")
        XCTAssertEqual(actual.entries.map(\.key), expected.entries.map(\.key))
        for entry in expected.entries {
            XCTAssertEqual(try actual.tensor(entry.key), try expected.tensor(entry.key), entry.key)
        }
        func lossColumns(_ run: String) throws -> [String] {
            try String(contentsOfFile: run + "/metrics.csv", encoding: .utf8).split(separator: "\n")
                .map { $0.split(separator: ",").prefix(5).joined(separator: ",") }
        }
        XCTAssertEqual(try lossColumns(interrupted), try lossColumns(uninterrupted))
        XCTAssertEqual(try lossColumns(uninterrupted).count, 3)
        XCTAssertFalse(FileManager.default.fileExists(atPath: interrupted + "/checkpoint.h5"), "a finished run drops its checkpoint")
        let model = try TrainedModel(contentsOf: uninterrupted + "/model.h5")
        XCTAssertEqual(model.mode, .finetune)
        XCTAssertNoThrow(try model.head())
        XCTAssertNoThrow(try model.prefix())
    }

    /// The two-stage recipe: extract, train-head, then fine-tune from that head with the backbone at rate 0,
    /// which must leave the backbone exactly as loaded and start fc8 from the head.
    func testInitHeadStartsFromATrainHeadRun() throws {
        let images = try tinyImageFolder()
        let headRun = try trainedHead(on: images, epochs: 2)

        let out = try temporaryDirectory()
        var fineTune = job(images: images, out: out, epochs: 1)
        fineTune.initialHead = headRun + "/model.h5"
        fineTune.settings.backboneLearningRateMultiplier = 0
        _ = try fineTune.run { _ in }
        let tuned = try StateDictFile.open(path: out + "/model.h5")
        let backbone = VGG.randomlyInitialized(config: Self.config, through: try CutPoint("fc7", in: Self.config), seed: 1)
        guard case .conv(let conv1) = backbone.modules[0] else { return XCTFail("features.0 is a conv") }
        XCTAssertEqual(try tuned.tensor("features.0.weight"), conv1.weight, "the backbone learns at rate 0")
        let head = try StateDictFile.open(path: headRun + "/model.h5")
        let (start, end) = (try head.tensor("classifier.6.weight"), try tuned.tensor("classifier.6.weight"))
        XCTAssertNotEqual(start, end, "the head trained on")
        XCTAssertLessThan(end.relativeDifference(to: start), 0.5, "from the train-head model, not a fresh layer")
        let config = try String(contentsOfFile: out + "/config.json", encoding: .utf8)
        XCTAssertTrue(config.contains("\"initial_head\""), config)
    }

    func testDivergingLossStopsAndNamesTheStep() throws {
        let images = try tinyImageFolder()
        let out = try temporaryDirectory()
        var diverging = job(images: images, out: out, epochs: 2)
        diverging.settings.learningRate = 1e12
        XCTAssertThrowsError(try diverging.run { _ in }) { error in
            guard let error = error as? TrainingError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.kind, .diverged)
            XCTAssertTrue(error.description.contains("epoch 1, step"), error.description)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/summary.json"))
    }

    /// One step an epoch (a batch holds all 12 training images) at a rate that blows the parameters up: the step's
    /// loss was finite, the validation loss after it is not. That ends the run as divergence; no model.h5 holds it.
    func testNonFiniteValidationLossStopsWithoutSavingTheModel() throws {
        let images = try tinyImageFolder()
        let out = try temporaryDirectory()
        var diverging = job(images: images, out: out, epochs: 2)
        diverging.settings.batchSize = 12
        diverging.settings.learningRate = 1e12
        XCTAssertThrowsError(try diverging.run { _ in }) { error in
            guard let error = error as? TrainingError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.kind, .diverged)
            XCTAssertTrue(error.description.contains("epoch 1: the validation loss became"), error.description)
            XCTAssertTrue(error.description.contains("no checkpoint was written"), error.description)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/model.h5"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/checkpoint.h5"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/summary.json"))
    }

    /// --overwrite over an interrupted run, then a stop before the first epoch ends: no checkpoint of the
    /// replaced run is left for a --resume to continue under the new run's config.json.
    func testOverwriteDropsTheReplacedRunsCheckpoint() throws {
        let images = try tinyImageFolder()
        let out = try temporaryDirectory()
        var interrupted = job(images: images, out: out, epochs: 2)
        interrupted.interruptAfterEpochs = 1
        XCTAssertThrowsError(try interrupted.run { _ in })
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/checkpoint.h5"))
        var diverging = job(images: images, out: out, epochs: 2)
        diverging.overwrite = true
        diverging.settings.learningRate = 1e12
        XCTAssertThrowsError(try diverging.run { _ in }) { XCTAssertTrue("\($0)".contains("no checkpoint was written"), "\($0)") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/checkpoint.h5"))
    }

    func testRefusesBadLayersHeadsAndBatchesTooLargeForMemory() throws {
        let images = try tinyImageFolder()
        var unknownLayer = job(images: images, out: try temporaryDirectory(), epochs: 1)
        unknownLayer.settings.freezeThrough = "conv9_9"
        XCTAssertThrowsError(try unknownLayer.run { _ in }) { XCTAssertTrue("\($0)".contains("unknown layer 'conv9_9'"), "\($0)") }

        var huge = job(images: images, out: try temporaryDirectory(), epochs: 1)
        huge.memoryLimitBytes = 50_000_000
        huge.settings.batchSize = 4096
        XCTAssertThrowsError(try huge.run { _ in }) { XCTAssertTrue("\($0)".contains("is available"), "\($0)") }

        // A head trained for other classes.
        let config = Self.config.with(classes: 2)
        let headPath = try temporaryDirectory() + "/model.h5"
        let head = HeadNetwork.newLinear(inFeatures: config.hidden, outFeatures: 2, seed: 0)
        try TrainedModel(mode: .head, config: config, classes: ["a", "b"], cut: try CutPoint("fc7", in: config), cutName: "fc7",
                         weights: .random(seed: 1), preprocessing: Preprocessing(resize: 37, crop: 32), trainableLayers: ["classifier.6"],
                         dropout: 0.5, split: nil, stateDict: [("classifier.6.weight", head.weight), ("classifier.6.bias", head.bias)])
            .save(to: headPath)
        var otherClasses = job(images: images, out: try temporaryDirectory(), epochs: 1)
        otherClasses.initialHead = headPath
        XCTAssertThrowsError(try otherClasses.run { _ in }) { XCTAssertTrue("\($0)".contains("trained on classes a, b"), "\($0)") }
    }

    /// The files both jobs write keep their keys: summary.json, config.json (but for the settings, which their
    /// own types own) and metrics.csv's header, as they were before the two jobs shared a summary and an epoch type,
    /// plus summary.json's backbone_weights.
    func testRunFilesKeepTheirKeys() throws {
        let images = try tinyImageFolder()
        let headRun = try trainedHead(on: images, epochs: 1)
        let fineTuneRun = try temporaryDirectory()
        var fineTune = job(images: images, out: fineTuneRun, epochs: 1)
        fineTune.settings.freezeThrough = "conv3_3"
        _ = try fineTune.run { _ in }

        func keyPaths(_ file: String) throws -> [String] {
            func walk(_ value: Any, _ prefix: String) -> Set<String> {
                if let object = value as? [String: Any] {
                    return object.reduce(into: Set<String>()) { paths, entry in
                        let path = prefix + entry.key
                        paths.insert(path)
                        if path != "settings" { paths.formUnion(walk(entry.value, path + ".")) }
                    }
                }
                if let array = value as? [Any] { return array.reduce(into: Set<String>()) { $0.formUnion(walk($1, prefix + "[].")) } }
                return []
            }
            return walk(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file))), "").sorted()
        }
        XCTAssertEqual(try keyPaths(headRun + "/summary.json"), Self.headSummaryKeys)
        XCTAssertEqual(try keyPaths(fineTuneRun + "/summary.json"), Self.fineTuneSummaryKeys)
        XCTAssertEqual(try keyPaths(headRun + "/config.json"), Self.headConfigKeys)
        XCTAssertEqual(try keyPaths(fineTuneRun + "/config.json"), Self.fineTuneConfigKeys)
        for run in [headRun, fineTuneRun] {
            let header = try String(contentsOfFile: run + "/metrics.csv", encoding: .utf8).split(separator: "\n").first
            XCTAssertEqual(header, "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds")
        }
    }

    private static let headSummaryKeys = [
        "backbone_weights", "backbone_weights.fingerprint", "backbone_weights.source",
        "best_epoch", "best_val_accuracy", "best_val_loss", "chance_accuracy", "classes", "confusion_matrix",
        "data_loading", "epochs_run", "majority_class_accuracy", "model", "per_class", "per_class.[].f1",
        "per_class.[].name", "per_class.[].precision", "per_class.[].recall", "per_class.[].support",
        "samples_per_second", "split", "split.rule", "split.rule.seed", "split.rule.source",
        "split.rule.validation_fraction", "split.validation_paths_sha256", "split.validation_rows", "stopped_early",
        "train_rows", "val_rows", "wall_seconds",
    ]
    private static let fineTuneSummaryKeys = [
        "backbone_weights", "backbone_weights.fingerprint", "backbone_weights.source",
        "best_epoch", "best_val_accuracy", "best_val_loss", "chance_accuracy", "classes", "confusion_matrix",
        "epochs_run", "failed_images", "frozen_through", "model", "peak_resident_bytes", "per_class", "per_class.[].f1",
        "per_class.[].name", "per_class.[].precision", "per_class.[].recall", "per_class.[].support", "split",
        "split.rule", "split.rule.seed", "split.rule.source", "split.rule.validation_fraction",
        "split.validation_paths_sha256", "split.validation_rows", "train_images", "train_images_per_second",
        "trainable_layers", "trainable_parameters", "val_images", "wall_seconds",
    ]
    private static let headConfigKeys = [
        "cache", "cache.complete", "cache.fingerprint", "cache.fingerprint.activation_shape",
        "cache.fingerprint.backbone", "cache.fingerprint.image_root", "cache.fingerprint.layer",
        "cache.fingerprint.layer_path", "cache.fingerprint.preprocess", "cache.fingerprint.schema",
        "cache.fingerprint.tool_version", "cache.fingerprint.views", "cache.fingerprint.weights_sha256", "cache.fingerprint.weights_source",
        "cache.path", "cache.rows", "classes", "command", "created", "head", "head.cut_layer", "head.cut_layer_path",
        "head.layers", "head.new_layer_init", "head.precomputed_layers", "head.trainable_layers", "loading",
        "loading.mode", "loading.row_floats", "loading.window_rows", "settings", "split", "split.rule", "split.rule.seed",
        "split.rule.source", "split.rule.validation_fraction", "split.train_rows", "split.train_rows_per_class",
        "split.train_rows_per_class.checkerboard", "split.train_rows_per_class.discs",
        "split.train_rows_per_class.stripes", "split.val_rows", "split.val_rows_per_class",
        "split.val_rows_per_class.checkerboard", "split.val_rows_per_class.discs", "split.val_rows_per_class.stripes",
        "tool_version",
    ]
    private static let fineTuneConfigKeys = [
        "augmentation", "augmentation.flip_probability", "augmentation.mean", "augmentation.ratio", "augmentation.scale",
        "augmentation.size", "augmentation.std", "classes", "command", "created", "estimated_step_bytes", "images",
        "network", "network.backbone", "network.frozen_through", "network.frozen_through_path", "network.head_layers",
        "network.trainable_layers", "network.trainable_parameters", "network.weights", "network.weights.fingerprint",
        "network.weights.source", "preprocessing", "preprocessing.crop", "preprocessing.interpolation",
        "preprocessing.mean", "preprocessing.resize", "preprocessing.std", "settings", "split", "split.seed",
        "split.source", "split.validation_fraction", "tool_version", "train_images", "val_images",
    ]

    // MARK: helpers

    static let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)

    func job(images: String, out: String, epochs: Int) -> FineTuneJob {
        var job = FineTuneJob(imagesRoot: images, runDirectory: out, weights: .random(seed: 1))
        job.config = Self.config
        job.settings.epochs = epochs
        job.settings.batchSize = 4
        job.settings.imageSize = 32
        job.settings.learningRate = 0.01
        return job
    }

    private func runJob(images: String, epochs: Int) throws -> String {
        let out = try temporaryDirectory()
        _ = try job(images: images, out: out, epochs: epochs).run { _ in }
        return out
    }

    /// 4 training and 2 validation images of each of the sample dataset's 3 classes.
    func tinyImageFolder() throws -> String {
        let root = try temporaryDirectory()
        let sample = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("data/shapes")
        let manager = FileManager.default
        for (split, count) in [("train", 4), ("val", 2)] {
            for name in try manager.contentsOfDirectory(atPath: sample.appendingPathComponent(split).path).sorted() {
                let source = sample.appendingPathComponent("\(split)/\(name)")
                let target = "\(root)/\(split)/\(name)"
                try manager.createDirectory(atPath: target, withIntermediateDirectories: true)
                for file in try manager.contentsOfDirectory(atPath: source.path).sorted().prefix(count) {
                    try manager.copyItem(atPath: source.appendingPathComponent(file).path, toPath: "\(target)/\(file)")
                }
            }
        }
        return root
    }

    func temporaryDirectory() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("finetune-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.path
    }

    /// A train-head run on the fc7 cache of `images` (random weights, seed 1): what fine-tuning starts from or sits beside.
    private func trainedHead(on images: String, epochs: Int) throws -> String {
        let cache = try temporaryDirectory() + "/fc7.h5"
        var extraction = ExtractionJob(imagesRoot: images, outputPath: cache, weights: .random(seed: 1))
        extraction.config = Self.config
        extraction.preprocessing = Preprocessing(resize: 37, crop: 32)
        _ = try extraction.run { _ in }
        let headRun = try temporaryDirectory()
        var headTraining = HeadTrainingJob(cachePath: cache, runDirectory: headRun)
        headTraining.config = Self.config
        headTraining.settings.epochs = epochs
        _ = try headTraining.run { _ in }
        return headRun
    }
}

private extension VGGConfig {
    func with(classes: Int) -> VGGConfig {
        var copy = self
        copy.classes = classes
        return copy
    }
}
