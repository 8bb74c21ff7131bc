import Foundation
import BottleneckKernels

/// `bottleneck train-head`: a new classifier head trained on a feature cache, into a run directory
/// (`config.json`, `metrics.csv`, `model.h5`, `summary.json`). Everything that can be checked is
/// checked before the run directory is touched, so bad input leaves nothing behind.
package struct HeadTrainingJob: Sendable {
    package var cachePath: String
    package var runDirectory: String
    package var settings = HeadTrainingSettings()
    /// The backbone weights of the pretrained layers between the cut and fc8 (caches cut below fc7);
    /// nil: the file (or seeded initialisation) the cache records.
    package var weights: WeightsChoice?
    package var allowIncomplete = false
    package var overwrite = false
    /// The network the cache was extracted with; nil: the configuration the cache names (vgg16, …).
    package var config: VGGConfig?

    package init(cachePath: String, runDirectory: String) {
        self.cachePath = cachePath
        self.runDirectory = runDirectory
    }

    /// What `config.json` records besides the settings.
    private struct Configuration: Encodable {
        struct Cache: Encodable {
            var path: String
            var fingerprint: CacheFingerprint
            var rows: Int
            var complete: Bool
        }
        struct Head: Encodable {
            var cutLayer: String
            var cutLayerPath: String
            /// torchvision path and name of every layer above the cut.
            var layers: [String]
            var trainableLayers: [String]
            /// Frozen layers run once per row before training.
            var precomputedLayers: [String]
            var newLayerInit: String
            var backboneWeights: WeightsIdentity?
        }
        package struct Split: Encodable {
            var rule: TrainingSplit.Rule
            var trainRows: Int
            var valRows: Int
            var trainRowsPerClass: [String: Int]
            var valRowsPerClass: [String: Int]
        }
        struct Loading: Encodable {
            var mode: String
            var rowFloats: Int
            var windowRows: Int
        }
        var command = "train-head"
        var toolVersion = BottleneckVersion.current
        var created = ISO8601DateFormatter().string(from: Date())
        var cache: Cache
        var classes: [String]
        var head: Head
        var settings: HeadTrainingSettings
        var split: Split
        var loading: Loading
    }

    package func run(log: (String) -> Void) throws -> TrainingSummary {
        let start = ContinuousClock.now
        try settings.validate()
        let cache = try FeatureCacheReader(path: cachePath, allowIncomplete: allowIncomplete)
        let fingerprint = cache.fingerprint
        if !cache.isComplete { log("warning: \(cachePath) is incomplete (--allow-incomplete): training on the \(cache.count) rows it has") }
        guard cache.classes.count >= 2 else {
            throw TrainingError(.invalidInput, "\(cachePath) has \(cache.classes.count) class\(cache.classes.count == 1 ? "" : "es")"
                                + "\(cache.classes.isEmpty ? "" : " (\(cache.classes.joined(separator: ", ")))"): a classifier needs at "
                                + "least 2 class subfolders")
        }
        guard fingerprint.layerPath != ExtractionJob.inputLayer else {
            throw TrainingError(.invalidInput, "\(cachePath) holds preprocessed images (layer input), not activations: "
                                + "extract at fc7, fc6 or pool5 to train a head")
        }
        guard var modelConfig = config ?? VGGConfig.named(fingerprint.backbone) else {
            throw TrainingError(.invalidInput, "\(cachePath) was made with backbone '\(fingerprint.backbone)', "
                                + "which this bottleneck does not know")
        }
        modelConfig.classes = cache.classes.count
        let cut = try CutPoint(fingerprint.layerPath, in: modelConfig)
        let preprocessing = try Preprocessing(jsonDescription: fingerprint.preprocess)
        let expectedShape = cut.activationShape(config: modelConfig, imageSize: preprocessing.crop)
        guard expectedShape == cache.activationShape else {
            throw TrainingError(.mismatch, "\(cachePath) holds rows of \(cache.activationShape), "
                                + "but \(cut.layer.path) of \(modelConfig.name) "
                                + "at \(preprocessing.crop) px gives \(expectedShape): it was made with another network")
        }

        let split = try TrainingSplit.make(paths: cache.paths, labels: cache.labels, splits: cache.splits, classes: cache.classes,
                                           seed: settings.splitSeed, validationFraction: settings.validationFraction)
        let trainCounts = Self.countPerClass(split.trainRows, labels: cache.labels, classes: cache.classes)
        let validationCounts = Self.countPerClass(split.validationRows, labels: cache.labels, classes: cache.classes)
        let trainedClasses = cache.classes.filter { trainCounts[$0]! > 0 }
        guard trainedClasses.count >= 2 else {
            throw TrainingError(.invalidInput, "the train split holds only class \(trainedClasses.first ?? "-"): "
                                + "a classifier needs examples of at least 2 classes")
        }
        for name in cache.classes where trainCounts[name]! == 0 {
            log("warning: class \(name) has no training rows; the head cannot learn it")
        }

        let cacheWeights = WeightsIdentity(source: fingerprint.weightsSource, fingerprint: fingerprint.weightsSHA256)
        let network = try HeadNetwork.initial(config: modelConfig, cut: cut, dropout: Float(settings.dropout), seed: settings.seed,
                                              weights: weights ?? WeightsChoice(reproducing: cacheWeights),
                                              fingerprint: fingerprint.weightsSHA256)
        if let problem = network.inputProblem(activationShape: cache.activationShape) {
            throw TrainingError(.mismatch, "\(cachePath): \(problem)")
        }
        let trainer = try HeadTrainer(network: network, settings: settings)
        let describe = { (positions: Range<Int>) in positions.map { "\(modelConfig.layers[$0].name)" }.joined(separator: " → ") }
        let trainedPaths = trainer.trainedPositions.map { modelConfig.layers[$0].path }
        let trainedParameters = trainer.trainedPositions.reduce(0) { total, position in
            guard case .linear(let linear) = network.module(at: position) else { preconditionFailure("only linears train") }
            return total + linear.weight.count + linear.bias.count
        }
        log("head above \(fingerprint.layer) (\(cut.layer.path)): \(describe(network.positions)); training "
            + "\(trainedPaths.joined(separator: ", ")) (\(trainedParameters) parameters)")
        log("\(split.trainRows.count) training rows, \(split.validationRows.count) validation rows (\(split.rule.description))")

        let viewRows = settings.views == .augmented ? split.trainRows.filter { cache.viewBlockOfRow[$0] >= 0 } : []
        if !viewRows.isEmpty {
            log("\(viewRows.count) training rows take one of their \(fingerprint.views) augmented views each epoch")
        } else if fingerprint.views > 0 {
            log("training on the eval views only (--views none); the cache's \(fingerprint.views) augmented views are unused")
        }
        let rows = try FeatureRows(cache: cache, needed: split.trainRows + split.validationRows, viewRows: viewRows,
                                   width: trainer.stemOutputWidth(activationShape: cache.activationShape),
                                   stem: trainer.applyStem, memoryBudgetBytes: settings.memoryBudgetBytes, batchSize: settings.batchSize)
        if !trainer.stemPositions.isEmpty { log("precomputed \(describe(trainer.stemPositions)) once per row (frozen)") }
        if rows.isStreaming { log("streaming: the rows exceed the memory budget; reading windows of \(rows.windowRows) rows per pass") }

        let run = try RunDirectory(path: runDirectory, overwrite: overwrite)
        let layerNames = network.positions.map { "\(modelConfig.layers[$0].path) \(modelConfig.layers[$0].name)" }
        try run.writeJSON(Configuration(
            cache: .init(path: URL(fileURLWithPath: cachePath).standardizedFileURL.path, fingerprint: fingerprint, rows: cache.count,
                         complete: cache.isComplete),
            classes: cache.classes,
            head: .init(cutLayer: fingerprint.layer, cutLayerPath: cut.layer.path, layers: layerNames, trainableLayers: trainedPaths,
                        precomputedLayers: trainer.stemPositions.map { modelConfig.layers[$0].path },
                        newLayerInit: "torch nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, from the seed",
                        backboneWeights: network.linears.count > 1 ? cacheWeights : nil),
            settings: settings.resolved,
            split: .init(rule: split.rule, trainRows: split.trainRows.count, valRows: split.validationRows.count,
                         trainRowsPerClass: trainCounts, valRowsPerClass: validationCounts),
            loading: .init(mode: rows.isStreaming ? "streaming" : "memory", rowFloats: rows.width, windowRows: rows.windowRows)),
            to: RunDirectory.configFile)
        try run.startMetrics()

        let outcome = try trainer.train(rows: rows, split: split, labels: cache.labels, classes: cache.classes) { record in
            try run.appendMetrics(record)
            log(String(format: "epoch %3d  train loss %.4f acc %.3f  val loss %.4f acc %.3f  lr %.3g  %.2f s", record.epoch,
                       record.trainLoss, record.trainAccuracy, record.validationLoss, record.validationAccuracy,
                       record.learningRate, record.seconds))
        }
        if outcome.stoppedEarly {
            log("stopped early after epoch \(outcome.epochs.count): no lower validation loss for \(settings.patience) epochs")
        }

        let model = TrainedModel(mode: .head, config: modelConfig, classes: cache.classes, cut: cut, cutName: fingerprint.layer,
                                 weights: cacheWeights, preprocessing: preprocessing, trainableLayers: trainedPaths,
                                 dropout: settings.dropout, split: split.rule, stateDict: trainer.network.stateDict)
        try model.save(to: run.file(RunDirectory.modelFile))
        let best = outcome.validation
        let summary = TrainingSummary(
            bestEpoch: outcome.bestEpoch, bestValAccuracy: best.accuracy, bestValLoss: best.meanLoss, epochsRun: outcome.epochs.count,
            split: TrainingSplit.Record(rule: split.rule, validationPaths: split.validationRows.map { cache.paths[$0] }),
            chanceAccuracy: 1 / Double(cache.classes.count), classes: cache.classes, perClass: best.perClass,
            confusionMatrix: best.confusion, wallSeconds: start.secondsElapsed, model: run.file(RunDirectory.modelFile),
            backboneWeights: cacheWeights, stoppedEarly: outcome.stoppedEarly, trainRows: split.trainRows.count, valRows: split.validationRows.count,
            majorityClassAccuracy: Double(validationCounts.values.max() ?? 0) / Double(split.validationRows.count),
            samplesPerSecond: outcome.samplesPerSecond, dataLoading: rows.isStreaming ? "streaming" : "memory")
        try run.writeJSON(summary, to: RunDirectory.summaryFile)
        return summary
    }

    private static func countPerClass(_ rows: [Int], labels: [Int32], classes: [String]) -> [String: Int] {
        var counts = Dictionary(uniqueKeysWithValues: classes.map { ($0, 0) })
        for row in rows { counts[classes[Int(labels[row])], default: 0] += 1 }
        return counts
    }
}
