import Foundation
import BottleneckKernels

/// `bottleneck full-finetune`: VGG16 trained end to end (or above `--freeze-through`) from the images
/// themselves, no cache: decoding and augmentation run on their own thread a batch ahead of the network.
/// Writes the same run directory as train-head (`config.json`, `metrics.csv`, `model.h5` with the whole
/// state dict, `summary.json`), plus `checkpoint.h5` after every epoch for `--resume`.
package struct FineTuneJob: Sendable {
    package var imagesRoot: String
    package var runDirectory: String
    package var weights: WeightsChoice
    package var settings = FineTuneSettings()
    /// A train-head run's model.h5 whose head starts the new layers instead of a fresh fc8.
    package var initialHead: String?
    package var resume = false
    package var overwrite = false
    /// The network before its head is replaced (classes are set from the folder).
    package var config: VGGConfig = .vgg16
    /// Bytes a run may plan to use; nil: MemAvailable from /proc/meminfo.
    var memoryLimitBytes: Int?
    /// Stop, as an interruption would, once this invocation has checkpointed this many epochs (a batch
    /// scheduler's time slice; the tests' interruption).
    var interruptAfterEpochs: Int?
    /// The MPI ranks this process is one of (data-parallel fine-tuning); nil: it trains alone. Every rank splits
    /// each batch with the others and ends with the same model; rank 0 alone writes the run folder, all read it.
    package var group: ProcessGroup?

    package init(imagesRoot: String, runDirectory: String, weights: WeightsChoice) {
        self.imagesRoot = imagesRoot
        self.runDirectory = runDirectory
        self.weights = weights
    }

    private struct Configuration: Encodable {
        struct Network: Encodable {
            var backbone: String
            var frozenThrough: String?
            var frozenThroughPath: String?
            var trainableLayers: [String]
            var trainableParameters: Int
            var headLayers: [String]
            var initialHead: String?
            var weights: WeightsIdentity
        }
        var command = "full-finetune"
        var toolVersion = BottleneckVersion.current
        var created = ISO8601DateFormatter().string(from: Date())
        var images: String
        var classes: [String]
        var settings: FineTuneSettings
        var preprocessing: Preprocessing
        var augmentation: Augmentation?
        var network: Network
        var trainImages: Int
        var valImages: Int
        var split: TrainingSplit.Rule
        var estimatedStepBytes: Int
    }

    package func run(log: (String) -> Void) throws -> TrainingSummary {
        let start = ContinuousClock.now
        try settings.validate()
        if let group, settings.batchSize < group.size {
            throw TrainingError(.invalidInput, "--batch-size \(settings.batchSize) cannot be split over \(group.size) MPI ranks: "
                                + "each needs at least one image of every batch; use a --batch-size of at least \(group.size)")
        }
        // Before the folder is listed (minutes on a large one); the layers' names and positions do not depend on the classes.
        let freezePoint = try settings.freezeThrough.map { try CutPoint($0, in: config) }
        let frozenThrough = freezePoint?.position ?? -1
        let folder = try ImageFolder(root: imagesRoot)
        for warning in folder.warnings { log("warning: \(warning)") }
        guard folder.classes.count >= 2 else {
            throw TrainingError(.invalidInput, "\(imagesRoot) has \(folder.classes.count) "
                                + "class folder\(folder.classes.count == 1 ? "" : "s"): "
                                + "a classifier needs at least 2 class subfolders")
        }
        let split = try TrainingSplit.make(paths: folder.items.map(\.path), labels: folder.items.map(\.label),
                                           splits: folder.items.map(\.split), classes: folder.classes, seed: settings.splitSeed,
                                           validationFraction: settings.validationFraction)
        var modelConfig = config
        modelConfig.classes = folder.classes.count
        let estimate = try estimatedStepBytes(config: modelConfig, frozenThrough: frozenThrough)

        var network: FineTuneNetwork
        let weightsIdentity: WeightsIdentity
        let normalization: InputNormalization?
        (network, weightsIdentity, normalization) = try loadNetwork(config: modelConfig, frozenThrough: frozenThrough, log: log)
        var headLayers = [HeadNetwork.newLayerPath]
        if let initialHead {
            headLayers = try Self.loadHead(initialHead, into: &network, classes: folder.classes, weights: weightsIdentity,
                                           imageSize: settings.imageSize)
            log("started the head (\(headLayers.joined(separator: ", "))) from \(initialHead)")
        }
        let trainer = FineTuneTrainer(network: consume network, settings: settings, folder: folder, split: split,
                                      headLayers: headLayers, normalization: normalization, group: group, log: log)
        let trainableLayers = trainer.network.trainableLayers
        let trainableParameters = trainer.network.trainableParameterCount
        let frozenNote = freezePoint.map { "frozen through \($0.name) (\($0.layer.path)), " } ?? ""
        log("\(modelConfig.name): \(frozenNote)training \(trainableLayers.count) layers (\(trainableLayers.first!) … "
            + "\(trainableLayers.last!), \(trainableParameters) parameters); step needs about \(estimate.formattedBytes)")
        log("\(split.trainRows.count) training images, \(split.validationRows.count) validation images (\(split.rule.description))")

        // nil on the ranks other than 0, which write nothing (the folder's lock is the writer's alone).
        let run: RunDirectory?
        let firstEpoch: Int
        let writes = group?.isCoordinator ?? true
        if resume {
            (run, firstEpoch) = try resumeRun(trainer, writes: writes, log: log)
        } else if !writes {
            (run, firstEpoch) = (nil, 0)
        } else {
            let created = try RunDirectory(path: runDirectory, overwrite: overwrite)
            firstEpoch = 0
            // A checkpoint of the replaced run would otherwise be what a --resume after a kill in this run's first
            // epoch continues from: other parameters under this run's config.json.
            do {
                if FileManager.default.fileExists(atPath: created.file(FineTuneCheckpoint.fileName)) {
                    try FileManager.default.removeItem(atPath: created.file(FineTuneCheckpoint.fileName))
                }
            } catch {
                throw TrainingError(.runDirectory, "cannot remove the old \(created.file(FineTuneCheckpoint.fileName)): "
                                    + "\(error.localizedDescription)")
            }
            try created.writeJSON(Configuration(
                images: folder.root.path, classes: folder.classes, settings: settings.resolved, preprocessing: trainer.evaluation,
                augmentation: trainer.augmentation,
                network: .init(backbone: modelConfig.name, frozenThrough: freezePoint?.name, frozenThroughPath: freezePoint?.layer.path,
                               trainableLayers: trainableLayers, trainableParameters: trainableParameters,
                               headLayers: headLayers, initialHead: initialHead, weights: weightsIdentity),
                trainImages: split.trainRows.count, valImages: split.validationRows.count, split: split.rule,
                estimatedStepBytes: estimate), to: RunDirectory.configFile)
            try created.startMetrics()
            run = created
        }

        let checkpointPath = file(FineTuneCheckpoint.fileName)
        let modelPath = file(RunDirectory.modelFile)
        let outcome = try trainer.train(checkpointPath: checkpointPath, log: log) { record in
            try run?.appendMetrics(record)
            log(String(format: "epoch %3d  train loss %.4f acc %.3f  val loss %.4f acc %.3f  %.1f s", record.epoch,
                       record.trainLoss, record.trainAccuracy, record.validationLoss, record.validationAccuracy, record.seconds))
        } onCheckpoint: { checkpoint, newBest in
            // model.h5 before the checkpoint: a kill between the two reruns the epoch, which writes it again.
            if run != nil {
                if newBest {
                    try TrainedModel(mode: .finetune, config: modelConfig, classes: folder.classes, cut: try CutPoint("fc7", in: modelConfig),
                                     cutName: "fc7", weights: weightsIdentity, preprocessing: trainer.evaluation,
                                     trainableLayers: trainableLayers, dropout: settings.dropout, split: split.rule,
                                     stateDict: checkpoint.stateDict).save(to: modelPath)
                }
                try checkpoint.save(to: checkpointPath)
            }
            // The other ranks go on only once rank 0 has written: none ends (an interruption) while it writes, and
            // what they may read later (model.h5 below) is there.
            if let group {
                var written = [0.0]
                group.sum(&written, "waiting for rank 0's checkpoint")
            }
            let done = checkpoint.epochsDone
            if let limit = interruptAfterEpochs, done - firstEpoch >= limit, done < settings.epochs {
                throw TrainingError(.runDirectory, "interrupted after epoch \(done) of \(settings.epochs) as asked; "
                                    + "the same command with --resume continues from \(checkpointPath)")
            }
        }

        // A resumed run whose best epoch came before the interruption evaluates the saved best model again.
        let best = try outcome.validation ?? trainer.validate(
            try Self.network(from: TrainedModel(contentsOf: modelPath), dropout: Float(settings.dropout)), log: log)
        let scoredValidation = split.validationRows.map { folder.items[$0].path }.filter { !trainer.failedImages.contains($0) }
        let summary = TrainingSummary(
            bestEpoch: outcome.bestEpoch, bestValAccuracy: best.accuracy, bestValLoss: best.meanLoss, epochsRun: outcome.epochs.count,
            split: TrainingSplit.Record(rule: split.rule, validationPaths: scoredValidation),
            chanceAccuracy: 1 / Double(folder.classes.count), classes: folder.classes, perClass: best.perClass,
            confusionMatrix: best.confusion, wallSeconds: start.secondsElapsed, model: modelPath,
            backboneWeights: weightsIdentity, trainImages: split.trainRows.count, valImages: scoredValidation.count, frozenThrough: freezePoint?.name,
            trainableLayers: trainableLayers, trainableParameters: trainableParameters,
            trainImagesPerSecond: outcome.samplesPerSecond, peakResidentBytes: ResourceUsage.peakResidentBytes,
            failedImages: trainer.failedImages.sorted())
        if let run {
            try run.writeJSON(summary, to: RunDirectory.summaryFile)
            // Finished: the checkpoint (parameters and optimizer state, twice the model's size) has no further use.
            try? FileManager.default.removeItem(atPath: checkpointPath)
        }
        return summary
    }

    /// `name` in the run folder, on every rank (only rank 0 holds the RunDirectory).
    private func file(_ name: String) -> String { (runDirectory as NSString).appendingPathComponent(name) }

    /// Bytes a training step needs; refuses settings that need more than is available.
    private func estimatedStepBytes(config: VGGConfig, frozenThrough: Int) throws -> Int {
        let optimizerCopies = settings.optimizer == .sgd ? (settings.momentum > 0 ? 1 : 0) : 2
        let estimate = FineTuneNetwork.estimatedStepBytes(config: config, imageSize: settings.imageSize,
                                                          batchSize: settings.batchSize, frozenThrough: frozenThrough,
                                                          optimizerCopies: optimizerCopies)
        if let available = memoryLimitBytes ?? MemoryEstimate.availableBytes(), estimate > available {
            throw TrainingError(.invalidInput, "--batch-size \(settings.batchSize) at \(settings.imageSize) px needs about "
                                + "\(estimate.formattedBytes) (parameters, optimizer state, kept activations and gradients), "
                                + "but only \(available.formattedBytes) is available; use a smaller --batch-size or --image-size, "
                                + "or freeze more layers (--freeze-through)")
        }
        return estimate
    }

    /// Puts the interrupted run's checkpoint into `trainer`, refusing other settings; when it `writes` (rank 0), opens
    /// the run and rewrites metrics.csv from the checkpoint's epochs. Returns the run (nil when it does not write)
    /// and the epochs it had done.
    private func resumeRun(_ trainer: FineTuneTrainer, writes: Bool, log: (String) -> Void) throws -> (RunDirectory?, epochsDone: Int) {
        let run = writes ? try RunDirectory(resuming: runDirectory) : nil
        let checkpoint = try FineTuneCheckpoint(contentsOf: file(FineTuneCheckpoint.fileName))
        let settingsJSON = FineTuneCheckpoint.settingsJSON(settings)
        guard checkpoint.settingsJSON == settingsJSON else {
            throw TrainingError(.mismatch, "--resume with other settings than the interrupted run: it ran with "
                                + "\(checkpoint.settingsJSON), this command asks for \(settingsJSON)")
        }
        try trainer.resume(from: checkpoint, path: file(FineTuneCheckpoint.fileName))
        if let run {
            try run.startMetrics()
            for record in checkpoint.history { try run.appendMetrics(record) }
        }
        log("resuming after epoch \(checkpoint.epochsDone) of \(settings.epochs)")
        return (run, checkpoint.epochsDone)
    }

    /// The pretrained network through fc7 with a new fc8. Nothing else keeps the loaded tensors, so the first
    /// update changes them in place instead of copying all 500 MB.
    private func loadNetwork(config: VGGConfig, frozenThrough: Int,
                             log: (String) -> Void) throws -> (FineTuneNetwork, WeightsIdentity, InputNormalization?) {
        let loaded = try NetworkLoader.load(config: config, through: try CutPoint("fc7", in: config), weights: weights)
        for note in loaded.notes { log("weights: \(note)") }
        let newHead = HeadNetwork.newLinear(inFeatures: config.hidden, outFeatures: config.classes, seed: settings.seed)
        return (try FineTuneNetwork(loaded.network, newHead: newHead, dropout: Float(settings.dropout), frozenThrough: frozenThrough),
                loaded.weights, loaded.normalization)
    }

    /// The whole network a fine-tuned model.h5 holds.
    static func network(from model: TrainedModel, dropout: Float) throws -> FineTuneNetwork {
        let tensors = Dictionary(model.stateDict.map { ($0.key, $0.tensor) }, uniquingKeysWith: { $1 })
        let vgg = try VGG(config: model.config) { key, _ in
            guard let tensor = tensors[key] else { throw TrainingError(.malformed, "the model has no \(key)") }
            return tensor
        }
        return try FineTuneNetwork(vgg, dropout: dropout, frozenThrough: -1)
    }

    /// Puts the trained layers of a train-head model into `network`; returns their paths. Refuses a head made for
    /// other classes, another network, other backbone weights or preprocessing, or above a layer this run freezes.
    static func loadHead(_ path: String, into network: inout FineTuneNetwork, classes: [String], weights: WeightsIdentity,
                         imageSize: Int) throws -> [String] {
        let head = try TrainedModel(contentsOf: path)
        guard head.mode == .head else {
            throw TrainingError(.mismatch, "--init-head \(path) is a fine-tuned model, not a head trained by train-head")
        }
        guard head.classes == classes else {
            throw TrainingError(.mismatch, "--init-head \(path) was trained on classes \(head.classes.joined(separator: ", ")), "
                                + "but the images have \(classes.joined(separator: ", "))")
        }
        guard head.config == network.config else {
            throw TrainingError(.mismatch, "--init-head \(path) belongs to \(head.config.name), not \(network.config.name)")
        }
        guard head.weights.fingerprint == weights.fingerprint else {
            throw TrainingError(.mismatch, "--init-head \(path) was trained on features of weights \(head.weights.fingerprint) "
                                + "(\(head.weights.source)), but this run's backbone is \(weights.fingerprint) (\(weights.source)); "
                                + "pass the head's weights with --weights")
        }
        guard head.preprocessing.crop == imageSize else {
            throw TrainingError(.mismatch, "--init-head \(path) was trained on \(head.preprocessing.crop) px features, "
                                + "this run uses --image-size \(imageSize)")
        }
        let positions = Dictionary(uniqueKeysWithValues: network.config.layers.map { ($0.path, $0.position) })
        let firstTrainable = network.firstTrainablePosition
        let frozen = head.trainableLayers.filter { (positions[$0] ?? -1) < firstTrainable }
        guard frozen.isEmpty else {
            throw TrainingError(.mismatch, "--init-head \(path) was trained above the cut \(head.cutName), so its layers "
                                + "\(frozen.joined(separator: ", ")) are part of it, but this run freezes them (--freeze-through); "
                                + "freeze less, or train the head above a higher cut")
        }
        let tensors = Dictionary(head.stateDict.map { ($0.key, $0.tensor) }, uniquingKeysWith: { $1 })
        for layer in head.trainableLayers {
            guard let weight = tensors[layer + ".weight"], let bias = tensors[layer + ".bias"] else {
                throw TrainingError(.malformed, "--init-head \(path) lists \(layer) as trained but does not hold it")
            }
            try network.setParameters(path: layer, weight: weight, bias: bias)
        }
        return head.trainableLayers
    }
}
