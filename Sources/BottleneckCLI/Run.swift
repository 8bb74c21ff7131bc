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
        found, else random with a warning), backbone (vgg16), layer (fc7), image_size (224), out, stages, \
        executor (local or slurm), slurm.
        Stage keys (each stage a '- stage: KIND' item, optional 'name:', a plain name: letters, digits, '-', '_', \
        '.', not starting with '.'):
          extract        batch_size, compress
        \(stageKeys("train-head", pipelineKeys(of: .trainHead)))
        \(stageKeys("full-finetune", pipelineKeys(of: .fullFinetune) + ["init_head (a train-head stage)"]))
          report         formats ([html, md])
        The keys mean what the flags of the same name (with dashes) mean in train-head and full-finetune.

        On Slurm ('executor: slurm'), run submits the stages as jobs and waits: the extract stage as a job array \
        of 'run FILE --stage extract --shard I/N' and a job that merges the shards, each later stage as a job \
        after the ones it reads (--dependency=afterok). Each job runs one stage of the same file with --stage, \
        reused when up to date, as here; an up-to-date stage is not submitted. Run prints each job's id and \
        state; a failed job cancels the rest and makes run fail with its id, state and log. The 'slurm' keys: \
        shards (1), partition, account, time (sbatch --time, e.g. 02:00:00), cpus_per_task (also the jobs' \
        --threads), mem (e.g. 4G), max_wait (the most time run waits: 1-00:00:00), logs (OUT/slurm-logs). \
        For example:
          executor: slurm
          slurm:
            shards: 8
            partition: cpu
            time: 02:00:00
            cpus_per_task: 8

        Examples:
          bottleneck run pipelines/demo.yaml
          bottleneck run pipelines/demo.yaml --force train-head
          bottleneck run pipelines/realistic.yaml --check
          bottleneck run pipelines/slurm.yaml        (on a Slurm login node)
          bottleneck run pipelines/slurm.yaml --stage head
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
    @Option(help: ArgumentHelp("Run only this stage (a name or a kind), here, as a whole run would in its turn: reused when up to "
                               + "date. What each Slurm job runs.", valueName: "STAGE"))
    var stage: String?
    @Option(help: ArgumentHelp("With --stage extract: extract only shard I of N, into OUT/shards/ (a Slurm array task); "
                               + "--stage extract without it merges the N shards.", valueName: "I/N"))
    var shard: String?
    @OptionGroup var threads: ThreadsOption

    func validate() throws {
        if shard != nil && stage == nil { throw ValidationError("--shard I/N goes with --stage extract") }
    }

    func run() throws {
        threads.apply()
        let definition = try Pipeline(contentsOf: pipeline)
        try definition.checkInputsExist()
        let runner = try PipelineRunner(pipeline: definition, force: force)
        if check {
            let executor = if case .slurm(let settings) = definition.executor { "; on Slurm, extract in \(settings.shards) shards" } else { "" }
            print("\(pipeline): valid; stages " + definition.stages.map { "\($0.name) (\($0.kind.rawValue))" }.joined(separator: ", ")
                  + "; output under \(definition.outputRoot)" + executor)
            return
        }
        if let stage {
            if let shard {
                print("run: " + (try runner.extractShard(try Shard(shard), stage: stage, log: printErr)))
            } else {
                print("run: " + (try runner.run(stage: stage, log: printErr)).result)
            }
            return
        }
        let start = ContinuousClock.now
        let outcomes = if case .slurm = definition.executor {
            // The jobs run this very binary, by its absolute path.
            try SlurmExecutor(runner: runner, tool: Bundle.main.executableURL!.path).run(log: printErr)
        } else {
            try runner.run(log: printErr)
        }
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
