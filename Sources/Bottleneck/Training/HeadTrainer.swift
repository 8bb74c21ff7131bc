import Foundation
import BottleneckKernels

/// Trains a head on cached activations: shuffled mini-batches, dropout active where torchvision's
/// classifier has it, one optimizer step per batch, validation after every epoch, early stopping on the
/// validation loss, and the best epoch's parameters kept.
///
/// The head splits in two. Its stem, the frozen layers below its first dropout or trainable layer,
/// gives the same output every epoch; `FeatureRows` runs it once per row. The rest runs every step:
///
///     gather rows (× drop mask)  [B, width]
///     → linear / relu / dropout … (frozen below `trainableFrom`, learning from it up)
///     → logits [B, K] → cross-entropy → backward down to `trainableFrom` → optimizer
///
/// Each dropout mask comes from `TrainingRandomness.dropoutGenerator(seed, epoch, row, layer)`, so a row
/// is dropped the same way whichever batch or thread it lands in, and the same way as the frozen
/// network in train mode would drop it if run from the image with that generator.
package final class HeadTrainer {
    package struct Outcome: Sendable {
        package var epochs: [EpochRecord]
        /// From 1: the epoch whose parameters the network now holds.
        package var bestEpoch: Int
        package var stoppedEarly: Bool
        /// Validation figures of the kept parameters.
        package var validation: ClassificationMetrics
        /// Seconds spent in optimizer steps (gather, forward, backward, update), over all epochs.
        package var stepSeconds: Double
        package var samplesTrained: Int

        package var samplesPerSecond: Double { stepSeconds > 0 ? Double(samplesTrained) / stepSeconds : 0 }
    }

    package private(set) var network: HeadNetwork
    package let settings: HeadTrainingSettings
    /// Position of the lowest layer that learns; it and every linear above it are trained.
    package let trainableFrom: Int
    /// The frozen layers that run once per row.
    package let stemPositions: Range<Int>
    /// The layers that run every step.
    package var stepPositions: Range<Int> { stemPositions.upperBound..<network.positions.upperBound }
    /// Positions of the trained layers, in order.
    package let trainedPositions: [Int]

    /// One layer of the step part, stages[i] at position stemPositions.upperBound + i; `input` and `output`
    /// index `activations` (ReLU runs in place).
    private struct Stage {
        let position: Int
        let input: Int
        let output: Int
        /// A dropout below a trained layer keeps its mask for the backward pass.
        let keepsMask: Bool
    }

    private let stages: [Stage]
    private var optimizer: any Optimizer
    /// Every buffer is kept across steps; a short last batch reshapes them.
    private var activations: [Tensor]
    private var masks: [Tensor]
    private var gradient = Tensor(zeros: [])
    private var spareGradient = Tensor(zeros: [])
    /// By stage, filled for the trained linears.
    private var gradWeights: [Tensor]
    private var gradBiases: [Tensor]

    /// Layers at least this large (in × out) gain from OpenBLAS's own threads; smaller gemms lose more
    /// to its spinning threads than they gain, and are cut into blocks shared over the cores here instead,
    /// as the per-row work is.
    private static let threadedGemmParameters = 1 << 20
    /// How the step's gemms run: whole when a layer is big enough for OpenBLAS's threads, else in blocks.
    private let gemmSplit: GemmSplit

    package init(network: HeadNetwork, settings: HeadTrainingSettings) throws {
        try settings.validate()
        let trainableFrom = try network.linearPosition(named: settings.trainFrom)
        let positions = network.positions
        let stemEnd = positions.first { position in
            switch network.module(at: position) {
            case .dropout: return true
            case .linear: return position >= trainableFrom
            default: return false
            }
        }!
        var stages: [Stage] = []
        var current = 0
        for position in stemEnd..<positions.upperBound {
            let module = network.module(at: position)
            switch module {
            case .relu:
                stages.append(Stage(position: position, input: current, output: current, keepsMask: false))
            case .dropout where position == stemEnd:
                // Applied while the rows are gathered into activations[0].
                stages.append(Stage(position: position, input: 0, output: 0, keepsMask: false))
            case .dropout, .linear:
                let keepsMask = if case .dropout = module { position > trainableFrom } else { false }
                stages.append(Stage(position: position, input: current, output: current + 1, keepsMask: keepsMask))
                current += 1
            case .conv, .maxPool, .adaptiveAvgPool:
                preconditionFailure("convs and pools lie below fc6, so always in the stem")
            }
        }
        self.network = network
        self.settings = settings
        self.trainableFrom = trainableFrom
        self.stemPositions = positions.lowerBound..<stemEnd
        self.trainedPositions = stages.map(\.position).filter { position in
            if case .linear = network.module(at: position) { position >= trainableFrom } else { false }
        }
        self.stages = stages
        optimizer = settings.makeOptimizer()
        let bigGemm = stages.contains { stage in
            if case .linear(let linear) = network.module(at: stage.position) {
                linear.weight.count >= Self.threadedGemmParameters
            } else {
                false
            }
        }
        gemmSplit = bigGemm ? .whole : .blocks(threads: settings.threads)
        activations = Array(repeating: Tensor(zeros: []), count: current + 1)
        masks = Array(repeating: Tensor(zeros: []), count: stages.count)
        gradWeights = Array(repeating: Tensor(zeros: []), count: stages.count)
        gradBiases = gradWeights
    }

    /// [n, ...cut activation] -> [n, width] through the stem, what `FeatureRows` stores.
    package func applyStem(_ x: Tensor) -> Tensor {
        let out = network.forward(x, positions: stemPositions)
        return out.reshaped([out.shape[0], out.count / max(out.shape[0], 1)])
    }

    /// Floats per row entering the step part, for rows of `activationShape`.
    package func stemOutputWidth(activationShape: [Int]) -> Int {
        applyStem(Tensor(zeros: [1] + activationShape)).count
    }

    /// Trains for up to `settings.epochs` epochs on `split` (cache row indices, whose classes are
    /// `labels[row]`), calling `onEpoch` after each. On return the network holds the best epoch's parameters.
    func train(rows: FeatureRows, split: TrainingSplit, labels: [Int32], classes: [String],
               onEpoch: (EpochRecord) throws -> Void) throws -> Outcome {
        guard case .blocks = gemmSplit else {
            return try trainEpochs(rows: rows, split: split, labels: labels, classes: classes, onEpoch: onEpoch)
        }
        return try BLASThreads.withSingleThreadedGemm {
            try trainEpochs(rows: rows, split: split, labels: labels, classes: classes, onEpoch: onEpoch)
        }
    }

    private func trainEpochs(rows: FeatureRows, split: TrainingSplit, labels: [Int32], classes: [String],
                             onEpoch: (EpochRecord) throws -> Void) throws -> Outcome {
        let schedule = settings.learningRateSchedule
        let baseRate = settings.resolvedLearningRate
        var records: [EpochRecord] = []
        var best = BestEpoch()
        var kept: (modules: [VGG.Module], metrics: ClassificationMetrics)?
        var epochsSinceBest = 0
        var stoppedEarly = false
        var stepSeconds = 0.0
        var samplesTrained = 0
        for epoch in 0..<settings.epochs {
            let epochStart = ContinuousClock.now
            let learningRate = schedule.learningRate(base: baseRate, epoch: epoch)
            let pass = rows.trainingPass(split.trainRows, seed: settings.seed, epoch: epoch)
            var lossSum = 0.0
            var correct = 0
            let stepsStart = ContinuousClock.now
            for batchStart in stride(from: 0, to: pass.order.count, by: settings.batchSize) {
                let positions = batchStart..<min(batchStart + settings.batchSize, pass.order.count)
                let loss = try step(rows: rows, pass: pass, positions: positions, labels: labels, epoch: epoch,
                                    learningRate: learningRate, batchNumber: batchStart / settings.batchSize + 1)
                lossSum += loss.mean * Double(loss.count)
                correct += loss.correct
            }
            let epochStepSeconds = stepsStart.secondsElapsed
            stepSeconds += epochStepSeconds
            samplesTrained += pass.order.count

            var validation = ClassificationMetrics(classes: classes)
            try evaluate(rows: rows, pass: rows.evaluationPass(split.validationRows, epoch: epoch), labels: labels, into: &validation)
            guard validation.meanLoss.isFinite else {
                throw TrainingError(.diverged, "training diverged in epoch \(epoch + 1): the validation loss became "
                                    + "\(validation.meanLoss); lower --lr (it was \(learningRate))")
            }
            let record = EpochRecord(epoch: epoch + 1, trainLoss: lossSum / Double(pass.order.count),
                                     trainAccuracy: Double(correct) / Double(pass.order.count),
                                     validationLoss: validation.meanLoss, validationAccuracy: validation.accuracy,
                                     learningRate: learningRate, seconds: epochStart.secondsElapsed,
                                     trainSeconds: epochStepSeconds)
            records.append(record)
            try onEpoch(record)
            if best.offer(epoch: record.epoch, validationLoss: record.validationLoss) {
                kept = (network.modules, validation)
                epochsSinceBest = 0
            } else {
                epochsSinceBest += 1
                if settings.patience > 0 && epochsSinceBest >= settings.patience {
                    stoppedEarly = true
                    break
                }
            }
        }
        // A non-finite validation loss throws above, so the first epoch was kept.
        network.modules = kept!.modules
        return Outcome(epochs: records, bestEpoch: best.epoch!, stoppedEarly: stoppedEarly, validation: kept!.metrics,
                       stepSeconds: stepSeconds, samplesTrained: samplesTrained)
    }

    /// One optimizer step on the rows at `positions` of `pass`, [B, width] -> logits [B, K] -> gradients of
    /// the trained layers -> their update; returns the batch's loss as trained.
    private func step(rows: FeatureRows, pass: FeatureRows.Pass, positions: Range<Int>, labels: [Int32], epoch: Int,
                      learningRate: Double, batchNumber: Int) throws -> SoftmaxCrossEntropy.Loss {
        let batch = positions.count
        let rowIDs = pass.order[positions]
        let pointers = try rows.rowPointers(pass, positions)
        let width = rows.width
        if activations[0].shape != [batch, width] { activations[0] = Tensor(zeros: [batch, width]) }
        let fusedDropout: (layer: Dropout, position: Int)? = if case .dropout(let dropout) = network.module(at: stages[0].position) {
            (dropout, stages[0].position)
        } else {
            nil
        }
        activations[0].data.withUnsafeMutableBufferPointer { gathered in
            copyRows(count: batch, width: width, source: { pointers[$0] }, destination: gathered.baseAddress!, mask: nil,
                     dropout: fusedDropout, rowIDs: rowIDs, epoch: epoch)
        }

        // Its own walk, not `HeadNetwork.forward`: it keeps each layer's output for backward and drops rows by their seeds.
        for (index, stage) in stages.enumerated() {
            switch network.module(at: stage.position) {
            case .linear(let linear):
                let input = activations[stage.input]
                linear.forward(input, into: &activations[stage.output], split: gemmSplit)
            case .relu:
                ReLU.forward(&activations[stage.output])
            case .dropout(let dropout) where index > 0:
                let input = activations[stage.input]
                let rowWidth = input.count / batch
                if activations[stage.output].shape != input.shape { activations[stage.output] = Tensor(zeros: input.shape) }
                if stage.keepsMask && masks[index].shape != input.shape { masks[index] = Tensor(zeros: input.shape) }
                input.data.withUnsafeBufferPointer { source in
                    activations[stage.output].data.withUnsafeMutableBufferPointer { destination in
                        masks[index].data.withUnsafeMutableBufferPointer { mask in
                            copyRows(count: batch, width: rowWidth, source: { source.baseAddress! + $0 * rowWidth },
                                     destination: destination.baseAddress!, mask: stage.keepsMask ? mask.baseAddress : nil,
                                     dropout: (dropout, stage.position), rowIDs: rowIDs, epoch: epoch)
                        }
                    }
                }
            case .dropout, .conv, .maxPool, .adaptiveAvgPool:
                break
            }
        }

        let batchLabels = rowIDs.map { labels[$0] }
        let loss = SoftmaxCrossEntropy.lossAndGradient(logits: activations[stages.last!.output], labels: batchLabels,
                                                       gradLogits: &gradient)
        guard loss.isFinite else {
            throw TrainingError(.diverged, "training diverged in epoch \(epoch + 1), batch \(batchNumber): the loss became "
                                + "\(loss.mean); lower --lr (it was \(learningRate))")
        }

        backward: for (index, stage) in stages.enumerated().reversed() {
            switch network.module(at: stage.position) {
            case .linear(let linear):
                let input = activations[stage.input]
                linear.parameterGradients(input: input, gradOutput: gradient, weight: &gradWeights[index], bias: &gradBiases[index],
                                          split: gemmSplit)
                guard stage.position > trainableFrom else { break backward }
                linear.inputGradient(gradOutput: gradient, into: &spareGradient, split: gemmSplit)
                swap(&gradient, &spareGradient)
            case .relu:
                ReLU.backward(output: activations[stage.output], gradOutput: &gradient)
            case .dropout(let dropout):
                dropout.backward(gradOutput: &gradient, mask: masks[index])
            case .conv, .maxPool, .adaptiveAvgPool:
                preconditionFailure("convs and pools lie below fc6, so always in the stem")
            }
        }
        for (slot, position) in trainedPositions.enumerated() {
            let index = position - stemPositions.upperBound
            optimizer.step(&network.modules, at: position - network.firstPosition, gradWeight: gradWeights[index],
                           gradBias: gradBiases[index], slot: 2 * slot, learningRate: learningRate)
        }
        return loss
    }

    /// Evaluation mode over the rows of `pass`, chunks of [n, width] -> logits [n, K], added to `metrics`.
    private func evaluate(rows: FeatureRows, pass: FeatureRows.Pass, labels: [Int32],
                          into metrics: inout ClassificationMetrics) throws {
        let chunk = min(256, rows.windowRows)
        let width = rows.width
        for start in stride(from: 0, to: pass.order.count, by: chunk) {
            let positions = start..<min(start + chunk, pass.order.count)
            let pointers = try rows.rowPointers(pass, positions)
            let input = Tensor(shape: [positions.count, width]) { values in
                copyRows(count: positions.count, width: width, source: { pointers[$0] }, destination: values.baseAddress!,
                         mask: nil, dropout: nil, rowIDs: pass.order[positions], epoch: 0)
            }
            metrics.add(logits: network.forward(input, positions: stepPositions), labels: pass.order[positions].map { labels[$0] })
        }
    }

    /// source(i) [width] -> destination row i, for i in 0..<count: copied, or multiplied by the dropout
    /// mask of the layer at `dropout.position` for cache row rowIDs[i] in `epoch` (and the mask kept in
    /// `mask` when given). Rows are split across `settings.threads` cores.
    private func copyRows(count: Int, width: Int, source: (Int) -> UnsafePointer<Float>,
                          destination: UnsafeMutablePointer<Float>, mask: UnsafeMutablePointer<Float>?,
                          dropout: (layer: Dropout, position: Int)?, rowIDs: ArraySlice<Int>, epoch: Int) {
        let parts = min(settings.threads, count)
        let seed = settings.seed
        let firstID = rowIDs.startIndex
        parallelFor(parts) { part in
            for row in (part * count / parts)..<((part + 1) * count / parts) {
                let target = UnsafeMutableBufferPointer(start: destination + row * width, count: width)
                guard let dropout else {
                    target.baseAddress!.update(from: source(row), count: width)
                    continue
                }
                var generator = TrainingRandomness.dropoutGenerator(seed: seed, epoch: epoch, row: rowIDs[firstID + row],
                                                                    layerPosition: dropout.position)
                dropout.layer.forwardTraining(UnsafeBufferPointer(start: source(row), count: width), into: target,
                                              mask: mask.map { UnsafeMutableBufferPointer(start: $0 + row * width, count: width) },
                                              generator: &generator)
            }
        }
    }
}
