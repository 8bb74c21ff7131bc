import Foundation
import BottleneckKernels

/// Every setting of a full-finetune run, as `config.json` and the checkpoint record them; a resumed run
/// must have the same ones.
package struct FineTuneSettings: Codable, Sendable, Equatable {
    package enum AugmentationKind: String, Codable, SettingChoice, Sendable {
        /// RandomResizedCrop + RandomHorizontalFlip on training images.
        case standard
        /// Training images get the evaluation transform.
        case none
    }

    package var epochs = 10
    package var batchSize = 8
    package var learningRate = 1e-3
    package var optimizer = HeadTrainingSettings.OptimizerKind.sgd
    /// SGD only.
    package var momentum = 0.9
    /// nil: torch's default, 0 for SGD and Adam, 0.01 for AdamW.
    package var weightDecay: Double?
    package var augment = AugmentationKind.standard
    package var dropout = 0.5
    package var seed: UInt64 = 0
    /// The highest frozen layer (`conv3_3`, `features.16`, `fc7`); nil: everything trains.
    package var freezeThrough: String?
    /// The pretrained layers learn at `learningRate × backboneLearningRateMultiplier`, the new head at `learningRate`.
    package var backboneLearningRateMultiplier = 1.0
    /// Side of the square images the network sees (torchvision's 224); evaluation resizes to 256/224 of it.
    package var imageSize = 224
    /// The share of the images held out for validation when the folder has no val split (see `TrainingSplit`).
    package var validationFraction = 0.2
    /// Of the validation split alone, so that runs of different `seed`s validate on the same images.
    package var splitSeed: UInt64 = 0

    package init() {}

    var resolvedWeightDecay: Double { weightDecay ?? (optimizer == .adamw ? 0.01 : 0) }

    /// The settings with every default made explicit, as a run records them.
    package var resolved: FineTuneSettings {
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
    func makeOptimizer() -> any Optimizer { headEquivalent.makeOptimizer() }

    /// torchvision's eval transform scaled to `imageSize`: Resize(round(S · 256/224)), CenterCrop(S).
    var evaluationPreprocessing: Preprocessing {
        .evaluation(imageSize: imageSize)
    }

    /// Refuses values that cannot train, naming the setting.
    package func validate() throws {
        try headEquivalent.validate()
        guard backboneLearningRateMultiplier >= 0 && backboneLearningRateMultiplier.isFinite else {
            throw SettingError(key: .backboneLrMult, "must be a number >= 0, got \(backboneLearningRateMultiplier)")
        }
        guard Preprocessing.imageSizes.contains(imageSize) else {
            throw SettingError(key: .imageSize, "\(Preprocessing.imageSizeRequirement), got \(imageSize)")
        }
    }
}
