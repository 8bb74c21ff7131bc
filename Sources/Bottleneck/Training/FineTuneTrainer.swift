import Foundation
import BottleneckKernels

/// Trains VGG16 end to end (or above `--freeze-through`) from the images, the full-finetune counterpart of
/// `HeadTrainer`: each epoch shuffles the training images, decodes and augments them a batch ahead on
/// BatchDecoder's thread, takes one optimizer step per batch, validates, and keeps the best epoch by `BestEpoch`.
///
///     images [B, 3, S, S] → features → avgpool → classifier → logits [B, K] → cross-entropy
///     → backward down to the lowest trained layer → optimizer (the head's layers at --lr, the rest scaled)
///
/// The best epoch's parameters are not copied in memory (a second VGG16 is 500 MB): `onCheckpoint` is told
/// which epoch is the new best, and the job writes them to model.h5.
final class FineTuneTrainer {
    struct Outcome: Sendable {
        /// Every finished epoch, those before a `resume` included.
        package var epochs: [EpochRecord]
        /// From 1: the epoch whose parameters `onCheckpoint` last called the best.
        package var bestEpoch: Int
        /// Validation figures of the kept parameters; nil when the best epoch ran before a `resume`.
        package var validation: ClassificationMetrics?
        /// Seconds spent in optimizer steps (forward, backward, update) in this invocation; decoding overlaps them.
        var stepSeconds: Double
        var samplesTrained: Int

        package var samplesPerSecond: Double { stepSeconds > 0 ? Double(samplesTrained) / stepSeconds : 0 }
    }

    package private(set) var network: FineTuneNetwork
    package let settings: FineTuneSettings
    /// How validation sees an image, and training when it does not augment.
    package let evaluation: Preprocessing
    let augmentation: Augmentation?
    /// Images that could not be read, in training or validation; each is warned about once.
    private(set) var failedImages: Set<String> = []
    private let folder: ImageFolder
    private let split: TrainingSplit
    /// Layers trained at the full --lr; the others at --backbone-lr-mult of it.
    private let headLayers: Set<String>
    private var optimizer: any Optimizer
    private var history: [EpochRecord] = []
    private var best = BestEpoch()
    /// The ranks this trainer is one of, each training on its share of every batch; nil: this process alone.
    private let group: ProcessGroup?

    /// `network` is taken, not shared: nothing else may keep its tensors, so the first update changes them in
    /// place instead of copying the whole network.
    package init(network: consuming FineTuneNetwork, settings: FineTuneSettings, folder: ImageFolder, split: TrainingSplit,
                 headLayers: [String], normalization: InputNormalization?, group: ProcessGroup? = nil, log: (String) -> Void) {
        self.network = network
        self.group = group
        self.settings = settings
        self.folder = folder
        self.split = split
        self.headLayers = Set(headLayers)
        evaluation = settings.evaluationPreprocessing.adopting(normalization, log: log)
        augmentation = settings.augment == .standard ? Augmentation(matching: evaluation) : nil
        optimizer = settings.makeOptimizer()
    }

    /// Continues an interrupted run from its checkpoint (read from `path`): parameters, optimizer state, epochs.
    func resume(from checkpoint: FineTuneCheckpoint, path: String) throws {
        for (key, tensor) in checkpoint.stateDict where key.hasSuffix(".weight") {
            let layer = String(key.dropLast(".weight".count))
            guard let bias = checkpoint.stateDict.first(where: { $0.key == layer + ".bias" }) else {
                throw TrainingError(.malformed, "the checkpoint has \(key) but no \(layer).bias")
            }
            try network.setParameters(path: layer, weight: tensor, bias: bias.tensor)
        }
        try checkpoint.checkOptimizerState(against: network.stateDict, path: path)
        optimizer.state = checkpoint.optimizerState
        history = checkpoint.history
        best = checkpoint.bestEpoch == 0 ? BestEpoch()
            : BestEpoch(epoch: checkpoint.bestEpoch, validationLoss: history[checkpoint.bestEpoch - 1].validationLoss)
    }

    /// Runs the epochs not yet done. After each: `onEpoch` with its figures, then `onCheckpoint` with the
    /// checkpoint to keep (`checkpointPath`, which the divergence message names) and whether the epoch is the
    /// new best, whose parameters the checkpoint holds.
    func train(checkpointPath: String, log: (String) -> Void, onEpoch: (EpochRecord) throws -> Void,
               onCheckpoint: (_ checkpoint: FineTuneCheckpoint, _ newBest: Bool) throws -> Void) throws -> Outcome {
        let settingsJSON = FineTuneCheckpoint.settingsJSON(settings)
        let itemIndex = Dictionary(uniqueKeysWithValues: folder.items.enumerated().map { ($1.path, $0) })
        let rate = { [headLayers, settings] (layer: LayerInfo) in
            settings.learningRate * (headLayers.contains(layer.path) ? 1 : settings.backboneLearningRateMultiplier)
        }
        var kept: String {
            history.isEmpty ? "no checkpoint was written (no epoch finished)"
                : "the checkpoint of epoch \(history.count) is kept in \(checkpointPath) (--resume continues from it)"
        }
        var stepSeconds = 0.0
        var samplesTrained = 0
        var bestValidation: ClassificationMetrics?
        for epoch in history.count..<settings.epochs {
            let epochStart = ContinuousClock.now
            let (decoder, steps) = trainingBatches(epoch: epoch)
            defer { decoder.cancel() }
            // A rank whose images ran out (its share of the last batch is empty, or unreadable images made the decoder
            // take later ones) still joins every step's sums, with nothing of its own.
            let emptyBatch = BatchDecoder.Batch(images: Tensor(zeros: [0] + evaluation.outputShape), items: [], identities: [], failed: [])
            // The global batch's figures, so rank 0's alone.
            let progress = group?.isCoordinator == false ? nil : ProgressReporter(label: "epoch \(epoch + 1) images",
                                                                                  total: split.trainRows.count)
            var trainLoss = 0.0
            var trainCorrect = 0
            var trainCount = 0
            var step = 0
            var epochStepSeconds = 0.0
            while let batch = decoder.next() ?? (group != nil && step < steps ? emptyBatch : nil) {
                skip(batch.failed, log: log)
                guard !batch.items.isEmpty || group != nil else { continue }
                step += 1
                let rows = batch.items.map { itemIndex[$0.path]! }
                let stepStart = ContinuousClock.now
                let outcome = network.trainStep(images: batch.images, labels: batch.items.map(\.label), optimizer: &optimizer,
                                                learningRate: rate, group: group) { [seed = settings.seed] row, position in
                    TrainingRandomness.dropoutGenerator(seed: seed, epoch: epoch, row: rows[row], layerPosition: position)
                }
                epochStepSeconds += stepStart.secondsElapsed
                guard outcome.loss.isFinite else {
                    progress?.finish()
                    // A rank may have had no images of its own in the step.
                    let images = batch.items.first.map { " (images \($0.path) …)" } ?? ""
                    throw TrainingError(.diverged, "the loss became \(outcome.loss.mean) at epoch \(epoch + 1), step \(step)\(images): "
                                        + "training diverged, nothing of this step was applied; \(kept); lower --lr")
                }
                trainLoss += outcome.loss.mean * Double(outcome.loss.count)
                trainCorrect += outcome.loss.correct
                trainCount += outcome.loss.count
                samplesTrained += outcome.loss.count
                progress?.update(done: trainCount + failedImages.count, extra: String(format: "loss %.4f", trainLoss / Double(trainCount)))
            }
            progress?.finish()
            guard trainCount > 0 else { throw TrainingError(.invalidInput, "no training image could be read") }
            let validation = try validate(network, log: log)
            guard validation.meanLoss.isFinite else {
                throw TrainingError(.diverged, "training diverged in epoch \(epoch + 1): the validation loss became "
                                    + "\(validation.meanLoss); \(kept); lower --lr (it was \(settings.learningRate))")
            }
            let seen = Double(trainCount)
            let record = EpochRecord(epoch: epoch + 1, trainLoss: trainLoss / seen, trainAccuracy: Double(trainCorrect) / seen,
                                     validationLoss: validation.meanLoss, validationAccuracy: validation.accuracy,
                                     learningRate: settings.learningRate, seconds: epochStart.secondsElapsed,
                                     trainSeconds: epochStepSeconds)
            history.append(record)
            stepSeconds += epochStepSeconds
            try onEpoch(record)
            let newBest = best.offer(epoch: record.epoch, validationLoss: record.validationLoss)
            if newBest { bestValidation = validation }
            try onCheckpoint(FineTuneCheckpoint(epochsDone: epoch + 1, settingsJSON: settingsJSON, history: history,
                                                bestEpoch: best.epoch!, stateDict: network.stateDict, optimizerState: optimizer.state),
                             newBest)
        }
        return Outcome(epochs: history, bestEpoch: best.epoch!, validation: bestValidation, stepSeconds: stepSeconds,
                       samplesTrained: samplesTrained)
    }

    /// Epoch `epoch`'s training images in its shuffled order, augmented with draws of (seed, epoch, image), and the
    /// number of global batches. A rank decodes only its share of each batch: contiguous slices as even as can be,
    /// the first ranks one image more, so its batches are its slices in turn. Crops, flips and dropout masks are
    /// drawn per image (TrainingRandomness), never per rank or batch, so the ranks' slices together are exactly
    /// the batch one process would train on.
    private func trainingBatches(epoch: Int) -> (BatchDecoder, steps: Int) {
        let globalOrder = TrainingRandomness.shuffled(split.trainRows, seed: settings.seed, epoch: epoch)
        let steps = (globalOrder.count + settings.batchSize - 1) / settings.batchSize
        var order = globalOrder
        var batchSize = settings.batchSize
        if let group {
            // The last batch's shares are never larger than the others', so a fixed batch size cuts the slices apart.
            batchSize = Self.share(of: settings.batchSize, rank: group.rank, ranks: group.size).count
            order = stride(from: 0, to: globalOrder.count, by: settings.batchSize).flatMap { start in
                let batch = globalOrder[start..<min(start + settings.batchSize, globalOrder.count)]
                return Self.share(of: batch.count, rank: group.rank, ranks: group.size).map { batch[start + $0] }
            }
        }
        let transform: BatchDecoder.Transform
        if let augmentation {
            let seed = settings.seed
            transform = { [order] image, index, _, slot in
                var generator = SeededGenerator(seed: TrainingRandomness.seed(seed, .augmentation, UInt64(epoch), UInt64(order[index])))
                augmentation.write(image, generator: &generator, into: slot)
            }
        } else {
            transform = { [evaluation] image, _, _, slot in evaluation.write(image, into: slot) }
        }
        return (BatchDecoder(folder: folder, items: order.map { folder.items[$0] }, batchSize: batchSize,
                             imageShape: evaluation.outputShape, transform: transform), steps)
    }

    /// Rank `rank`'s positions in a batch of `count` images split over `ranks`.
    static func share(of count: Int, rank: Int, ranks: Int) -> Range<Int> {
        let (base, extra) = count.quotientAndRemainder(dividingBy: ranks)
        let start = rank * base + min(rank, extra)
        return start..<(start + base + (rank < extra ? 1 : 0))
    }

    /// The validation images through `network` in evaluation mode; those that cannot be read are skipped. Under MPI
    /// each rank scores its share of them and the figures are summed, so every rank gets the whole set's.
    func validate(_ network: FineTuneNetwork, log: (String) -> Void) throws -> ClassificationMetrics {
        var metrics = ClassificationMetrics(classes: folder.classes)
        let rows = group.map { split.validationRows[Self.share(of: split.validationRows.count, rank: $0.rank, ranks: $0.size)] }
            ?? split.validationRows[...]
        let decoder = BatchDecoder(folder: folder, items: rows.map { folder.items[$0] }, batchSize: settings.batchSize,
                                   preprocessing: evaluation)
        defer { decoder.cancel() }
        while let batch = decoder.next() {
            skip(batch.failed, log: log)
            guard !batch.items.isEmpty else { continue }
            metrics.add(logits: network.logits(batch.images), labels: batch.items.map(\.label))
        }
        guard let group else { return metrics }
        // Validation ends every epoch and the run: where each rank learns the images the others could not read (in
        // training too), so that rank 0's summary lists them all.
        var unreadable = folder.items.map { failedImages.contains($0.path) ? 1.0 : 0 }
        group.sum(&unreadable, "the unreadable images")
        for (item, count) in zip(folder.items, unreadable) where count > 0 { failedImages.insert(item.path) }
        return metrics.summed(over: group)
    }

    private func skip(_ failures: [(path: String, reason: String)], log: (String) -> Void) {
        for failure in failures where failedImages.insert(failure.path).inserted {
            log("warning: skipping \(failure.path): \(failure.reason)")
        }
    }
}
