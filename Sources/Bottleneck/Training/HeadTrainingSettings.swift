import Foundation
import BottleneckKernels

/// Every setting of a train-head run, as `config.json` records it (after defaults are resolved).
package struct HeadTrainingSettings: Codable, Sendable, Equatable {
    package enum OptimizerKind: String, Codable, SettingChoice, Sendable {
        case sgd, adam, adamw
    }

    package enum ScheduleKind: String, Codable, SettingChoice, Sendable {
        case constant, step, cosine
    }

    /// What the training rows of a cache with augmented views (`extract --views K`) train on.
    package enum ViewsChoice: String, Codable, SettingChoice, Sendable {
        /// Each epoch, one of the row's K views (see `FeatureRows`); rows without views take their eval view.
        case augmented
        /// The eval view alone, as a cache without views.
        case evalOnly = "none"
    }

    package var epochs = 30
    package var batchSize = 64
    /// nil: 0.01 for SGD, 0.001 for Adam and AdamW.
    package var learningRate: Double?
    package var optimizer = OptimizerKind.sgd
    /// SGD only.
    package var momentum = 0.9
    /// nil: torch's default, 0 for SGD and Adam, 0.01 for AdamW.
    package var weightDecay: Double?
    package var schedule = ScheduleKind.constant
    /// StepLR's step size in epochs; nil: a third of the epochs.
    package var stepSize: Int?
    /// StepLR's factor.
    package var gamma = 0.1
    /// Epochs without a lower validation loss before stopping; 0 never stops early. The best epoch's
    /// parameters are kept either way.
    package var patience = 5
    /// The share of the images held out for validation when the cache has no val split (see `TrainingSplit`).
    package var validationFraction = 0.2
    /// Of the new layer, the shuffling and the dropout masks.
    package var seed: UInt64 = 0
    /// Of the validation split alone, so that runs of different `seed`s validate on the same images.
    package var splitSeed: UInt64 = 0
    /// torchvision's classifier dropout probability.
    package var dropout = 0.5
    /// The lowest layer that learns; the layers between the cut and it stay frozen.
    package var trainFrom = "fc8"
    package var views = ViewsChoice.augmented
    /// Cores the per-row work (gathering rows, dropout) is split across.
    package var threads = availableCores
    /// Above this many bytes of rows, training streams the cache instead of reading it once.
    package var memoryBudgetBytes = Int(ProcessInfo.processInfo.physicalMemory / 2)

    package init() {}

    var resolvedLearningRate: Double { learningRate ?? (optimizer == .sgd ? 0.01 : 0.001) }
    var resolvedWeightDecay: Double { weightDecay ?? (optimizer == .adamw ? 0.01 : 0) }
    var resolvedStepSize: Int { stepSize ?? max(1, epochs / 3) }

    /// The settings with every default made explicit, as a run records them.
    package var resolved: HeadTrainingSettings {
        var copy = self
        copy.learningRate = resolvedLearningRate
        copy.weightDecay = resolvedWeightDecay
        if schedule == .step { copy.stepSize = resolvedStepSize }
        return copy
    }

    func makeOptimizer() -> any Optimizer {
        switch optimizer {
        case .sgd: SGD(momentum: momentum, weightDecay: resolvedWeightDecay)
        case .adam: Adam(weightDecay: resolvedWeightDecay)
        case .adamw: Adam.adamW(weightDecay: resolvedWeightDecay)
        }
    }

    var learningRateSchedule: LearningRateSchedule {
        switch schedule {
        case .constant: .constant
        case .step: .step(stepSize: resolvedStepSize, gamma: gamma)
        case .cosine: .cosine(epochs: epochs)
        }
    }

    /// Refuses values that cannot train, naming the setting.
    package func validate() throws {
        func check(_ condition: Bool, _ key: TrainingSettingKey, _ problem: String) throws {
            if !condition { throw SettingError(key: key, problem) }
        }
        try check(epochs >= 1, .epochs, "must be at least 1, got \(epochs)")
        try check(batchSize >= 1, .batchSize, "must be at least 1, got \(batchSize)")
        try check(resolvedLearningRate > 0 && resolvedLearningRate.isFinite, .lr, "must be a positive number, got \(resolvedLearningRate)")
        try check(momentum >= 0 && momentum < 1, .momentum, "must be in [0, 1), got \(momentum)")
        try check(resolvedWeightDecay >= 0, .weightDecay, "must not be negative, got \(resolvedWeightDecay)")
        try check(resolvedStepSize >= 1, .stepSize, "must be at least 1 epoch, got \(resolvedStepSize)")
        try check(gamma > 0, .gamma, "must be positive, got \(gamma)")
        try check(patience >= 0, .patience, "must not be negative, got \(patience)")
        try check(validationFraction > 0 && validationFraction < 1, .valFraction,
                  "must be between 0 and 1 (exclusive), got \(validationFraction)")
        try check(dropout >= 0 && dropout < 1, .dropout, "must be in [0, 1), got \(dropout)")
        try check(threads >= 1, .threads, "must be at least 1, got \(threads)")
        try check(memoryBudgetBytes > 0, .memoryBudgetMb, "must be positive")
    }
}
