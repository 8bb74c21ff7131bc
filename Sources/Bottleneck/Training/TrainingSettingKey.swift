/// The settings of train-head and full-finetune, each named once: the command line spells a key `--weight-decay`,
/// a pipeline file `weight_decay`, and a `SettingError` carries the key so that each says it in its own spelling.
/// The defaults are the settings types' own (`HeadTrainingSettings()`, `FineTuneSettings()`): the two commands differ.
package enum TrainingSettingKey: String, CaseIterable, Sendable {
    case epochs, batchSize, lr, optimizer, momentum, weightDecay, schedule, stepSize, gamma, patience, valFraction, seed,
         splitSeed, dropout, trainFrom, threads, memoryBudgetMb, views, augment, freezeThrough, backboneLrMult, imageSize

    /// The two training commands, and the pipeline stages of the same names.
    package enum Command: Sendable {
        case trainHead, fullFinetune
    }

    /// train-head's settings.
    package static let trainHead: [TrainingSettingKey] = [
        .epochs, .batchSize, .lr, .optimizer, .momentum, .weightDecay, .schedule, .stepSize, .gamma, .patience,
        .valFraction, .seed, .splitSeed, .dropout, .trainFrom, .threads, .memoryBudgetMb, .views,
    ]

    /// full-finetune's settings.
    package static let fullFinetune: [TrainingSettingKey] = [
        .epochs, .batchSize, .lr, .optimizer, .momentum, .weightDecay, .augment, .dropout, .seed, .splitSeed,
        .freezeThrough, .backboneLrMult, .imageSize, .valFraction,
    ]

    /// The settings both commands have with the same type and meaning (`SharedTrainingSettings`). `lr` is not one:
    /// train-head's defaults to the optimizer's, full-finetune's to 0.001.
    package static let shared: [TrainingSettingKey] = [
        .epochs, .batchSize, .optimizer, .momentum, .weightDecay, .valFraction, .seed, .splitSeed, .dropout,
    ]

    package static func keys(of command: Command) -> [TrainingSettingKey] {
        switch command {
        case .trainHead: trainHead
        case .fullFinetune: fullFinetune
        }
    }

    /// The memory budget is the command line's alone: a pipeline stage takes the default, half the RAM of the
    /// machine that runs the file.
    package var isPipelineKey: Bool { self != .memoryBudgetMb }

    /// `weight-decay`: the flag without its dashes, as the command line's `.customLong` takes it.
    package var longName: String { words.joined(separator: "-") }

    /// `--weight-decay`.
    package var flag: String { "--" + longName }

    /// `weight_decay`.
    package var pipelineKey: String { words.joined(separator: "_") }

    /// The case name split before each capital and lowercased: `weightDecay` → weight, decay.
    private var words: [String] {
        var words: [String] = []
        for character in rawValue {
            if character.isUppercase || words.isEmpty { words.append("") }
            words[words.count - 1].append(character.lowercased())
        }
        return words
    }

    /// What `--help` says of the setting in `command`; a pipeline key means the same.
    package func help(in command: Command) -> String {
        let head = command == .trainHead
        return switch self {
        case .epochs: head ? "Passes over the training rows (fewer when early stopping ends the run)." : "Passes over the training images."
        case .batchSize: head ? "Rows per optimizer step." : "Images per optimizer step."
        case .lr: head ? "Learning rate (default 0.01 for sgd, 0.001 for adam and adamw)."
            : "Learning rate of the new head (and of the backbone, times \(Self.backboneLrMult.flag))."
        case .optimizer: "sgd (with \(Self.momentum.flag)), adam or adamw, as torch.optim."
        case .momentum: "SGD momentum."
        case .weightDecay: "Weight decay (default 0, or 0.01 for adamw: torch's defaults)."
        case .schedule: "Learning-rate schedule per epoch: constant, step (StepLR) or cosine (CosineAnnealingLR over \(Self.epochs.flag))."
        case .stepSize: "StepLR: epochs between decays (default a third of \(Self.epochs.flag))."
        case .gamma: "StepLR: the factor of each decay."
        case .patience: "Stop after this many epochs without a lower validation loss (0: never stop early)."
        case .valFraction: "Share of the images held out for validation (by hash) when "
            + (head ? "the cache has no val split." : "the folder has no val/.")
        case .seed: head ? "Seed of the new layer, the shuffling and the dropout masks."
            : "Seed of the new layer, shuffling, augmentation and dropout masks."
        case .splitSeed: "Seed of the hashed validation split alone "
            + (head ? "(runs to compare must share it)." : "(train-head's on the same images splits them alike).")
        case .dropout: "Dropout probability of the classifier's dropout layers (torchvision: 0.5)."
        case .trainFrom: "The lowest layer that learns (fc8, fc7, fc6); those between the cut and it stay frozen."
        case .threads: "Cores to split per-row work across (all by default)."
        case .memoryBudgetMb: "Stream the cache in windows instead of reading it once when its rows exceed this many MB "
            + "(default: half the RAM)."
        case .views: "With a cache made by 'extract --views K': augmented trains each row on one of its K augmented views "
            + "per epoch (drawn by seed, epoch and row), none on the eval views only. Validation always uses the eval views."
        case .augment: "Training augmentation: standard (RandomResizedCrop + flip) or none."
        case .freezeThrough: "Freeze this layer and all below it (conv3_3, features.16, fc7)."
        case .backboneLrMult: "Learning-rate factor of the pretrained layers (the head learns at \(Self.lr.flag))."
        case .imageSize: "Side of the square training images (evaluation resizes to 256/224 of it first)."
        }
    }
}

/// A setting that is one word of a fixed set (`--optimizer`, `schedule:`), read in any letter case: the command line
/// and a pipeline file parse it here, so that `Adam` means the same in both.
package protocol SettingChoice: RawRepresentable, CaseIterable where RawValue == String {}

extension SettingChoice {
    package init?(word: String) { self.init(rawValue: word.lowercased()) }
}

/// A training setting whose value cannot train. It names its key, not a spelling: the command line says
/// `--weight-decay must not be negative, got -1.0` (its `description`), a pipeline file `weight_decay …` at the line.
struct SettingError: Error, CustomStringConvertible, Sendable {
    package let key: TrainingSettingKey
    /// What is wrong with the value, after the key: "must not be negative, got -1.0".
    let problem: String

    package init(key: TrainingSettingKey, _ problem: String) {
        self.key = key
        self.problem = problem
    }

    package var description: String { "\(key.flag) \(problem)" }
}

/// The settings train-head and full-finetune share (`TrainingSettingKey.shared`), so that the command line and a
/// pipeline file read them once for both.
package protocol SharedTrainingSettings: Sendable {
    /// The command whose settings these are: its defaults and its `--help`.
    static var command: TrainingSettingKey.Command { get }
    init()
    var epochs: Int { get set }
    var batchSize: Int { get set }
    var optimizer: HeadTrainingSettings.OptimizerKind { get set }
    var momentum: Double { get set }
    var weightDecay: Double? { get set }
    var validationFraction: Double { get set }
    var seed: UInt64 { get set }
    var splitSeed: UInt64 { get set }
    var dropout: Double { get set }
}

extension HeadTrainingSettings: SharedTrainingSettings {
    package static let command = TrainingSettingKey.Command.trainHead
}

extension FineTuneSettings: SharedTrainingSettings {
    package static let command = TrainingSettingKey.Command.fullFinetune
}
