/// Trains a new classifier head on a feature cache, in seconds: what `bottleneck train-head` does.
///
/// The head is the network above the cache's layer with fc8 replaced by a layer with one output per class. The
/// cache's val split validates when it has one; otherwise each image is held out by a hash of its class and path
/// (`validationFraction`). Training stops after `patience` epochs without a lower validation loss and keeps the
/// best epoch. The run directory receives `config.json`, `metrics.csv`, `model.h5` and `summary.json`.
///
/// ```swift
/// var training = HeadTraining(cache: "runs/pets-fc7.h5", runDirectory: "runs/pets-head")
/// training.optimizer = .adam
/// let result = try training.run()
/// print(result.validationAccuracy, result.modelPath)
/// ```
public struct HeadTraining: Sendable {
    /// torch.optim's optimizers, with torch's defaults.
    public enum Optimizer: String, Sendable, CaseIterable {
        /// SGD with momentum 0.9; learning rate 0.01 unless set.
        case sgd
        /// Learning rate 0.001 unless set.
        case adam
        /// Adam with decoupled weight decay 0.01; learning rate 0.001 unless set.
        case adamw
    }

    /// A cache written by ``FeatureExtraction``.
    public var cache: String
    /// Created if missing; a finished run already there is refused unless `overwrite`.
    public var runDirectory: String
    /// At most this many passes over the training rows (fewer when early stopping ends the run).
    public var epochs = 30
    /// Rows per optimizer step.
    public var batchSize = 64
    /// nil: the optimizer's default.
    public var learningRate: Double?
    /// SGD with momentum 0.9 unless set.
    public var optimizer = Optimizer.sgd
    /// Epochs without a lower validation loss before stopping; 0 never stops early.
    public var patience = 5
    /// The share of the images held out for validation when the cache has no val split.
    public var validationFraction = 0.2
    /// Of the new layer, the shuffling and the dropout masks: the same seed gives the same model.
    public var seed: UInt64 = 0
    /// Replace a finished run in `runDirectory` instead of refusing to.
    public var overwrite = false

    /// Training on `cache` into `runDirectory` with train-head's defaults.
    public init(cache: String, runDirectory: String) {
        self.cache = cache
        self.runDirectory = runDirectory
    }

    /// The kept (best) epoch's validation figures and where its model is.
    public struct Result: Sendable {
        /// From 1.
        public let bestEpoch: Int
        /// Epochs trained, the best and those after it until early stopping.
        public let epochsRun: Int
        /// Share of the validation rows the kept epoch classifies right.
        public let validationAccuracy: Double
        /// Mean cross-entropy of the kept epoch on the validation rows.
        public let validationLoss: Double
        /// `RUN_DIR/model.h5`: give it to ``ImageClassifier``.
        public let modelPath: String
    }

    /// Trains; `log` receives a line per epoch and what a person at the terminal would read.
    @discardableResult
    public func run(log: (String) -> Void = { _ in }) throws(BottleneckError) -> Result {
        try BottleneckError.wrapping {
            var job = HeadTrainingJob(cachePath: cache, runDirectory: runDirectory)
            job.settings.epochs = epochs
            job.settings.batchSize = batchSize
            job.settings.learningRate = learningRate
            job.settings.optimizer = HeadTrainingSettings.OptimizerKind(rawValue: optimizer.rawValue)!
            job.settings.patience = patience
            job.settings.validationFraction = validationFraction
            job.settings.seed = seed
            job.overwrite = overwrite
            let summary = try job.run(log: log)
            return Result(bestEpoch: summary.bestEpoch, epochsRun: summary.epochsRun, validationAccuracy: summary.bestValAccuracy,
                          validationLoss: summary.bestValLoss, modelPath: summary.model)
        }
    }
}
