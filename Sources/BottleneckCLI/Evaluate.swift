import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Accuracy, per-class precision and recall, and the confusion matrix of a trained model.",
        discussion: """
        On a feature cache (--cache), made at the model's layer with its backbone weights and preprocessing (anything \
        else is refused), or on an image folder (--images, ImageFolder layout), which runs the frozen network first \
        with the weights the model records (or --weights, which must be the same file). Classes are matched by name. \
        By default the test split is evaluated when there is one, else val: the rows the model held out, by the \
        split it was trained with (the source's val/, else the model's hashed split, its seed and fraction, applied \
        to the source's rows). --split train scores the other side of that split, --split all every labeled row. \
        The output says which rows were scored. Images that cannot be read are skipped and listed, as extract \
        skips them; the command fails only when none could be read (or, with --strict, when any could not).

        Examples:
          bottleneck evaluate --model runs/shapes-head --cache runs/shapes-fc7.h5
          bottleneck evaluate --model runs/pets-head/model.h5 --images photos/pets \\
              --split all --format json
        """)

    @Option(name: .long, help: ArgumentHelp("A training run's directory or its model.h5.", valueName: "RUN_DIR|MODEL.h5"))
    var model: String
    @Option(name: .long, help: ArgumentHelp("A feature cache at the model's layer.", valueName: "CACHE.h5")) var cache: String?
    @Option(name: .long, help: ArgumentHelp("An image folder (ImageFolder layout).", valueName: "DIR")) var images: String?
    @Option(help: "train, val (the model's held-out rows), test or all (default: test, else val).") var split: String?
    @Option(name: .long, help: ArgumentHelp("Backbone weights for --images (default: the file the model records).",
                                            valueName: "FILE|random"))
    var weights: String?
    @Option(parsing: .unconditional, help: "Images per forward pass (--images).") var batchSize = 8
    @Option(help: "text or json.") var format = ReportFormat.text
    @Flag(help: "Accept a cache whose extraction did not finish.") var allowIncomplete = false
    @Flag(help: "Exit non-zero if any image could not be read (default: only when none could).") var strict = false

    enum ReportFormat: String, ExpressibleByArgument, CaseIterable {
        case text, json
    }

    func validate() throws {
        guard (cache == nil) != (images == nil) else { throw ValidationError("give exactly one of --cache CACHE.h5 and --images DIR") }
    }
    @OptionGroup var threads: ThreadsOption

    func run() throws {
        threads.apply()
        var job = EvaluationJob(modelPath: model, source: cache.map { .cache($0) } ?? .images(images!))
        job.split = split
        job.weights = weights.map { WeightsChoice.resolve($0).choice }
        job.batchSize = batchSize
        job.allowIncomplete = allowIncomplete
        let result = try job.run(log: printErr)
        let failures = result.failed.map { Failure(path: $0.path, reason: $0.reason) }
        switch format {
        case .text:
            print("evaluate: \(model) on \(cache ?? images!): scored \(result.metrics.count) \(result.scored)")
            print(result.metrics.report)
            if !failures.isEmpty {
                print("not scored: \(failures.count) images could not be read")
                for failure in failures { print("  \(failure.path): \(failure.reason)") }
            }
            printRandomWeightsNote(result.weights)
        case .json:
            let encoder = JSONEncoder.snakeCaseDocument()
            let report = EvaluationReport(model: model, data: cache ?? images!, split: result.split, scored: result.scored,
                                          rows: result.metrics.count,
                                          accuracy: result.metrics.accuracy, loss: result.metrics.meanLoss,
                                          perClass: result.metrics.perClass, classes: result.metrics.classes,
                                          confusionMatrix: result.metrics.confusion, failed: failures,
                                          backboneWeights: result.weights, pretrained: result.weights.isPretrained)
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        }
        if strict && !failures.isEmpty {
            throw CommandFailure("\(failures.count) of \(result.metrics.count + failures.count) images could not be read (--strict)")
        }
    }

    /// An image that could not be read, and why.
    private struct Failure: Encodable {
        var path, reason: String
    }

    private struct EvaluationReport: Encodable {
        var model, data, split, scored: String
        var rows: Int
        var accuracy, loss: Double
        var perClass: [ClassificationMetrics.ClassFigures]
        var classes: [String]
        var confusionMatrix: [[Int]]
        var failed: [Failure]
        var backboneWeights: WeightsIdentity
        /// false: the backbone was randomly initialised, and these figures say nothing about ImageNet transfer.
        var pretrained: Bool
    }
}
