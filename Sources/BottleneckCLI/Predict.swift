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
        their images, recursively. Exits non-zero when an image cannot be read (the others are still printed).

        Examples:
          bottleneck predict --model runs/shapes-head/model.h5 data/shapes/val/discs/discs_000.jpg
          bottleneck predict --model runs/pets-head/model.h5 --weights vgg16-397923af.pth --top-k 3 --format csv photos/
        """)

    @Option(name: .long, help: ArgumentHelp("The model.h5 of a training run.", valueName: "MODEL.h5")) var model: String
    @Option(name: .long, help: ArgumentHelp("Backbone weights (default: the file the model records).", valueName: "FILE|random"))
    var weights: String?
    @Option(help: "Classes shown per image.") var topK = 5
    @Option(help: "Images per forward pass.") var batchSize = 8
    @Option(help: "text, json or csv.") var format = PredictionFormat.text
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
                    printErr("failed: \(prediction.path): \(error)")
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
        if failed > 0 { throw CommandFailure("\(failed) of \(predictions.count) images could not be read") }
    }

    /// RFC 4180: quoted when it holds a comma, quote or line break, quotes doubled.
    private func csvField(_ text: String) -> String {
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0.isNewline }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
