import Foundation
import BottleneckKernels

/// One epoch of a training run (train-head or full-finetune): what metrics.csv holds a line of, what a
/// fine-tune checkpoint keeps of the epochs so far, and what the report charts.
package struct EpochRecord: Codable, Sendable, Equatable {
    /// From 1.
    package var epoch: Int
    /// Mean over the epoch's batches as trained (dropout on), weighted by batch size.
    var trainLoss: Double
    var trainAccuracy: Double
    /// After the epoch, evaluation mode.
    var validationLoss: Double
    var validationAccuracy: Double
    package var learningRate: Double
    /// The whole epoch: training and validation.
    package var seconds: Double
    /// The epoch's optimizer steps alone; nil when read back from metrics.csv, which does not keep it.
    var trainSeconds: Double?

    package init(epoch: Int, trainLoss: Double, trainAccuracy: Double, validationLoss: Double, validationAccuracy: Double,
                 learningRate: Double, seconds: Double, trainSeconds: Double?) {
        self.epoch = epoch
        self.trainLoss = trainLoss
        self.trainAccuracy = trainAccuracy
        self.validationLoss = validationLoss
        self.validationAccuracy = validationAccuracy
        self.learningRate = learningRate
        self.seconds = seconds
        self.trainSeconds = trainSeconds
    }

    /// metrics.csv's header; the report reads the file by these names, in whatever order they come.
    static let csvColumns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]

    /// The line of metrics.csv, in `csvColumns` order.
    var csvFields: [String] {
        [String(epoch), "\(trainLoss)", "\(trainAccuracy)", "\(validationLoss)", "\(validationAccuracy)", "\(learningRate)",
         String(format: "%.4f", seconds)]
    }

    /// A line of metrics.csv by column name; `values` holds every one of `csvColumns` (the reader checks the header).
    init(csvValues values: [String: Double]) {
        let value = { (name: String) in values[name]! }
        self.init(epoch: Int(value("epoch")), trainLoss: value("train_loss"), trainAccuracy: value("train_acc"),
                  validationLoss: value("val_loss"), validationAccuracy: value("val_acc"), learningRate: value("lr"),
                  seconds: value("seconds"), trainSeconds: nil)
    }
}
