import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The most probable classes of images, with their probabilities.",
        discussion: """
        Runs each image through the frozen network (with the backbone weights the model was trained on: the file it \
        records, or --weights, which must have the same sha256) and then the trained head. Folders are expanded to \
        their images, recursively. An image that cannot be read is reported with its reason in every format and the \
        others are predicted; the command fails only when none could be read (or, with --strict, when any could not).

        Examples:
          bottleneck predict --model runs/shapes-head data/shapes/val/discs
          bottleneck predict --model runs/pets-head/model.h5 --top-k 3 --format csv \\
              --weights vgg16-397923af.pth photos/
        """)

    @Option(name: .long, help: ArgumentHelp("A training run's directory or its model.h5.", valueName: "RUN_DIR|MODEL.h5"))
    var model: String
    @Option(name: .long, help: ArgumentHelp("Backbone weights (default: the file the model records).", valueName: "FILE|random"))
    var weights: String?
    @Option(parsing: .unconditional, help: "Classes shown per image.") var topK = 5
    @Option(parsing: .unconditional, help: "Images per forward pass.") var batchSize = 8
    @Option(help: "text, json or csv.") var format = PredictionFormat.text
    @Flag(help: "Exit non-zero if any image could not be read (default: only when none could).") var strict = false
    @Argument(help: ArgumentHelp("Image files (.jpg, .jpeg, .png) or folders.", valueName: "IMAGE")) var images: [String]

    enum PredictionFormat: String, ExpressibleByArgument, CaseIterable {
        case text, json, csv
    }
    @OptionGroup var threads: ThreadsOption

    func run() throws {
        threads.apply()
        var job = PredictionJob(modelPath: model, inputs: images)
        job.weights = weights.map { WeightsChoice.resolve($0).choice }
        job.topK = topK
        job.batchSize = batchSize
        if format == .csv { print("path,rank,class,probability,error") }
        let predictions = try job.run(log: printErr) { prediction in
            switch format {
            case .text:
                if let error = prediction.error {
                    print(prediction.path + "  failed: " + error)
                } else {
                    print(prediction.path + "  " + prediction.predictions
                        .map { String(format: "%@ %.4f", $0.className, $0.probability) }.joined(separator: "  "))
                }
            case .csv:
                if let error = prediction.error {
                    print("\(csvField(prediction.path)),,,,\(csvField(error))")
                }
                for (rank, ranked) in prediction.predictions.enumerated() {
                    print("\(csvField(prediction.path)),\(rank + 1),\(csvField(ranked.className)),\(ranked.probability),")
                }
            case .json:
                break
            }
        }
        if format == .json {
            print(String(decoding: try JSONEncoder.snakeCaseDocument().encode(predictions), as: UTF8.self))
        }
        let failed = predictions.count { $0.error != nil }
        if failed == predictions.count { throw CommandFailure("no image could be read (\(failed) failed)") }
        if failed > 0 {
            let message = "\(failed) of \(predictions.count) images could not be read"
            if strict { throw CommandFailure(message + " (--strict)") }
            printErr("predict: " + message + "; the others are predicted")
        }
    }

    /// RFC 4180: quoted when it holds a comma, quote or line break, quotes doubled.
    private func csvField(_ text: String) -> String {
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0.isNewline }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
