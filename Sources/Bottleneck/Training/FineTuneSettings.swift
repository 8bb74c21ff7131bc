import Foundation

/// Every setting of a full-finetune run, as `config.json` and the checkpoint record them; a resumed run
/// must have the same ones.
public struct FineTuneSettings: Codable, Sendable, Equatable {
    public enum AugmentationKind: String, Codable, CaseIterable, Sendable {
        /// RandomResizedCrop + RandomHorizontalFlip on training images.
        case standard
        /// Training images get the evaluation transform.
        case none
    }

    public var epochs = 10
    public var batchSize = 8
    public var learningRate = 1e-3
    public var optimizer = HeadTrainingSettings.OptimizerKind.sgd
    /// SGD only.
    public var momentum = 0.9
    /// nil: torch's default, 0 for SGD and Adam, 0.01 for AdamW.
    public var weightDecay: Double?
    public var augment = AugmentationKind.standard
    public var dropout = 0.5
    public var seed: UInt64 = 0
    /// The highest frozen layer (`conv3_3`, `features.16`, `fc7`); nil: everything trains.
    public var freezeThrough: String?
    /// The pretrained layers learn at `learningRate × backboneLearningRateMultiplier`, the new head at `learningRate`.
    public var backboneLearningRateMultiplier = 1.0
    /// Side of the square images the network sees (torchvision's 224); evaluation resizes to 256/224 of it.
    public var imageSize = 224
    /// The share of the images held out for validation when the folder has no val split (see `TrainingSplit`).
    public var validationFraction = 0.2
    /// Of the validation split alone, so that runs of different `seed`s validate on the same images.
    public var splitSeed: UInt64 = 0

    public init() {}

    public var resolvedWeightDecay: Double { weightDecay ?? (optimizer == .adamw ? 0.01 : 0) }

    /// The settings with every default made explicit, as a run records them.
    public var resolved: FineTuneSettings {
        var copy = self
        copy.weightDecay = resolvedWeightDecay
        return copy
    }

    /// The train-head settings these share: their optimizer and the checks of the flags both commands have.
    private var headEquivalent: HeadTrainingSettings {
        var head = HeadTrainingSettings()
        head.epochs = epochs
        head.batchSize = batchSize
        head.learningRate = learningRate
        head.optimizer = optimizer
        head.momentum = momentum
        head.weightDecay = resolvedWeightDecay
        head.dropout = dropout
        head.validationFraction = validationFraction
        return head
    }

    /// torch's optimizer for these settings, the same one train-head builds.
    public func makeOptimizer() -> any Optimizer { headEquivalent.makeOptimizer() }

    /// torchvision's eval transform scaled to `imageSize`: Resize(round(S · 256/224)), CenterCrop(S).
    public var evaluationPreprocessing: Preprocessing {
        Preprocessing(resize: Int((Double(imageSize) * 256 / 224).rounded()), crop: imageSize)
    }

    /// Refuses values that cannot train, naming the flag.
    public func validate() throws {
        try headEquivalent.validate()
        guard backboneLearningRateMultiplier >= 0 && backboneLearningRateMultiplier.isFinite else {
            throw TrainingError(.invalidInput, "--backbone-lr-mult must be a number >= 0, got \(backboneLearningRateMultiplier)")
        }
        guard (32...Preprocessing.largestImageSize).contains(imageSize) else {
            throw TrainingError(.invalidInput, "--image-size must be between 32 (five 2x2 pools) and \(Preprocessing.largestImageSize), "
                                + "got \(imageSize)")
        }
    }
}
