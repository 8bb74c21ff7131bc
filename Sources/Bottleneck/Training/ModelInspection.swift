import Foundation
import BottleneckKernels

/// What `bottleneck inspect model.h5` tells about a trained model: what made it, what it takes and, from the
/// summary.json beside it when there is one, how well it validated.
package struct ModelInspection: Encodable, Sendable {
    package var path: String
    /// "head" (train-head) or "finetune" (full-finetune).
    package var mode: String
    package var backbone: String
    package var classes: [String]
    package var cutLayer: String
    package var cutLayerPath: String
    /// The side of the square images the model takes.
    package var imageSize: Int
    package var preprocess: String
    package var weightsSHA256: String
    package var weightsSource: String
    package var trainableLayers: [String]
    package var dropout: Double
    /// From the run's summary.json: nil when the model is not in a finished run directory.
    package var bestValAccuracy: Double?
    package var bestEpoch: Int?

    /// nil when `path` is a state-dict file but not a model (plain weights); throws what reading a model throws.
    package init?(path: String) throws {
        guard try TrainedModel.isModel(at: path) else { return nil }
        let path = try TrainedModel.file(at: path)
        let model = try TrainedModel(contentsOf: path)
        self.path = path
        mode = model.mode.rawValue
        backbone = model.config.name
        classes = model.classes
        cutLayer = model.cutName
        cutLayerPath = model.cut.layer.path
        imageSize = model.preprocessing.crop
        preprocess = model.preprocessing.jsonDescription
        weightsSHA256 = model.weights.fingerprint
        weightsSource = model.weights.source
        trainableLayers = model.trainableLayers
        dropout = model.dropout
        let summaryPath = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent(RunDirectory.summaryFile)
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        // A summary.json that does not read is left out: the model describes itself without it.
        if let data = FileManager.default.contents(atPath: summaryPath), let best = try? decoder.decode(SummaryFigures.self, from: data) {
            bestValAccuracy = best.bestValAccuracy
            bestEpoch = best.bestEpoch
        }
    }

    /// The keys of `TrainingSummary` that the inspection shows.
    private struct SummaryFigures: Decodable {
        var bestEpoch: Int
        var bestValAccuracy: Double
    }

    package var report: String {
        let weights = WeightsIdentity(source: weightsSource, fingerprint: weightsSHA256)
        var lines = [
            "model: \(path) (" + (mode == TrainedModel.Mode.head.rawValue ? "a head trained by train-head on cached features"
                                                                          : "a network fine-tuned by full-finetune") + ")",
            "mode: \(mode)",
            "backbone: \(backbone)",
            "classes: \(classes.count) (\(classes.joined(separator: ", ")))",
            "cut layer: \(cutLayer) (\(cutLayerPath))",
            "image size: \(imageSize)",
            "preprocess: \(preprocess)",
            weights.isPretrained ? "trained on weights: sha256 \(weightsSHA256) (from \(weightsSource))"
                                 : "trained on weights: \(weightsSHA256) (random initialisation, NOT pretrained)",
            "trained layers: \(trainableLayers.joined(separator: ", "))",
            "dropout: \(dropout)",
        ]
        if let bestValAccuracy, let bestEpoch {
            lines.append(String(format: "validation accuracy: %.4f (best epoch %d, from %@)", bestValAccuracy, bestEpoch,
                                RunDirectory.summaryFile))
        } else {
            lines.append("validation accuracy: not recorded (no \(RunDirectory.summaryFile) beside the model)")
        }
        return lines.joined(separator: "\n")
    }
}
