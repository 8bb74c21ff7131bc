import Foundation
import XCTest
@testable import Bottleneck
@testable import BottleneckKernels

/// train-head: cached training equals the frozen network trained from the images, it beats chance on
/// the sample data, the run directory, determinism, early stopping, splits, streaming, and bad input.
final class HeadTrainingTests: FolderTestCase {
    private func job(_ cache: String, out: String = "run", config: VGGConfig = SampleCaches.config,
                     configure: (inout HeadTrainingSettings) -> Void = { _ in }) -> HeadTrainingJob {
        var job = HeadTrainingJob(cachePath: cache, runDirectory: path(out))
        job.config = config
        job.settings.epochs = 3
        job.settings.batchSize = 8
        configure(&job.settings)
        return job
    }

    // MARK: cached training = the frozen network in train mode from the images

    /// fc7 cut: the cache holds the network's fc7 (pre-dropout, after its ReLU) of each image; training
    /// the head on it gives bit for bit the fc8 that torchvision-style training gives when every step
    /// runs the frozen network on the batch's images, drops with the same masks and trains only fc8.
    /// (Extraction at batch 1 and the reference image by image make every gemm the same shape, hence
    /// the same rounding.)
    func testCachedTrainingEqualsFrozenNetworkTrainingFromImagesAtFC7() throws {
        try assertCachedTrainingEqualsUncached(cache: SampleCaches.shared.fc7Subset, referenceCut: "fc7", tolerance: 0)
    }

    /// pool5 cut: the head is avgpool → fc6 → relu → drop6 → fc7 → relu → drop7 → fc8, two dropouts in
    /// train mode over frozen pretrained layers; against the network run from the images through relu6
    /// and the classifier written out layer by layer. fc6 runs once per row on all rows at once in the
    /// cached path and per image in the reference: the gemm shapes differ, so the last bits may.
    func testCachedTrainingEqualsFrozenNetworkTrainingFromImagesAtPool5() throws {
        try assertCachedTrainingEqualsUncached(cache: SampleCaches.shared.pool5Subset, referenceCut: "fc6", tolerance: 1e-5)
    }

    /// Cached augmented views (`extract --views 2`): training on them gives bit for bit the fc8 that training the
    /// frozen network gives when each epoch runs it on the RandomResizedCrop + flip that (path, view) draws, the
    /// view chosen per (seed, epoch, image).
    func testTrainingOnCachedViewsEqualsFrozenNetworkTrainingOnTheSameCrops() throws {
        try assertCachedTrainingEqualsUncached(cache: SampleCaches.shared.fc7SubsetViews, referenceCut: "fc7", tolerance: 0)
    }

    /// `--views none` trains on the eval views alone: the model of the same cache made without views.
    func testViewsNoneTrainsOnTheEvalViews() throws {
        var plain = job(SampleCaches.shared.fc7Subset, out: "plain")
        plain.weights = SampleCaches.weights
        _ = try plain.run { _ in }
        var evalOnly = job(SampleCaches.shared.fc7SubsetViews, out: "eval-only") { $0.views = .evalOnly }
        evalOnly.weights = SampleCaches.weights
        _ = try evalOnly.run { _ in }
        var augmented = job(SampleCaches.shared.fc7SubsetViews, out: "augmented")
        augmented.weights = SampleCaches.weights
        _ = try augmented.run { _ in }
        let fc8 = { (run: String) in
            try TrainedModel(contentsOf: self.path(run + "/model.h5")).stateDict.first { $0.key == "classifier.6.weight" }!.tensor
        }
        XCTAssertEqual(try fc8("eval-only"), try fc8("plain"))
        XCTAssertNotEqual(try fc8("augmented"), try fc8("plain"))
    }

    /// Views are kept in memory, never streamed: views over half the memory budget are refused, naming the way out.
    func testViewsOverHalfTheMemoryBudgetAreRefused() throws {
        var run = job(SampleCaches.shared.fc7SubsetViews, out: "small") { $0.memoryBudgetBytes = 4096 }
        run.weights = SampleCaches.weights
        XCTAssertThrowsError(try run.run { _ in }) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("the 2 augmented views of 12 training rows") && message.contains("--views none"), message)
        }
        run.settings.views = .evalOnly
        XCTAssertNoThrow(try run.run { _ in })
    }

    /// Trains the head on the cache with the trainer train-head runs, keeping fc8 after every epoch, and
    /// trains fc8 again from the images: each image (or, when the cache has views, the augmented crop of the
    /// view the epoch takes) through the frozen network to `referenceCut`, then the classifier's layers above
    /// it written out layer by layer, dropout in train mode with the masks drawn per (seed, epoch, image, layer),
    /// cross-entropy, backward to fc8, SGD with momentum.
    private func assertCachedTrainingEqualsUncached(cache cachePath: String, referenceCut: String, tolerance: Float,
                                                    file: StaticString = #filePath, line: UInt = #line) throws {
        let config = SampleCaches.config
        var headConfig = config
        headConfig.classes = 3
        var settings = HeadTrainingSettings()
        settings.epochs = 3
        settings.batchSize = 5
        settings.patience = 0
        settings.seed = 11
        settings.threads = 2

        let cache = try FeatureCacheReader(path: cachePath)
        let split = try TrainingSplit.make(paths: cache.paths, labels: cache.labels, splits: cache.splits, classes: cache.classes,
                                           seed: 11, validationFraction: 0.2)
        let head = try HeadNetwork.initial(config: headConfig, cut: try CutPoint(cache.fingerprint.layerPath, in: headConfig), dropout: 0.5,
                                           seed: 11, weights: SampleCaches.weights, fingerprint: cache.fingerprint.weightsSHA256)
        let trainer = try HeadTrainer(network: head, settings: settings)
        let views = cache.fingerprint.views
        let rows = try FeatureRows(cache: cache, needed: split.trainRows + split.validationRows, viewRows: split.trainRows,
                                   width: trainer.stemOutputWidth(activationShape: cache.activationShape), stem: trainer.applyStem,
                                   memoryBudgetBytes: 1 << 30, batchSize: settings.batchSize)
        var cachedFC8: [Linear] = []
        _ = try trainer.train(rows: rows, split: split, labels: cache.labels, classes: cache.classes) { _ in
            cachedFC8.append(trainer.network.linears.last!)
        }

        let network = try NetworkLoader.load(config: config, weights: SampleCaches.weights).network
        let cut = try CutPoint(referenceCut, in: config)
        // Per training image, the network's output on its eval crop (view 0) and on each augmented view (1...views).
        let prefixOutputs = Dictionary(uniqueKeysWithValues: try split.trainRows.map { row in
            let image = try ImageDecoder.decode(path: cache.fingerprint.imageRoot + "/" + cache.paths[row])
            let augmentation = Augmentation(matching: SampleCaches.preprocessing)
            return (row, try (0...views).map { view in
                var generator = TrainingRandomness.cachedViewGenerator(path: cache.paths[row], view: view)
                let crop = Tensor(shape: [1] + SampleCaches.preprocessing.outputShape) { slot in
                    if view == 0 { SampleCaches.preprocessing.write(image, into: slot) } else {
                        augmentation.write(image, generator: &generator, into: slot)
                    }
                }
                return try network.forward(crop, through: cut)
            })
        })
        var fc8 = HeadNetwork.newLinear(inFeatures: config.hidden, outFeatures: 3, seed: 11)
        var optimizer = SGD(momentum: 0.9)
        for epoch in 0..<settings.epochs {
            let order = TrainingRandomness.shuffled(split.trainRows, seed: 11, epoch: epoch)
            let prefixOutput = Dictionary(uniqueKeysWithValues: order.map { row in
                let view = views == 0 ? 0 : 1 + TrainingRandomness.viewChoice(seed: 11, epoch: epoch, row: row, views: views)
                return (row, prefixOutputs[row]![view])
            })
            for start in stride(from: 0, to: order.count, by: settings.batchSize) {
                let batch = Array(order[start..<min(start + settings.batchSize, order.count)])
                var activation = Tensor(shape: [batch.count, prefixOutput[batch[0]]!.count], data: batch.flatMap { prefixOutput[$0]!.data })
                var fc8Input = activation
                for layer in headConfig.layers[(cut.position + 1)...] {
                    switch layer.kind {
                    case .dropout:
                        var dropped: [Float] = []
                        for (index, row) in batch.enumerated() {
                            var generator = TrainingRandomness.dropoutGenerator(seed: 11, epoch: epoch, row: row,
                                                                                layerPosition: layer.position)
                            var values = activation.rows(index..<(index + 1))
                            var mask = Tensor(zeros: [])
                            Dropout(probability: 0.5).forwardTraining(&values, mask: &mask, generator: &generator)
                            dropped += values.data
                        }
                        activation = Tensor(shape: activation.shape, data: dropped)
                    case .relu:
                        ReLU.forward(&activation)
                    case .linear where layer.path == HeadNetwork.newLayerPath:
                        fc8Input = activation
                        activation = fc8.forward(activation)
                    case .linear:
                        guard case .linear(let frozen) = network.modules[layer.position] else {
                            return XCTFail("\(layer.path) is not linear")
                        }
                        activation = frozen.forward(activation)
                    default:
                        XCTFail("unexpected \(layer.name) above \(referenceCut)")
                    }
                }
                var gradient = Tensor(zeros: [])
                _ = SoftmaxCrossEntropy.lossAndGradient(logits: activation, labels: batch.map { cache.labels[$0] }, gradLogits: &gradient)
                let (_, gradWeight, gradBias) = fc8.backward(input: fc8Input, gradOutput: gradient, computingGradInput: false)
                optimizer.update(&fc8.weight, gradient: gradWeight, slot: 0, learningRate: settings.resolvedLearningRate)
                optimizer.update(&fc8.bias, gradient: gradBias, slot: 1, learningRate: settings.resolvedLearningRate)
            }
            let cached = cachedFC8[epoch]
            for (name, mine, reference) in [("weight", cached.weight, fc8.weight), ("bias", cached.bias, fc8.bias)] {
                let difference = mine.relativeDifference(to: reference)
                print("cached vs uncached training above \(cache.fingerprint.layer), fc8 \(name) after epoch \(epoch + 1): "
                      + "relative difference \(difference)")
                XCTAssertLessThanOrEqual(difference, tolerance, "fc8 \(name) after epoch \(epoch + 1)", file: file, line: line)
            }
        }
        XCTAssertNotEqual(fc8.weight, HeadNetwork.newLinear(inFeatures: config.hidden, outFeatures: 3, seed: 11).weight, "fc8 moved",
                          file: file, line: line)
    }

    // MARK: the sample data

    /// data/shapes (3 classes, 20 train and 8 val images each) through the narrow fixture network at 32 px
    /// (its weights are not ImageNet's, so this is a floor, not a demo of pretrained features). With 24
    /// validation images one seed's accuracy moves in steps of 1/24 and by ±0.12 between seeds (0.46–0.71
    /// over seeds 0–11), so the claim is about the mean of eight seeds, and every seed must beat chance.
    func testHeadBeatsChanceOnTheSampleData() throws {
        let chance = 1.0 / 3
        let accuracies = try (0..<8).map { seed in
            var run = job(SampleCaches.shared.pool5, out: "seed\(seed)") { settings in
                settings.epochs = 40
                settings.optimizer = .adam
                settings.learningRate = 0.003
                settings.patience = 10
                settings.seed = UInt64(seed)
            }
            run.weights = SampleCaches.weights
            let summary = try run.run { _ in }
            XCTAssertEqual(summary.valRows, 24)
            return summary.bestValAccuracy
        }
        let mean = accuracies.reduce(0, +) / Double(accuracies.count)
        let listed = accuracies.map { String(format: "%.3f", $0) }.joined(separator: " ")
        XCTAssertGreaterThanOrEqual(mean, chance + 0.2, "mean val accuracy \(mean) (\(listed)) vs chance \(chance): beats it by "
                                    + "\(mean - chance), wanted at least 0.2")
        XCTAssertGreaterThan(accuracies.min()!, chance, "every seed beats chance: \(listed)")
        print("sample data (pool5 of the narrow network, 32 px): mean val accuracy \(String(format: "%.3f", mean)) over seeds 0-7 "
              + "(\(listed)) vs chance \(String(format: "%.3f", chance)), \(String(format: "%.1f", mean / chance))x chance")
    }

    // MARK: the run directory

    func testRunDirectoryHoldsConfigMetricsModelAndSummary() throws {
        let cache = try SyntheticCache.write(at: path("cache.h5"))
        let summary = try job(cache) { $0.epochs = 4; $0.patience = 0 }.run { _ in }

        let config = try jsonObject(path("run/config.json"))
        let settings = config["settings"] as! [String: Any]
        XCTAssertEqual(settings["epochs"] as? Int, 4)
        XCTAssertEqual(settings["learning_rate"] as? Double, 0.01, "defaults are recorded resolved")
        XCTAssertEqual(settings["optimizer"] as? String, "sgd")
        let fingerprint = (config["cache"] as! [String: Any])["fingerprint"] as! [String: Any]
        XCTAssertEqual(fingerprint["layer_path"] as? String, "classifier.4")
        XCTAssertEqual(fingerprint["weights_sha256"] as? String, "random-seed-0")
        XCTAssertEqual(((config["split"] as! [String: Any])["rule"] as! [String: Any])["source"] as? String, "folder")

        let metrics = try String(contentsOfFile: path("run/metrics.csv"), encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(metrics.first, "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds")
        XCTAssertEqual(metrics.count, 5)
        XCTAssertEqual(metrics[1].split(separator: ",").count, 7)

        let model = try StateDictFile.open(path: path("run/model.h5"))
        XCTAssertEqual(Set(model.entries.map(\.key)), ["classifier.6.weight", "classifier.6.bias"])
        XCTAssertEqual(model.entry("classifier.6.weight")?.shape, [3, 64])
        XCTAssertEqual(model.metadata["classes"], #"["cats","dogs","zebras"]"#)
        XCTAssertEqual(model.metadata["cut_layer"], "fc7")
        XCTAssertEqual(model.metadata["cut_layer_path"], "classifier.4")
        XCTAssertEqual(model.metadata["weights_sha256"], "random-seed-0")
        XCTAssertEqual(model.metadata["mode"], "head")
        XCTAssertEqual(model.metadata["trainable_layers"], #"["classifier.6"]"#)
        XCTAssertEqual(try Preprocessing(jsonDescription: model.metadata["preprocess"]!), SampleCaches.preprocessing)

        let written = try jsonObject(path("run/summary.json"))
        for key in ["best_epoch", "best_val_accuracy", "per_class", "confusion_matrix", "wall_seconds", "samples_per_second"] {
            XCTAssertNotNil(written[key], key)
        }
        XCTAssertEqual(written["best_epoch"] as? Int, summary.bestEpoch)
        XCTAssertEqual((written["confusion_matrix"] as! [[Int]]).flatMap { $0 }.reduce(0, +), summary.valRows)
        XCTAssertEqual((written["per_class"] as! [[String: Any]]).map { $0["name"] as! String }, ["cats", "dogs", "zebras"])
        XCTAssertGreaterThan(summary.bestValAccuracy, 0.9, "separable synthetic classes")

        XCTAssertThrowsError(try job(cache).run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("already holds a finished run"), "\(error)")
        }
        var again = job(cache)
        again.overwrite = true
        XCTAssertNoThrow(try again.run { _ in })
    }

    func testSameSeedSameModelOtherSeedOtherModel() throws {
        let cache = try SyntheticCache.write(at: path("cache.h5"))
        func parameters(seed: UInt64, threads: Int, out: String) throws -> [Float] {
            _ = try job(cache, out: out) { $0.seed = seed; $0.threads = threads }.run { _ in }
            return try TrainedModel(contentsOf: path("\(out)/model.h5")).stateDict.flatMap(\.tensor.data)
        }
        let first = try parameters(seed: 5, threads: 1, out: "a")
        XCTAssertEqual(try parameters(seed: 5, threads: 2, out: "b"), first, "same seed: same bits, whatever the threads")
        XCTAssertNotEqual(try parameters(seed: 6, threads: 1, out: "c"), first)
        let metrics = { (out: String) in
            try String(contentsOfFile: self.path("\(out)/metrics.csv"), encoding: .utf8).split(separator: "\n")
                .map { $0.split(separator: ",").dropLast().joined(separator: ",") }
        }
        XCTAssertEqual(try metrics("a"), try metrics("b"), "same losses epoch by epoch (seconds aside)")
    }

    /// Labels that carry no signal and a high learning rate: the validation loss soon rises, training stops
    /// `patience` epochs after its lowest point, and the model is that epoch's.
    func testEarlyStoppingKeepsTheBestEpoch() throws {
        let cache = try SyntheticCache.write(at: path("cache.h5"), rowsPerClass: 30, signal: 0)
        let summary = try job(cache) { settings in
            settings.epochs = 60
            settings.patience = 3
            settings.learningRate = 0.5
        }.run { _ in }
        XCTAssertEqual(summary.stoppedEarly, true)
        XCTAssertEqual(summary.epochsRun, summary.bestEpoch + 3)
        let lines = try String(contentsOfFile: path("run/metrics.csv"), encoding: .utf8).split(separator: "\n").dropFirst()
        let validationLosses = lines.map { Double($0.split(separator: ",")[3])! }
        XCTAssertEqual(validationLosses.count, summary.epochsRun)
        XCTAssertEqual(validationLosses.firstIndex(of: validationLosses.min()!)! + 1, summary.bestEpoch)
        XCTAssertLessThan(summary.bestValLoss, validationLosses.last!)

        var evaluation = EvaluationJob(modelPath: path("run/model.h5"), source: .cache(cache))
        evaluation.split = "val"
        let metrics = try evaluation.run { _ in }.metrics
        XCTAssertEqual(metrics.meanLoss, summary.bestValLoss, accuracy: 1e-12, "the saved model is the best epoch's")
    }

    // MARK: splits

    /// Without val/ rows the hash decides (SplitTests pins the rule); config.json and summary.json say how.
    func testHashedSplitWhenTheCacheHasNoValRows() throws {
        let cache = try SyntheticCache.write(at: path("cache.h5"), splits: .none)
        let summary = try job(cache) { $0.validationFraction = 0.25 }.run { _ in }
        let recorded = try jsonObject(path("run/config.json"))["split"] as! [String: Any]
        XCTAssertEqual(recorded["rule"] as? NSDictionary, ["source": "hashed", "seed": 0, "validation_fraction": 0.25] as NSDictionary)
        // Python: [(c, i) for c in classes for i in range(12) if position(0, c, f"{c}/img{i}.jpg") < 0.25]
        XCTAssertEqual(recorded["val_rows_per_class"] as? [String: Int], ["cats": 6, "dogs": 4, "zebras": 3])
        let validation = [1, 3, 4, 9, 10, 11].map { "cats/img\($0).jpg" } + [2, 5, 6, 9].map { "dogs/img\($0).jpg" }
            + [0, 1, 9].map { "zebras/img\($0).jpg" }
        XCTAssertEqual(summary.split, TrainingSplit.Record(rule: .init(source: .hashed, seed: 0, validationFraction: 0.25),
                                                           validationPaths: validation))
    }

    // MARK: streaming

    /// Rows over the memory budget are streamed in windows of chunks: every row once per pass, the same
    /// model for the same seed, and a model as good as reading them once.
    func testCachesOverTheMemoryBudgetStream() throws {
        // 16 kB rows: 64 to a chunk, 3 chunks.
        var wide = VGGConfig.vgg16
        wide.classes = 3
        let cache = try SyntheticCache.write(at: path("wide.h5"), rowsPerClass: 50, config: wide)
        let reader = try FeatureCacheReader(path: cache)
        XCTAssertEqual(reader.chunkRows, 64)
        let rows = try FeatureRows(cache: reader, needed: Array(0..<reader.count), width: 4096, stem: { $0 },
                                   memoryBudgetBytes: 1 << 20, batchSize: 16)
        XCTAssertTrue(rows.isStreaming)
        let pass = rows.trainingPass(Array(0..<reader.count), seed: 3, epoch: 0)
        XCTAssertEqual(pass.order.sorted(), Array(0..<reader.count), "each row once")
        XCTAssertNotEqual(pass.order, Array(0..<reader.count))
        for start in stride(from: 0, to: pass.order.count, by: 16) {
            let positions = start..<min(start + 16, pass.order.count)
            let pointers = try rows.rowPointers(pass, positions)
            let expected = try reader.readRows(at: Array(pass.order[positions]))
            XCTAssertEqual(pointers.flatMap { Array(UnsafeBufferPointer(start: $0, count: 4096)) }, expected.data, "batch at \(start)")
        }

        func train(budget: Int, out: String) throws -> TrainingSummary {
            try job(cache, out: out, config: wide) { settings in
                settings.memoryBudgetBytes = budget
                settings.batchSize = 16
            }.run { _ in }
        }
        let streamed = try train(budget: 1 << 20, out: "streamed")
        XCTAssertEqual(streamed.dataLoading, "streaming")
        XCTAssertEqual(try train(budget: 1 << 20, out: "again").bestValLoss, streamed.bestValLoss, "deterministic")
        let inMemory = try train(budget: 1 << 30, out: "memory")
        XCTAssertEqual(inMemory.dataLoading, "memory")
        XCTAssertGreaterThan(streamed.bestValAccuracy, 0.9)
        XCTAssertGreaterThan(inMemory.bestValAccuracy, 0.9)
    }

    // MARK: deeper heads

    /// A head above pool5 holds the fixture's fc6 and fc7, frozen unless --train-from says otherwise.
    func testDeeperHeadsFreezeOrTrainTheLayersBetweenCutAndFC8() throws {
        let fixture = try StateDictFile.open(path: Fixtures.path("network/narrow_vgg16_legacy.pth"))
        var frozen = job(SampleCaches.shared.pool5Subset, out: "frozen")
        frozen.weights = SampleCaches.weights
        _ = try frozen.run { _ in }
        var model = try TrainedModel(contentsOf: path("frozen/model.h5"))
        var tensors = Dictionary(uniqueKeysWithValues: model.stateDict.map { ($0.key, $0.tensor) })
        XCTAssertEqual(model.stateDict.map(\.key), ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                                                    "classifier.3.bias", "classifier.6.weight", "classifier.6.bias"])
        XCTAssertEqual(tensors["classifier.0.weight"], try fixture.tensor("classifier.0.weight"))
        XCTAssertEqual(tensors["classifier.3.bias"], try fixture.tensor("classifier.3.bias"))
        XCTAssertEqual(model.trainableLayers, ["classifier.6"])

        var deep = job(SampleCaches.shared.pool5Subset, out: "deep") { $0.trainFrom = "fc6" }
        deep.weights = SampleCaches.weights
        _ = try deep.run { _ in }
        model = try TrainedModel(contentsOf: path("deep/model.h5"))
        tensors = Dictionary(uniqueKeysWithValues: model.stateDict.map { ($0.key, $0.tensor) })
        XCTAssertNotEqual(tensors["classifier.0.weight"], try fixture.tensor("classifier.0.weight"))
        XCTAssertNotEqual(tensors["classifier.3.weight"], try fixture.tensor("classifier.3.weight"))
        XCTAssertEqual(model.trainableLayers, ["classifier.0", "classifier.3", "classifier.6"])

        XCTAssertThrowsError(try job(SampleCaches.shared.pool5Subset, out: "conv") { $0.trainFrom = "conv5_3" }.run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("--train-from conv5_3"), "\(error)")
        }
        XCTAssertThrowsError(try job(SampleCaches.shared.pool5Subset, out: "typo") { $0.trainFrom = "FC_6" }.run { _ in }) { error in
            XCTAssertTrue("\(error)".hasPrefix("--train-from FC_6 (did you mean 'fc6'?): not a fully connected layer above the cut"),
                          "\(error)")
        }
    }

    /// A cache of random-seed weights: the head's fc6 and fc7 are drawn again from that seed, with every
    /// layer before them, and equal the network the cache's prefix belongs to.
    func testRandomSeedHeadsAreTheNetworkTheCacheCameFrom() throws {
        let config = SampleCaches.config
        let cut = try CutPoint("pool5", in: config)
        var headConfig = config
        headConfig.classes = 3
        let head = try HeadNetwork.initial(config: headConfig, cut: cut, dropout: 0.5, seed: 0, weights: .random(seed: 4),
                                           fingerprint: "random-seed-4")
        let whole = VGG.randomlyInitialized(config: config, seed: 4)
        for (linear, path) in zip(head.linears, head.linearPaths) where path != HeadNetwork.newLayerPath {
            let position = config.layers.first { $0.path == path }!.position
            guard case .linear(let original) = whole.modules[position] else { return XCTFail(path) }
            XCTAssertEqual(linear.weight, original.weight, path)
            XCTAssertEqual(linear.bias, original.bias, path)
        }
        // The cut's activations through the head's frozen layers equal the whole network's fc7.
        var generator = SeededGenerator(seed: 9)
        let images = Tensor(shape: [2, 3, 32, 32]) { values in
            for index in values.indices { values[index] = generator.nextNormal() }
        }
        let pool5 = try whole.forward(images, through: cut)
        let fc7 = try CutPoint("fc7", in: config)
        assertClose(head.forward(pool5, positions: head.firstPosition..<(fc7.position + 1)), try whole.forward(images, through: fc7),
                    tolerance: 1e-6, "fc7 via the rebuilt head")
        XCTAssertThrowsError(try HeadNetwork.initial(config: headConfig, cut: cut, dropout: 0.5, seed: 0, weights: .random(seed: 5),
                                                     fingerprint: "random-seed-4")) { error in
            XCTAssertTrue("\(error)".contains("random-seed-4"), "\(error)")
        }
    }

    // MARK: bad input

    func testBadCachesAreRefusedBeforeAnythingIsWritten() throws {
        func assertRefused(_ cache: String, _ expected: String, allowIncomplete: Bool = false, line: UInt = #line) {
            var run = job(cache)
            run.allowIncomplete = allowIncomplete
            XCTAssertThrowsError(try run.run { _ in }, line: line) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(error)", line: line)
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("run")), "nothing written", line: line)
        }
        assertRefused(try SyntheticCache.write(at: path("one.h5"), classes: ["only"]), "a classifier needs at least 2")
        assertRefused(try SyntheticCache.write(at: path("valonly.h5"), splits: .val), "the train split is empty")
        assertRefused(try SyntheticCache.write(at: path("tiny.h5"), rowsPerClass: 1, splits: .none), "class zebras has no training rows")
        assertRefused(try SyntheticCache.write(at: path("nan.h5"), poison: .nan), "holds NaN or infinite features")
        assertRefused(try SyntheticCache.write(at: path("inf.h5"), poison: .infinity), "train/dogs/img")
        let incomplete = try SyntheticCache.write(at: path("incomplete.h5"), complete: false)
        assertRefused(incomplete, "incomplete")
        assertRefused(Fixtures.path("network/narrow_vgg16.h5"), "not a bottleneck feature cache")
        assertRefused(path("missing.h5"), "no such file")

        var allowed = job(incomplete)
        allowed.allowIncomplete = true
        var messages: [String] = []
        _ = try allowed.run { messages.append($0) }
        XCTAssertTrue(messages.contains { $0.contains("incomplete") }, "\(messages)")
    }

    /// A loss that leaves the floats stops the run naming the epoch; the run directory holds no model.
    func testDivergingLossStopsNamingTheEpoch() throws {
        let cache = try SyntheticCache.write(at: path("cache.h5"))
        XCTAssertThrowsError(try job(cache) { $0.learningRate = 1e38 }.run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("diverged in epoch"), "\(error)")
            XCTAssertEqual((error as? TrainingError)?.kind, .diverged)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("run/config.json")))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("run/model.h5")))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("run/summary.json")))
    }

    func testStreamingFindsNaNAndNamesTheEpoch() throws {
        var wide = VGGConfig.vgg16
        wide.classes = 3
        let cache = try SyntheticCache.write(at: path("wide.h5"), rowsPerClass: 40, config: wide, poison: .nan)
        XCTAssertThrowsError(try job(cache, config: wide) { $0.memoryBudgetBytes = 1 << 20 }.run { _ in }) { error in
            XCTAssertTrue("\(error)".contains("NaN") && "\(error)".contains("epoch 1"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("run/summary.json")))
    }

    func testBadSettingsAndWrongWeightsAreRefused() throws {
        let cache = try SyntheticCache.write(at: path("cache.h5"))
        let badSettings: [((inout HeadTrainingSettings) -> Void, String)] = [
            ({ $0.epochs = 0 }, "--epochs"), ({ $0.validationFraction = 1 }, "--val-fraction"), ({ $0.learningRate = -1 }, "--lr"),
            ({ $0.trainFrom = "fc6" }, "--train-from fc6"),
        ]
        for (configure, expected) in badSettings {
            XCTAssertThrowsError(try job(cache, configure: configure).run { _ in }) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(error)")
            }
        }
        var wrong = job(SampleCaches.shared.pool5Subset)
        wrong.weights = .random(seed: 0)
        XCTAssertThrowsError(try wrong.run { _ in }) { error in
            XCTAssertEqual((error as? TrainingError)?.kind, .mismatch, "\(error)")
            XCTAssertTrue("\(error)".contains("random-seed-0"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("run")))
    }

    private func jsonObject(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }
}

/// A test with a fresh temporary folder of its own.
class FolderTestCase: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("\(Self.self)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }
}

/// The sample dataset (data/shapes) extracted once per test run through the narrow fixture network at
/// 32 px: all of it at pool5, and a subset (4 train and 2 val images per class) at fc7 and pool5, at
/// batch 1 so that every row is the network's output for that image alone.
final class SampleCaches: @unchecked Sendable {
    static let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
    static let weights = WeightsChoice.file(Fixtures.path("network/narrow_vgg16_legacy.pth"))
    static let preprocessing = Preprocessing(resize: 36, crop: 32)
    static let imagesRoot = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("data/shapes").path

    static let shared = SampleCaches()

    let pool5: String
    let subsetRoot: String
    let fc7Subset: String
    let pool5Subset: String
    /// fc7 of the subset with 2 augmented views per training image (`extract --views 2`).
    let fc7SubsetViews: String

    private init() {
        let manager = FileManager.default
        let folder = manager.temporaryDirectory.appendingPathComponent("sample-caches-\(UUID().uuidString)")
        let subset = folder.appendingPathComponent("shapes-subset")
        for (split, count) in [("train", 4), ("val", 2)] {
            for name in ["checkerboard", "discs", "stripes"] {
                let source = URL(fileURLWithPath: Self.imagesRoot).appendingPathComponent("\(split)/\(name)")
                let target = subset.appendingPathComponent("\(split)/\(name)")
                try! manager.createDirectory(at: target, withIntermediateDirectories: true)
                for file in try! manager.contentsOfDirectory(atPath: source.path).sorted().prefix(count) {
                    try! manager.copyItem(at: source.appendingPathComponent(file), to: target.appendingPathComponent(file))
                }
            }
        }
        func extract(_ root: String, _ layer: String, batchSize: Int, views: Int = 0, as name: String) -> String {
            var job = ExtractionJob(imagesRoot: root, outputPath: folder.appendingPathComponent(name).path, weights: Self.weights)
            job.config = Self.config
            job.preprocessing = Self.preprocessing
            job.layer = layer
            job.batchSize = batchSize
            job.views = views
            return try! job.run { _ in }.path
        }
        pool5 = extract(Self.imagesRoot, "pool5", batchSize: 16, as: "shapes-pool5.h5")
        subsetRoot = subset.path
        fc7Subset = extract(subset.path, "fc7", batchSize: 1, as: "subset-fc7.h5")
        pool5Subset = extract(subset.path, "pool5", batchSize: 1, as: "subset-pool5.h5")
        fc7SubsetViews = extract(subset.path, "fc7", batchSize: 1, views: 2, as: "subset-fc7-views.h5")
    }
}

/// Small caches written directly (no images): fc7 rows of the narrow network, one cluster per class.
enum SyntheticCache {
    enum Splits {
        /// train/ and val/: every fourth row of a class validates.
        case trainAndVal
        case none
        case val
    }

    /// `rowsPerClass` rows of each class at `cut` of `config` (activation [config.hidden]), class means
    /// `signal` apart; `poison` puts that value in the first dogs row.
    @discardableResult
    static func write(at path: String, classes: [String] = ["cats", "dogs", "zebras"], rowsPerClass: Int = 12,
                      splits: Splits = .trainAndVal, signal: Float = 3, config: VGGConfig = SampleCaches.config,
                      weights: WeightsIdentity = .random(seed: 0), poison: Float? = nil, complete: Bool = true) throws -> String {
        let cut = try CutPoint("fc7", in: config)
        let fingerprint = CacheFingerprint(config: config, cut: cut, weights: weights, preprocessing: SampleCaches.preprocessing,
                                           imageRoot: (path as NSString).deletingLastPathComponent)
        let width = config.hidden
        var generator = SeededGenerator(seed: 17)
        let means = classes.map { _ in (0..<width).map { _ in generator.nextNormal() * signal } }
        var items: [ImageFolder.Item] = []
        var features: [Float] = []
        for (label, name) in classes.enumerated() {
            for index in 0..<rowsPerClass {
                let split: ImageFolder.Split = switch splits {
                case .trainAndVal: index % 4 == 3 ? .val : .train
                case .none: .none
                case .val: .val
                }
                let folder = split == .none ? "" : "\(split.rawValue)/"
                items.append(ImageFolder.Item(path: "\(folder)\(name)/img\(index).jpg", label: Int32(label), split: split))
                features += means[label].map { max(0, $0 + generator.nextNormal()) }
            }
        }
        // An image of the run that neither got a row nor failed leaves the cache incomplete.
        let unprocessed = complete ? [] : [ImageFolder.Item(path: "unprocessed.jpg", label: -1, split: .none)]
        let builder = try FeatureCacheBuilder.open(path: path, fingerprint: fingerprint, classes: classes,
                                                   manifest: items + unprocessed, overwrite: true) { _, _ in nil }
        let rows = items.map { item in
            (item: item, identity: FileIdentity(size: 1, mtimeNanoseconds: 0, ctimeNanoseconds: 0, inode: 0,
                                                sha256: SHA256.digest(Array(item.path.utf8))))
        }
        _ = try features.withUnsafeBufferPointer { try builder.append(features: $0, rows: rows, failed: []) }
        _ = try builder.finish(compress: false)
        if let poison, let dogs = classes.firstIndex(of: "dogs") {
            // A cache tampered with after it was written (the writer refuses non-finite features).
            let dataset = try HDF5File(path: path, mode: .readWrite).openDataset("features")
            var row = try dataset.readRows((dogs * rowsPerClass)..<(dogs * rowsPerClass + 1), as: Float.self)
            row[width / 2] = poison
            try row.withUnsafeBufferPointer { try dataset.writeRows($0, startingAt: dogs * rowsPerClass) }
        }
        return path
    }
}
