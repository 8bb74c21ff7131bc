import Foundation

/// torch's `nn.CrossEntropyLoss()` (mean over the batch, no class weights) on raw logits, and the
/// softmax that turns logits into class probabilities for prediction. Each row's log-sum-exp is taken
/// around its largest logit and summed in Double, so large logits neither overflow nor lose the
/// label's term.
package enum SoftmaxCrossEntropy {
    package struct Loss: Sendable, Equatable {
        /// Mean over the batch of -log softmax(logits)[label].
        package let mean: Double
        /// Rows whose largest logit (the first of equals, as torch.argmax) is the label.
        package let correct: Int
        package let count: Int

        package init(mean: Double, correct: Int, count: Int) {
            self.mean = mean
            self.correct = correct
            self.count = count
        }

        /// False once a NaN or infinite logit made the loss NaN or infinite: the run has diverged, and
        /// its gradients must not reach the parameters.
        package var isFinite: Bool { mean.isFinite }
    }

    /// logits [N, K], labels [N] in 0..<K -> the loss, and dlogits [N, K] = (softmax(logits) - onehot(labels)) / N
    /// written into `gradLogits` (reshaped if it is not [N, K]).
    package static func lossAndGradient(logits: Tensor, labels: [Int32], gradLogits: inout Tensor) -> Loss {
        if gradLogits.shape != logits.shape { gradLogits = Tensor(zeros: logits.shape) }
        return gradLogits.data.withUnsafeMutableBufferPointer { gradients in
            loss(logits: logits, labels: labels, writingGradientTo: gradients.baseAddress)
        }
    }

    /// logits [N, K], labels [N] in 0..<K -> the loss, without a gradient (evaluation).
    package static func loss(logits: Tensor, labels: [Int32]) -> Loss {
        loss(logits: logits, labels: labels, writingGradientTo: nil)
    }

    /// logits [N, K] -> probabilities [N, K], each row softmax(logits[n]).
    package static func probabilities(_ logits: Tensor) -> Tensor {
        var probabilities = Tensor(zeros: [])
        self.probabilities(logits, into: &probabilities)
        return probabilities
    }

    /// logits [N, K] -> probabilities [N, K] in a caller-owned tensor (reshaped if it is not [N, K]).
    package static func probabilities(_ logits: Tensor, into probabilities: inout Tensor) {
        if probabilities.shape != logits.shape { probabilities = Tensor(zeros: logits.shape) }
        let classes = logits.shape[1]
        probabilities.data.withUnsafeMutableBufferPointer { out in
            forEachRow(of: logits) { row, rowLogits, logSumExp in
                let target = out.baseAddress! + row * classes
                for k in 0..<classes { target[k] = Float(exp(Double(rowLogits[k]) - logSumExp)) }
            }
        }
    }

    /// logits [N, K], labels [N] -> loss; gradient [N, K] = (softmax - onehot) / N when a target is given.
    private static func loss(logits: Tensor, labels: [Int32], writingGradientTo gradient: UnsafeMutablePointer<Float>?) -> Loss {
        let (batch, classes) = (logits.shape[0], logits.shape[1])
        precondition(batch > 0, "cross-entropy of an empty batch")
        precondition(labels.count == batch, "cross-entropy: \(batch) rows of logits but \(labels.count) labels")
        var total = 0.0
        var correct = 0
        let inverseBatch = 1 / Double(batch)
        forEachRow(of: logits) { row, rowLogits, logSumExp in
            let label = Int(labels[row])
            precondition(label >= 0 && label < classes, "cross-entropy: label \(label) is not a class index in 0..<\(classes)")
            total += logSumExp - Double(rowLogits[label])
            var best = 0
            for k in 1..<classes where rowLogits[k] > rowLogits[best] { best = k }
            if best == label { correct += 1 }
            if let gradient {
                let target = gradient + row * classes
                for k in 0..<classes {
                    let probability = exp(Double(rowLogits[k]) - logSumExp)
                    target[k] = Float((probability - (k == label ? 1 : 0)) * inverseBatch)
                }
            }
        }
        return Loss(mean: total * inverseBatch, correct: correct, count: batch)
    }

    /// Calls body(n, logits[n, :], log Σ_k exp(logits[n, k])) for each row of logits [N, K].
    private static func forEachRow(of logits: Tensor,
                                   _ body: (_ row: Int, _ logits: UnsafePointer<Float>, _ logSumExp: Double) -> Void) {
        precondition(logits.rank == 2 && logits.shape[1] > 0, "cross-entropy expects logits [N, K], got \(logits.shape)")
        let (batch, classes) = (logits.shape[0], logits.shape[1])
        logits.data.withUnsafeBufferPointer { values in
            for row in 0..<batch {
                let rowLogits = values.baseAddress! + row * classes
                var largest = -Float.infinity
                for k in 0..<classes { largest = max(largest, rowLogits[k]) }
                var sum = 0.0
                for k in 0..<classes { sum += exp(Double(rowLogits[k]) - Double(largest)) }
                body(row, rowLogits, Double(largest) + log(sum))
            }
        }
    }
}
