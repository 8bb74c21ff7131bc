import ArgumentParser
@testable import Bottleneck
@testable import BottleneckCLI
import Foundation
import XCTest
import BottleneckKernels

/// train-head's and full-finetune's command lines: flags into settings with each command's defaults, bad values
/// refused naming the flag, `--help` from the settings table, and the same training keys as a pipeline stage.
final class CommandLineTests: XCTestCase {
    private typealias Command = TrainingSettingKey.Command

    /// The arguments each command needs besides its settings.
    private static let required: [Command: [String]] = [
        .trainHead: ["--cache", "c.h5", "--out", "run"],
        .fullFinetune: ["--images", "data", "--out", "run", "--weights", "random"],
    ]

    /// A valid value other than both commands' defaults, written alike on the command line and in a pipeline file.
    private static func sample(_ key: TrainingSettingKey) -> String {
        switch key {
        case .epochs: "7"
        case .batchSize: "5"
        case .lr: "0.05"
        case .optimizer: "adamw"
        case .momentum: "0.8"
        case .weightDecay: "0.02"
        case .schedule: "step"
        case .stepSize: "2"
        case .gamma: "0.5"
        case .patience: "3"
        case .valFraction: "0.25"
        case .seed: "11"
        case .splitSeed: "12"
        case .dropout: "0.3"
        case .trainFrom: "fc7"
        case .threads: "\(availableCores + 1)"
        case .memoryBudgetMb: "64"
        case .augment: "none"
        case .freezeThrough: "conv3_3"
        case .backboneLrMult: "0.1"
        case .imageSize: "64"
        case .views: "none"
        }
    }

    private func headSettings(_ arguments: [String]) throws -> HeadTrainingSettings {
        try TrainHead.parse(Self.required[.trainHead]! + arguments).job().settings
    }

    private func finetuneSettings(_ arguments: [String]) throws -> FineTuneSettings {
        try FullFinetune.parse(Self.required[.fullFinetune]! + arguments).job().settings
    }

    /// The stage's settings in a pipeline file of an extract stage and one stage of `command` with `lines`.
    private func pipelineStage(_ command: Command, _ lines: [String]) throws -> Pipeline.Stage.Settings {
        let kind = command == .trainHead ? "train-head" : "full-finetune"
        let yaml = "images: d\nstages:\n  - stage: extract\n  - stage: \(kind)\n" + lines.map { "    " + $0 + "\n" }.joined()
        return try Pipeline(yaml: yaml, path: "p.yaml").stages[1].settings
    }

    func testNoSettingFlagsGiveEachCommandsDefaults() throws {
        let head = try headSettings([])
        XCTAssertEqual(head, HeadTrainingSettings())
        XCTAssertEqual([head.epochs, head.batchSize, head.patience], [30, 64, 5])
        XCTAssertNil(head.learningRate)
        XCTAssertNil(head.weightDecay)
        XCTAssertEqual(head.optimizer, .sgd)
        XCTAssertEqual([head.momentum, head.validationFraction, head.dropout, head.gamma], [0.9, 0.2, 0.5, 0.1])
        XCTAssertEqual(head.trainFrom, "fc8")

        let finetune = try finetuneSettings([])
        XCTAssertEqual(finetune, FineTuneSettings())
        XCTAssertEqual([finetune.epochs, finetune.batchSize, finetune.imageSize], [10, 8, 224])
        XCTAssertEqual(finetune.learningRate, 1e-3)
        XCTAssertNil(finetune.weightDecay)
        XCTAssertEqual([finetune.momentum, finetune.validationFraction, finetune.dropout, finetune.backboneLearningRateMultiplier],
                       [0.9, 0.2, 0.5, 1])
    }

    /// Each flag sets its setting, and the pipeline key of the same name sets it to the same value.
    func testEachFlagSetsWhatItsPipelineKeySets() throws {
        for key in TrainingSettingKey.trainHead {
            let fromFlag = try headSettings([key.flag, Self.sample(key)])
            XCTAssertNotEqual(fromFlag, HeadTrainingSettings(), "\(key.flag) changes nothing")
            guard key.isPipelineKey else { continue }
            guard case .trainHead(let fromFile) = try pipelineStage(.trainHead, ["\(key.pipelineKey): \(Self.sample(key))"]) else {
                return XCTFail("not a train-head stage")
            }
            XCTAssertEqual(fromFlag, fromFile, key.pipelineKey)
        }
        for key in TrainingSettingKey.fullFinetune {
            let fromFlag = try finetuneSettings([key.flag, Self.sample(key)])
            XCTAssertNotEqual(fromFlag, FineTuneSettings(), "\(key.flag) changes nothing")
            guard key.isPipelineKey else { continue }
            guard case .fullFinetune(let fromFile, _) = try pipelineStage(.fullFinetune, ["\(key.pipelineKey): \(Self.sample(key))"]) else {
                return XCTFail("not a full-finetune stage")
            }
            XCTAssertEqual(fromFlag, fromFile, key.pipelineKey)
        }
        let head = try headSettings([TrainingSettingKey.memoryBudgetMb.flag, "64"])
        XCTAssertEqual(head.memoryBudgetBytes, 64 << 20)
    }

    /// A command's option flags in its `--help`.
    private func flags(of command: ParsableCommand.Type) -> Set<String> {
        let help = BottleneckCommand.helpMessage(for: command, columns: 1000)
        return Set(help.split(separator: "\n").compactMap { line in
            line.hasPrefix("  --") ? String(line.dropFirst(2).prefix { $0 != " " }) : nil
        })
    }

    /// The command line and a pipeline stage take the table's keys: no more (a stage refuses the other command's),
    /// no fewer, and no setting flag outside the table.
    func testCommandLineAndPipelineTakeTheSameTrainingKeys() throws {
        XCTAssertEqual(flags(of: TrainHead.self).subtracting(["--cache", "--out", "--weights", "--allow-incomplete", "--overwrite",
                                                              "--help", "--version"]),
                       Set(TrainingSettingKey.trainHead.map(\.flag)))
        XCTAssertEqual(flags(of: FullFinetune.self).subtracting(["--images", "--out", "--weights", "--init-head", "--resume", "--overwrite",
                                                                 "--threads", "--collective-timeout", "--help", "--version"]),
                       Set(TrainingSettingKey.fullFinetune.map(\.flag)))
        XCTAssertEqual(Set(Pipeline.headFields.keys), Set(TrainingSettingKey.trainHead.filter(\.isPipelineKey)))
        XCTAssertEqual(Set(Pipeline.finetuneFields.keys), Set(TrainingSettingKey.fullFinetune.filter(\.isPipelineKey)))
        for command in [Command.trainHead, .fullFinetune] {
            for key in TrainingSettingKey.allCases where !(TrainingSettingKey.keys(of: command).contains(key) && key.isPipelineKey) {
                XCTAssertThrowsError(try pipelineStage(command, ["\(key.pipelineKey): \(Self.sample(key))"]), key.pipelineKey) { error in
                    XCTAssertTrue("\(error)".contains("p.yaml:5: unknown key '\(key.pipelineKey)'"), "\(error)")
                }
            }
        }
    }

    /// The flag as the command line spells it, the key as the file does; the same problem after either.
    func testBadValuesNameTheFlagOrTheKey() throws {
        let refused: [(Command, key: TrainingSettingKey, value: String, problem: String)] = [
            (.trainHead, .weightDecay, "-1", "must not be negative, got -1.0"),
            (.trainHead, .momentum, "-0.5", "must be in [0, 1), got -0.5"),
            (.trainHead, .epochs, "0", "must be at least 1, got 0"),
            (.trainHead, .valFraction, "1", "must be between 0 and 1 (exclusive), got 1.0"),
            (.fullFinetune, .backboneLrMult, "-1", "must be a number >= 0, got -1.0"),
            (.fullFinetune, .imageSize, "16", "must be between 32 (five 2x2 pools) and \(Preprocessing.largestImageSize), got 16"),
            (.fullFinetune, .dropout, "1", "must be in [0, 1), got 1.0"),
        ]
        for (command, key, value, problem) in refused {
            let argument = "\(key.flag)=\(value)"
            XCTAssertThrowsError(try command == .trainHead ? TrainHead.parse(Self.required[command]! + [argument]).run()
                                 : FullFinetune.parse(Self.required[command]! + [argument]).run()) { error in
                XCTAssertEqual(BottleneckCommand.message(for: error), "\(key.flag) \(problem)")
            }
            let stageName = command == .trainHead ? "head" : "finetune"
            XCTAssertThrowsError(try pipelineStage(command, ["\(key.pipelineKey): \(value)"])) { error in
                XCTAssertEqual("\(error)", "p.yaml:4: stage \(stageName): \(key.pipelineKey) \(problem)")
            }
        }
        let memory = TrainingSettingKey.memoryBudgetMb
        XCTAssertThrowsError(try TrainHead.parse(Self.required[.trainHead]! + [memory.flag, "0"]).run()) { error in
            XCTAssertEqual(BottleneckCommand.message(for: error), "--memory-budget-mb must be positive")
        }
    }

    /// Both commands' `--help` say every shared option with that command's help and default.
    func testHelpOfBothCommandsHasEverySharedOption() {
        let defaults: [Command: [TrainingSettingKey: String]] = [
            .trainHead: [.epochs: "(default: 30)", .batchSize: "(default: 64)", .momentum: "(default: 0.9)"],
            .fullFinetune: [.epochs: "(default: 10)", .batchSize: "(default: 8)", .momentum: "(default: 0.9)"],
        ]
        for (command, type) in [(Command.trainHead, TrainHead.self as ParsableCommand.Type), (.fullFinetune, FullFinetune.self)] {
            let lines = BottleneckCommand.helpMessage(for: type, columns: 1000).split(separator: "\n")
            for key in TrainingSettingKey.shared {
                guard let start = lines.firstIndex(where: { $0.hasPrefix("  \(key.flag) ") }) else {
                    XCTFail("\(type) --help has no \(key.flag)")
                    continue
                }
                // A long flag has its help on the lines below it.
                let entry = lines[start...].prefix { $0 == lines[start] || !$0.hasPrefix("  -") }.joined(separator: " ")
                XCTAssertTrue(entry.contains(key.help(in: command)), entry)
                if let expected = defaults[command]?[key] { XCTAssertTrue(entry.contains(expected), entry) }
            }
        }
        XCTAssertTrue(BottleneckCommand.helpMessage(for: FullFinetune.self, columns: 1000).contains("(default: 0.001)"))
        XCTAssertTrue(BottleneckCommand.helpMessage(for: Run.self, columns: 1000)
            .contains("  train-head     epochs, batch_size, lr, optimizer, momentum, weight_decay,\n"))
    }

    func testVersionIsTheBuildsVersion() {
        XCTAssertThrowsError(try BottleneckCommand.parseAsRoot(["--version"])) { error in
            XCTAssertEqual(BottleneckCommand.fullMessage(for: error), BottleneckVersion.current)
        }
    }

    /// `--lr -1` is the value -1, refused by the settings check as `--lr=-1` is, not "Missing value for '--lr'".
    func testNegativeNumbersAreValuesThatTheSettingsCheckRefuses() throws {
        let problems: [TrainingSettingKey: String] = [
            .epochs: "must be at least 1, got -1", .batchSize: "must be at least 1, got -1",
            .lr: "must be a positive number, got -1.0", .momentum: "must be in [0, 1), got -1.0",
            .weightDecay: "must not be negative, got -1.0", .stepSize: "must be at least 1 epoch, got -1",
            .gamma: "must be positive, got -1.0", .patience: "must not be negative, got -1",
            .valFraction: "must be between 0 and 1 (exclusive), got -1.0", .dropout: "must be in [0, 1), got -1.0",
            .threads: "must be at least 1, got -1", .memoryBudgetMb: "must be positive",
            .backboneLrMult: "must be a number >= 0, got -1.0",
            .imageSize: "must be between 32 (five 2x2 pools) and \(Preprocessing.largestImageSize), got -1",
        ]
        for command in [Command.trainHead, .fullFinetune] {
            for key in TrainingSettingKey.keys(of: command) where problems[key] != nil {
                let arguments = Self.required[command]! + [key.flag, "-1"] + (key == .stepSize ? ["--schedule", "step"] : [])
                XCTAssertThrowsError(try command == .trainHead ? TrainHead.parse(arguments).run() : FullFinetune.parse(arguments).run(),
                                     key.flag) { error in
                    XCTAssertEqual(BottleneckCommand.message(for: error), "\(key.flag) \(problems[key]!)")
                }
            }
        }
        // Seeds are unsigned: the parser says the value is invalid, not that it is missing.
        XCTAssertThrowsError(try TrainHead.parse(Self.required[.trainHead]! + ["--seed", "-1"])) { error in
            XCTAssertTrue(BottleneckCommand.message(for: error).contains("The value '-1' is invalid for '--seed"),
                          BottleneckCommand.message(for: error))
        }
        XCTAssertEqual(Set(problems.keys), Set(TrainingSettingKey.allCases).subtracting([.seed, .splitSeed, .optimizer, .schedule,
                                                                                      .trainFrom, .augment, .freezeThrough, .views]),
                       "every numeric setting is tried")
        XCTAssertEqual(try Extract.parse(["--images", "d", "--out", "c.h5", "--batch-size", "-2"]).batchSize, -2)
        XCTAssertEqual(try Evaluate.parse(["--model", "m", "--cache", "c.h5", "--batch-size", "-2"]).batchSize, -2)
        XCTAssertEqual(try Predict.parse(["--model", "m", "--top-k", "-2", "x.jpg"]).topK, -2)
        XCTAssertEqual(try HeadBench.parse(["--dropout", "-0.5"]).dropout, -0.5)
    }

    /// `--optimizer Adam` as `optimizer: Adam` in a pipeline file: one reading of a choice for both.
    func testChoicesAreReadInAnyLetterCaseAsInAPipelineFile() throws {
        XCTAssertEqual(try headSettings(["--optimizer", "Adam"]).optimizer, .adam)
        XCTAssertEqual(try headSettings(["--schedule", "COSINE"]).schedule, .cosine)
        XCTAssertEqual(try finetuneSettings(["--augment", "None"]).augment, .none)
        guard case .trainHead(let fromFile) = try pipelineStage(.trainHead, ["optimizer: Adam"]) else { return XCTFail("not train-head") }
        XCTAssertEqual(fromFile.optimizer, try headSettings(["--optimizer", "Adam"]).optimizer)
        XCTAssertThrowsError(try headSettings(["--optimizer", "adamm"])) { error in
            XCTAssertTrue(BottleneckCommand.message(for: error).contains("'adamm' is invalid for '--optimizer"),
                          BottleneckCommand.message(for: error))
        }
    }

    /// A mistyped layer is refused with a suggestion and the valid names before the images are looked at (here
    /// there is no image folder at all).
    func testMistypedLayersAreRefusedWithASuggestionBeforeAnyWork() throws {
        let expected = "unknown layer 'fc_7' (did you mean 'fc7'?); use one of: conv1_1"
        XCTAssertThrowsError(try Extract.parse(["--images", "no-such-folder", "--out", "c.h5", "--weights", "random", "--layer", "fc_7"])
            .run()) { error in
            XCTAssertTrue(BottleneckCommand.message(for: error).contains(expected), BottleneckCommand.message(for: error))
        }
        XCTAssertThrowsError(try FullFinetune.parse(Self.required[.fullFinetune]! + ["--freeze-through", "Conv3-3"]).run()) { error in
            XCTAssertTrue(BottleneckCommand.message(for: error).contains("unknown layer 'Conv3-3' (did you mean 'conv3_3'?)"),
                          BottleneckCommand.message(for: error))
        }
        XCTAssertThrowsError(try Pipeline(yaml: "images: d\nlayer: FC-6\nstages:\n  - stage: extract\n", path: "p.yaml")) { error in
            XCTAssertTrue("\(error)".hasPrefix("p.yaml:2: unknown layer 'FC-6' (did you mean 'fc6'?)"), "\(error)")
        }
    }

    /// `run --stage` and `--shard`, as each Slurm job runs them: a shard goes with the extract stage of a pipeline
    /// sharded that many ways, and a mistyped stage is refused with the stages there are.
    func testRunStageAndShardAreRefusedWhereTheyDoNotFit() throws {
        XCTAssertThrowsError(try Run.parse(["pipelines/slurm.yaml", "--shard", "1/4"])) { error in
            XCTAssertEqual(BottleneckCommand.message(for: error), "--shard I/N goes with --stage extract")
        }
        let slurm = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("pipelines/slurm.yaml").path
        let runner = try PipelineRunner(pipeline: try Pipeline(contentsOf: slurm))
        XCTAssertThrowsError(try runner.run(stage: "haed") { _ in }) { error in
            XCTAssertEqual("\(error)", "--stage haed: \(slurm) has no such stage (its stages: extract, head, finetune, report) "
                           + "(did you mean 'head'?)")
        }
        XCTAssertThrowsError(try runner.extractShard(try Shard("1/3"), stage: "extract") { _ in }) { error in
            XCTAssertEqual("\(error)", "--shard 1/3: \(slurm) extracts in 4 shards, not 3")
        }
        XCTAssertThrowsError(try runner.extractShard(try Shard("1/4"), stage: "head") { _ in }) { error in
            XCTAssertEqual("\(error)", "--shard 1/4: stage head of \(slurm) is train-head; only the extract stage is sharded")
        }
    }

    /// Every command.
    private static func commands(_ root: ParsableCommand.Type = BottleneckCommand.self) -> [ParsableCommand.Type] {
        [root] + root.configuration.subcommands.flatMap { commands($0) }
    }

    /// argument-parser rewraps `--help` to the terminal and starts each wrapped line at column 0: an indented
    /// line of a discussion (an example, a table) survives at 80 columns only when it fits in 79.
    func testIndentedHelpLinesSurviveEightyColumns() {
        for command in Self.commands() {
            let help = BottleneckCommand.helpMessage(for: command, columns: 80)
            let helpLines = Set(help.split(separator: "\n").map(String.init))
            for line in command.configuration.discussion.split(separator: "\n").map(String.init) where line.hasPrefix(" ") {
                XCTAssertLessThan(line.count, 80, "\(command._commandName): \(line)")
                XCTAssertTrue(helpLines.contains(line), "\(command._commandName): '\(line)' is rewrapped")
            }
        }
    }

    /// One `--threads` on every command that computes, all cores by default, 0 refused naming the flag; the benches
    /// that sweep take `--threads-sweep`; train-head's per-row split follows it.
    func testThreadsOptionOnEveryComputingCommand() throws {
        let commands: [ParsableCommand.Type] = [Extract.self, TrainHead.self, FullFinetune.self, Evaluate.self, Predict.self, Run.self,
                                                ForwardBench.self, FinetuneBench.self, HeadBench.self]
        for command in commands {
            XCTAssertTrue(flags(of: command).contains("--threads"), "\(command)")
        }
        for command in [ForwardBench.self, FinetuneBench.self] as [ParsableCommand.Type] {
            XCTAssertTrue(flags(of: command).contains("--threads-sweep"), "\(command)")
        }
        XCTAssertEqual(try ThreadsOption.parse([]).threads, availableCores)
        XCTAssertEqual(try ThreadsOption.parse(["--threads", "3"]).threads, 3)
        XCTAssertEqual(try FinetuneBench.parse(["--threads", "3"]).threads.threads, 3)
        XCTAssertTrue(try ForwardBench.parse(["--threads-sweep"]).sweep.threadsSweep)
        XCTAssertEqual(try headSettings(["--threads", "1"]).threads, 1)
        let refused: [() throws -> Any] = [{ try ForwardBench.parse(["--threads", "0"]) },
                                           { try TrainHead.parse(Self.required[.trainHead]! + ["--threads=0"]) }]
        for parse in refused {
            XCTAssertThrowsError(try parse()) { error in
                XCTAssertEqual(BottleneckCommand.message(for: error), "--threads must be at least 1, got 0")
            }
        }
    }
}
