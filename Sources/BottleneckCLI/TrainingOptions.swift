import ArgumentParser
import Bottleneck

/// The options train-head and full-finetune share (`TrainingSettingKey.shared`), with the defaults and `--help`
/// of the command whose settings `Settings` are.
struct SharedTrainingOptions<Settings: SharedTrainingSettings>: ParsableArguments {
    @Option(name: .setting(.epochs), parsing: .unconditional, help: .setting(.epochs, in: Settings.command)) var epochs = Settings().epochs
    @Option(name: .setting(.batchSize), parsing: .unconditional, help: .setting(.batchSize, in: Settings.command))
    var batchSize = Settings().batchSize
    @Option(name: .setting(.optimizer), help: .setting(.optimizer, in: Settings.command)) var optimizer = Settings().optimizer
    @Option(name: .setting(.momentum), parsing: .unconditional, help: .setting(.momentum, in: Settings.command))
    var momentum = Settings().momentum
    /// nil in both commands: the optimizer's default.
    @Option(name: .setting(.weightDecay), parsing: .unconditional, help: .setting(.weightDecay, in: Settings.command))
    var weightDecay: Double?
    @Option(name: .setting(.valFraction), parsing: .unconditional, help: .setting(.valFraction, in: Settings.command))
    var valFraction = Settings().validationFraction
    @Option(name: .setting(.seed), parsing: .unconditional, help: .setting(.seed, in: Settings.command)) var seed = Settings().seed
    @Option(name: .setting(.splitSeed), parsing: .unconditional, help: .setting(.splitSeed, in: Settings.command))
    var splitSeed = Settings().splitSeed
    @Option(name: .setting(.dropout), parsing: .unconditional, help: .setting(.dropout, in: Settings.command))
    var dropout = Settings().dropout

    func apply(to settings: inout Settings) {
        settings.epochs = epochs
        settings.batchSize = batchSize
        settings.optimizer = optimizer
        settings.momentum = momentum
        settings.weightDecay = weightDecay
        settings.validationFraction = valFraction
        settings.seed = seed
        settings.splitSeed = splitSeed
        settings.dropout = dropout
    }
}

extension NameSpecification {
    /// A training setting's flag, spelled by its key.
    static func setting(_ key: TrainingSettingKey) -> NameSpecification { .customLong(key.longName) }
}

extension ArgumentHelp {
    /// A training setting's help in `command`, as the settings table says it.
    static func setting(_ key: TrainingSettingKey, in command: TrainingSettingKey.Command, valueName: String? = nil) -> ArgumentHelp {
        ArgumentHelp(key.help(in: command), valueName: valueName)
    }
}

extension ExpressibleByArgument where Self: SettingChoice {
    /// `--optimizer Adam` as a pipeline file's `optimizer: Adam`.
    package init?(argument: String) { self.init(word: argument) }
}

extension HeadTrainingSettings.OptimizerKind: ExpressibleByArgument {}
extension HeadTrainingSettings.ScheduleKind: ExpressibleByArgument {}
extension FineTuneSettings.AugmentationKind: ExpressibleByArgument {}
