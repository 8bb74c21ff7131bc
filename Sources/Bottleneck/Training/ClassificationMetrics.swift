import Foundation
import BottleneckKernels

/// Loss, accuracy, confusion matrix and per-class precision and recall of a classifier over some rows,
/// accumulated batch by batch.
package struct ClassificationMetrics: Codable, Sendable, Equatable {
    package struct ClassFigures: Codable, Sendable, Equatable {
        package var name: String
        /// Of the rows predicted as this class, the share that are; nil when none was predicted.
        package var precision: Double?
        /// Of the rows of this class, the share predicted as it; nil when there are none.
        package var recall: Double?
        var f1: Double?
        /// Rows of this class.
        var support: Int
    }

    package let classes: [String]
    /// confusion[true class][predicted class], counts of rows.
    package private(set) var confusion: [[Int]]
    package private(set) var count = 0
    private(set) var lossSum = 0.0

    package init(classes: [String]) {
        self.classes = classes
        confusion = Array(repeating: Array(repeating: 0, count: classes.count), count: classes.count)
    }

    /// logits [N, K], labels [N] in 0..<K: adds the rows' cross-entropy and their predictions (the
    /// first largest logit, as torch.argmax).
    mutating func add(logits: Tensor, labels: [Int32]) {
        let classCount = classes.count
        precondition(logits.shape == [labels.count, classCount],
                     "metrics: logits \(logits.shape) for \(labels.count) labels, \(classCount) classes")
        guard !labels.isEmpty else { return }
        lossSum += SoftmaxCrossEntropy.loss(logits: logits, labels: labels).mean * Double(labels.count)
        logits.data.withUnsafeBufferPointer { values in
            for (row, label) in labels.enumerated() {
                let rowLogits = values.baseAddress! + row * classCount
                var predicted = 0
                for k in 1..<classCount where rowLogits[k] > rowLogits[predicted] { predicted = k }
                confusion[Int(label)][predicted] += 1
            }
        }
        count += labels.count
    }

    /// The figures of every rank's rows together, on every rank: counts and loss sums add up.
    func summed(over group: ProcessGroup) -> ClassificationMetrics {
        let classCount = classes.count
        var figures = confusion.flatMap { $0.map(Double.init) } + [Double(count), lossSum]
        group.sum(&figures, "the validation figures")
        var total = self
        total.confusion = (0..<classCount).map { row in (0..<classCount).map { Int(figures[row * classCount + $0]) } }
        total.count = Int(figures[classCount * classCount])
        total.lossSum = figures[classCount * classCount + 1]
        return total
    }

    var correct: Int { classes.indices.reduce(0) { $0 + confusion[$1][$1] } }
    package var accuracy: Double { count > 0 ? Double(correct) / Double(count) : 0 }
    package var meanLoss: Double { count > 0 ? lossSum / Double(count) : .nan }

    package var perClass: [ClassFigures] {
        classes.indices.map { k in
            let support = confusion[k].reduce(0, +)
            let predicted = classes.indices.reduce(0) { $0 + confusion[$1][k] }
            let precision = predicted > 0 ? Double(confusion[k][k]) / Double(predicted) : nil
            let recall = support > 0 ? Double(confusion[k][k]) / Double(support) : nil
            var f1: Double?
            if let precision, let recall { f1 = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0 }
            return ClassFigures(name: classes[k], precision: precision, recall: recall, f1: f1, support: support)
        }
    }

    /// Accuracy, the per-class table and the confusion matrix (rows: true class, columns: predicted), for people.
    package var report: String {
        let nameWidth = max(12, (classes.map(\.count).max() ?? 0) + 2)
        func padded(_ text: String, _ width: Int) -> String {
            text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
        }
        func figure(_ value: Double?) -> String { value.map { String(format: "%.3f", $0) } ?? "-" }
        var lines = [String(format: "accuracy: %.4f (%d of %d), loss %.4f", accuracy, correct, count, meanLoss), ""]
        lines.append(padded("class", nameWidth) + "precision  recall     f1      support")
        for figures in perClass {
            lines.append(padded(figures.name, nameWidth) + padded(figure(figures.precision), 11) + padded(figure(figures.recall), 11)
                         + padded(figure(figures.f1), 8) + String(format: "%7d", figures.support))
        }
        lines.append("")
        lines.append("confusion matrix (rows: true class, columns: predicted)")
        let columnWidth = max(6, (classes.map(\.count).max() ?? 0) + 1)
        func rightAligned(_ text: String) -> String {
            String(repeating: " ", count: max(0, columnWidth - text.count)) + text
        }
        lines.append(padded("", nameWidth) + classes.map(rightAligned).joined())
        for (k, name) in classes.enumerated() {
            lines.append(padded(name, nameWidth) + confusion[k].map { rightAligned(String($0)) }.joined())
        }
        return lines.joined(separator: "\n")
    }
}
