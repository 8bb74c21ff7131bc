import Foundation
import BottleneckKernels

/// `bottleneck predict`: the most probable classes of each image, through the frozen prefix (with
/// the backbone weights the model was trained on) and the trained head.
package struct PredictionJob: Sendable {
    package var modelPath: String
    /// Image files, or folders whose images (recursively, sorted) are all predicted.
    package var inputs: [String]
    /// Backbone weights; nil: the ones the model records.
    package var weights: WeightsChoice?
    package var topK = 5
    package var batchSize = 8
    /// Bytes a run may plan to use; nil: MemAvailable from /proc/meminfo.
    var memoryLimitBytes: Int?

    package init(modelPath: String, inputs: [String]) {
        self.modelPath = modelPath
        self.inputs = inputs
    }

    package struct Prediction: Codable, Sendable, Equatable {
        package var path: String
        /// The top classes, most probable first; empty when the image could not be read.
        package var predictions: [ClassProbability]
        package var error: String?
    }

    /// Predicts every image, handing each result to `report` as its batch finishes (in input order);
    /// `log` gets what the scan of a folder left out.
    package func run(log: (String) -> Void = { _ in }, report: (Prediction) -> Void) throws -> [Prediction] {
        guard topK >= 1 else { throw TrainingError(.invalidInput, "--top-k must be at least 1") }
        if let problem = MemoryEstimate.batchSizeProblem(batchSize) { throw TrainingError(.invalidInput, problem) }
        var warnings: [String] = []
        let paths = try expandedInputs(warnings: &warnings)
        for warning in warnings { log("warning: \(warning)") }
        guard !paths.isEmpty else { throw TrainingError(.invalidInput, "no images given (.jpg, .jpeg or .png files or folders)") }
        let model = try TrainedModel(contentsOf: modelPath)
        let largestBatch = min(batchSize, paths.count)
        if let refusal = MemoryEstimate.refusal(forward: model.config, imageShape: model.preprocessing.outputShape,
                                                batchSize: largestBatch, limit: memoryLimitBytes) {
            throw TrainingError(.invalidInput, refusal)
        }
        let classifier = try ImageClassifier(model: model, weights: weights)
        if let note = model.weights.randomWeightsNote { log(note) }
        let preprocessing = model.preprocessing
        var results: [Prediction] = []
        for start in stride(from: 0, to: paths.count, by: batchSize) {
            let batchPaths = Array(paths[start..<min(start + batchSize, paths.count)])
            var decoded: [Int] = []
            var errors: [Int: String] = [:]
            var pixels = [Float](repeating: 0, count: batchPaths.count * preprocessing.outputCount)
            pixels.withUnsafeMutableBufferPointer { slots in
                for (index, path) in batchPaths.enumerated() {
                    do throws(ImageDecodingError) {
                        preprocessing.write(try ImageDecoder.decode(path: path), into: slots, slot: decoded.count)
                        decoded.append(index)
                    } catch {
                        errors[index] = error.reason
                    }
                }
            }
            pixels.removeLast((batchPaths.count - decoded.count) * preprocessing.outputCount)
            var probabilities = Tensor(zeros: [0, model.classes.count])
            if !decoded.isEmpty {
                let images = Tensor(shape: [decoded.count] + preprocessing.outputShape, data: pixels)
                probabilities = SoftmaxCrossEntropy.probabilities(try classifier.logits(images))
            }
            let row = Dictionary(uniqueKeysWithValues: decoded.enumerated().map { ($1, $0) })
            for (index, path) in batchPaths.enumerated() {
                let prediction = row[index].map {
                    Prediction(path: path,
                               predictions: Array(ImageClassifier.ranked(probabilities, row: $0, classes: model.classes).prefix(topK)))
                } ?? Prediction(path: path, predictions: [], error: errors[index])
                report(prediction)
                results.append(prediction)
            }
        }
        return results
    }

    /// Files as given; folders replaced by their images, recursively, in the order ImageFolder lists them.
    private func expandedInputs(warnings: inout [String]) throws -> [String] {
        var paths: [String] = []
        for input in inputs {
            guard DirectoryListing.FolderIdentity(path: input) != nil else {
                paths.append(input)
                continue
            }
            paths += try ImageFolder.imageFiles(under: input, warnings: &warnings).map { (input as NSString).appendingPathComponent($0) }
        }
        return paths
    }
}
