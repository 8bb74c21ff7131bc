import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a pipeline file: extract once, train the head, fine-tune for comparison, report.",
        discussion: """
        PIPELINE.yaml names the images, the weights, the backbone and cut layer, and the stages to run in order: \
        extract (the feature cache), train-head (a run on the cache), full-finetune (a run from the images) and \
        report (HTML and Markdown, of every training stage). Everything goes under 'out' (default runs/NAME): \
        features-LAYER.h5, one folder per training stage, report.html, report.md.

        Like make, a stage whose settings and inputs have not changed since it last finished, and whose output \
        is still there, is reused and says so; a stage that reruns makes the stages that read its output rerun. \
        A rerun keeps what the commands promise alone: an interrupted extract continues from its journal and \
        extracts only new images, an interrupted full-finetune continues from its checkpoint when its settings and \
        inputs are unchanged, and a failed stage keeps the record of its last good run. --force STAGE reruns one \
        stage from scratch (and so those after it that read it). Unknown keys, bad values and a missing \
        image folder or weights file are refused with the file's line number before anything runs. Paths in the file are relative to the \
        directory the command runs from. Files are written aside and renamed into place; an existing symbolic \
        link, device or FIFO where one goes is refused, never written through or replaced.

        Top-level keys: name, images, weights (FILE, random, random:SEED; default: torchvision's download if \
        found, else random with a warning), backbone (vgg16), layer (fc7), image_size (224), out, stages.
        Stage keys (each stage a '- stage: KIND' item, optional 'name:', a plain name: letters, digits, '-', '_', \
        '.', not starting with '.'):
          extract        batch_size, compress
        \(stageKeys("train-head", pipelineKeys(of: .trainHead)))
        \(stageKeys("full-finetune", pipelineKeys(of: .fullFinetune) + ["init_head (a train-head stage)"]))
          report         formats ([html, md])
        The keys mean what the flags of the same name (with dashes) mean in train-head and full-finetune.

        Examples:
          bottleneck run pipelines/demo.yaml
          bottleneck run pipelines/demo.yaml --force train-head
          bottleneck run pipelines/realistic.yaml --check
        """)

    private static func pipelineKeys(of command: TrainingSettingKey.Command) -> [String] {
        TrainingSettingKey.keys(of: command).filter(\.isPipelineKey).map(\.pipelineKey)
    }

    /// "  KIND           key, key, …" wrapped to fit 79 columns (argument-parser would rewrap a longer line from column 0),
    /// continuation lines under the first key.
    private static func stageKeys(_ kind: String, _ keys: [String]) -> String {
        let indent = String(repeating: " ", count: 17)
        var lines = ["  " + kind.padding(toLength: 15, withPad: " ", startingAt: 0)]
        for (index, key) in keys.enumerated() {
            let word = key + (index == keys.count - 1 ? "" : ",")
            if lines[lines.count - 1].count + word.count > 78 { lines.append(indent) }
            lines[lines.count - 1] += (lines[lines.count - 1].hasSuffix(" ") ? "" : " ") + word
        }
        return lines.joined(separator: "\n")
    }

    @Argument(help: ArgumentHelp("The pipeline file.", valueName: "PIPELINE.yaml")) var pipeline: String
    @Option(name: .long, help: ArgumentHelp("Rerun this stage (a name or a kind) from scratch, even when it is up to date; repeatable.",
                                            valueName: "STAGE"))
    var force: [String] = []
    @Flag(help: "Only read and validate the file and check that its images and weights exist; run nothing.") var check = false
    @OptionGroup var threads: ThreadsOption

    func run() throws {
        threads.apply()
        let definition = try Pipeline(contentsOf: pipeline)
        try definition.checkInputsExist()
        let runner = try PipelineRunner(pipeline: definition, force: force)
        if check {
            print("\(pipeline): valid; stages " + definition.stages.map { "\($0.name) (\($0.kind.rawValue))" }.joined(separator: ", ")
                  + "; output under \(definition.outputRoot)")
            return
        }
        let start = ContinuousClock.now
        let outcomes = try runner.run(log: printErr)
        print("run: \(definition.name) finished in \(Report.duration(start.secondsElapsed))")
        for outcome in outcomes {
            print("  \(outcome.name.padding(toLength: 10, withPad: " ", startingAt: 0)) "
                  + (outcome.reused ? "reused     " : Report.duration(outcome.seconds).padding(toLength: 11, withPad: " ", startingAt: 0))
                  + outcome.result)
        }
        if let report = outcomes.last(where: { $0.kind == .report }) {
            print("report: " + report.outputs.joined(separator: ", "))
        }
        if case .random(let seed) = WeightsChoice.resolve(definition.weights).choice { printRandomWeightsNote(.random(seed: seed)) }
    }
}
