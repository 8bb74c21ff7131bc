import Foundation
import BottleneckKernels

/// `summary.json`, the last file of a finished train-head or full-finetune run, and what the report reads of
/// it. Both jobs write the first keys; each job's own keys are nil in the other's, and a nil key is left out
/// of the file, so each job's summary.json holds exactly its keys.
package struct TrainingSummary: Codable, Sendable {
    package var bestEpoch: Int
    package var bestValAccuracy: Double
    package var bestValLoss: Double
    package var epochsRun: Int
    /// Which rows or images validated: report refuses to compare runs whose records differ. Every run writes
    /// it; nil in a run made before runs recorded it.
    package var split: TrainingSplit.Record?
    /// 1 / classes: what guessing gives.
    package var chanceAccuracy: Double
    package var classes: [String]
    package var perClass: [ClassificationMetrics.ClassFigures]
    /// confusion_matrix[true class][predicted class] on the validation rows or images, best epoch.
    package var confusionMatrix: [[Int]]
    /// The whole command: reading, training, validating, writing.
    package var wallSeconds: Double
    package var model: String
    /// The backbone weights the run started from (for a head: the ones its cache was extracted with). nil in a
    /// run made before runs recorded it.
    package var backboneWeights: WeightsIdentity?

    // train-head

    var stoppedEarly: Bool?
    var trainRows: Int?
    var valRows: Int?
    /// The share of validation rows in its largest class: what always answering that class gives.
    var majorityClassAccuracy: Double?
    /// Training rows through optimizer steps per second of those steps.
    package var samplesPerSecond: Double?
    /// "memory" (rows read once) or "streaming" (windows of chunks per pass).
    var dataLoading: String?

    // full-finetune

    var trainImages: Int?
    /// Validation images scored (those that could be read).
    var valImages: Int?
    /// nil (left out) when nothing is frozen.
    var frozenThrough: String?
    var trainableLayers: [String]?
    package var trainableParameters: Int?
    /// Training images through optimizer steps per second of those steps (decoding overlapped).
    var trainImagesPerSecond: Double?
    package var peakResidentBytes: Int?
    var failedImages: [String]?

    /// Training samples (cached rows or images) through optimizer steps per second, whichever job wrote it.
    package var throughput: Double { samplesPerSecond ?? trainImagesPerSecond ?? 0 }
}
