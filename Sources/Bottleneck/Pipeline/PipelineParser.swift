import Foundation
import Yams
import BottleneckKernels

extension Pipeline {
    /// Reads and validates a pipeline file. Every mistake is reported as `FILE:LINE: what is wrong`, unknown
    /// keys with the closest known one, before anything runs.
    /// `backbones`: the networks the file may name; the test suite adds its narrow fixture network.
    package init(contentsOf path: String, backbones: [VGGConfig] = VGGConfig.torchvision) throws {
        let text: String
        do {
            text = try DurableFiles.readText(path, atMost: Self.maximumFileBytes)
        } catch {
            throw PipelineError("\(path): cannot read the pipeline file: \(error.reason)")
        }
        try self.init(yaml: text, path: path, backbones: backbones)
    }

    /// Pipelines are a few hundred bytes; a larger file is a mistake (or an attack on the parser).
    static let maximumFileBytes = 1 << 20

    package init(yaml text: String, path: String, backbones: [VGGConfig] = VGGConfig.torchvision) throws {
        try YAMLAliasCheck.refuseAnchorsAndAliases(in: text, file: path)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw PipelineError(Self.describe(error, file: path, text: text))
        }
        guard let root else { throw PipelineError("\(path): the file is empty") }
        let top = try YAMLMapping(root, file: path, context: "the pipeline")
        try top.refuseUnknownKeys(["name", "images", "weights", "backbone", "layer", "image_size", "out", "stages", "executor", "slurm"])

        self.path = path
        name = try top.string("name") ?? URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        guard let images = try top.string("images") else { throw top.missing("images", example: "images: data/shapes") }
        self.images = Self.expandingTilde(images)
        weights = try top.string("weights").map(Self.expandingTilde)
        inputLines = Dictionary(uniqueKeysWithValues: ["images", "weights"].compactMap { key in top.value(key).map { (key, $0.line) } })
        let backboneName = try top.string("backbone") ?? "vgg16"
        guard let backbone = backbones.first(where: { $0.name == backboneName.lowercased() }) else {
            let names = backbones.map(\.name)
            throw top.error(at: "backbone", "unknown backbone '\(backboneName)' "
                            + "(\(names.dropLast().joined(separator: ", ")) or \(names.last ?? ""))")
        }
        self.backbone = backbone
        layer = try top.string("layer") ?? "fc7"
        do {
            _ = try CutPoint(layer, in: backbone)
        } catch {
            throw top.error(at: "layer", "\(error)")
        }
        imageSize = try top.int("image_size") ?? 224
        guard Preprocessing.imageSizes.contains(imageSize) else {
            throw top.error(at: "image_size", "image_size \(Preprocessing.imageSizeRequirement)")
        }
        outputRoot = Self.expandingTilde(try top.string("out") ?? "runs/\(name)")
        executor = try Self.executor(from: top, outputRoot: outputRoot)

        guard let stageList = top.value("stages") else {
            throw top.missing("stages", example: "stages:\n  - stage: extract\n  - stage: train-head")
        }
        guard case .sequence(let sequence) = stageList else {
            throw PipelineError("\(path):\(stageList.line): 'stages' must be a list (each item starting with '- stage: KIND')")
        }
        var stages: [Stage] = []
        for item in sequence {
            stages.append(try Self.stage(from: item, file: path, before: stages, backbone: backbone, pipelineImageSize: imageSize))
        }
        guard !stages.isEmpty else { throw PipelineError("\(path):\(stageList.line): 'stages' is empty") }
        self.stages = stages
    }

    private static func stage(from node: Node, file: String, before: [Stage], backbone: VGGConfig,
                              pipelineImageSize: Int) throws -> Stage {
        let entry = try YAMLMapping(node, file: file, context: "a stage")
        let kinds = StageKind.allCases.map(\.rawValue)
        guard let kindName = try entry.string("stage") else {
            throw entry.missing("stage", example: "- stage: train-head   (one of \(kinds.joined(separator: ", ")))")
        }
        guard let kind = StageKind(rawValue: kindName) else {
            throw entry.error(at: "stage", "unknown stage kind '\(kindName)'" + Suggestion.didYouMean(kindName, among: kinds)
                              + " (one of \(kinds.joined(separator: ", ")))")
        }
        let name = try entry.string("name") ?? kind.defaultName
        // The name is a folder under out: `../victim` or `/etc` would write elsewhere.
        guard let first = name.first, first != ".",
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            throw entry.error(at: "name", "stage name '\(name)' is not a plain name: use letters, digits, '-', '_' and '.', "
                              + "not starting with '.' (it names the stage's folder under out)")
        }
        if before.contains(where: { $0.name == name }) {
            throw entry.error(at: entry.value("name") == nil ? "stage" : "name",
                              "two stages are named '\(name)'; give one of them another 'name:'")
        }
        let context = "stage \(name)"
        let stageEntry = YAMLMapping(entry, context: context)
        let settings: Stage.Settings
        switch kind {
        case .extract:
            try stageEntry.refuseUnknownKeys(["stage", "name", "batch_size", "compress", "views"])
            if before.contains(where: { $0.kind == .extract }) {
                throw entry.error(at: "stage", "a pipeline has one extract stage (one cut layer, the top-level 'layer')")
            }
            let batchSize = try stageEntry.int("batch_size") ?? 16
            guard batchSize >= 1 else { throw stageEntry.error(at: "batch_size", "batch_size must be at least 1") }
            let views = try stageEntry.nonNegativeInt("views") ?? 0
            guard views <= ExtractionJob.mostViews else {
                throw stageEntry.error(at: "views", "views must be between 0 and \(ExtractionJob.mostViews), not \(views)")
            }
            settings = .extract(batchSize: batchSize, compress: try stageEntry.bool("compress") ?? false, views: views)
        case .trainHead:
            guard before.contains(where: { $0.kind == .extract }) else {
                throw entry.error(at: "stage", "train-head trains on the feature cache: put an extract stage before it")
            }
            var head = HeadTrainingSettings()
            try stageEntry.apply(headFields, to: &head, fixed: ["stage", "name"])
            try validated(head.validate, entry: stageEntry)
            try stageEntry.checkLayer("train_from", backbone: backbone)
            settings = .trainHead(head)
        case .fullFinetune:
            var finetune = FineTuneSettings()
            finetune.imageSize = pipelineImageSize
            try stageEntry.apply(finetuneFields, to: &finetune, fixed: ["stage", "name", "init_head"])
            try validated(finetune.validate, entry: stageEntry)
            try stageEntry.checkLayer("freeze_through", backbone: backbone)
            let initialHead = try stageEntry.string("init_head")
            if let initialHead {
                let heads = before.filter { $0.kind == .trainHead }.map(\.name)
                guard heads.contains(initialHead) else {
                    throw stageEntry.error(at: "init_head", "init_head names a train-head stage above this one"
                                           + (heads.isEmpty ? ", and there is none" : " (\(heads.joined(separator: ", ")))")
                                           + ", not '\(initialHead)'")
                }
                guard finetune.imageSize == pipelineImageSize else {
                    throw stageEntry.error(at: "image_size", "a head from init_head was trained on \(pipelineImageSize) px "
                                           + "features: fine-tune it at image_size \(pipelineImageSize), not \(finetune.imageSize)")
                }
            }
            settings = .fullFinetune(finetune, initialHead: initialHead)
        case .report:
            try stageEntry.refuseUnknownKeys(["stage", "name", "formats"])
            guard before.contains(where: { [.trainHead, .fullFinetune].contains($0.kind) }) else {
                throw entry.error(at: "stage", "a report compares training runs: put a train-head or full-finetune stage before it")
            }
            // The report refuses runs validated on different images: say so now, not after hours of training.
            let splits = before.compactMap { stage -> (name: String, fraction: Double, seed: UInt64)? in
                let shared: (any SharedTrainingSettings)? = switch stage.settings {
                case .trainHead(let settings): settings
                case .fullFinetune(let settings, _): settings
                default: nil
                }
                return shared.map { (stage.name, $0.validationFraction, $0.splitSeed) }
            }
            if let first = splits.first, let other = splits.first(where: { $0.fraction != first.fraction || $0.seed != first.seed }) {
                throw entry.error(at: "stage", "the report compares runs validated on the same images, but stage \(first.name) holds out "
                                  + "val_fraction \(first.fraction) with split_seed \(first.seed) and stage \(other.name) val_fraction "
                                  + "\(other.fraction) with split_seed \(other.seed): give every training stage the same")
            }
            var formats = ReportFormat.allCases
            if let list = stageEntry.value("formats") {
                guard case .sequence(let items) = list else {
                    throw stageEntry.error(at: "formats", "formats is a list, e.g. [html, md]")
                }
                formats = try items.map { item in
                    guard let format = item.string.flatMap(ReportFormat.init) else {
                        throw PipelineError("\(file):\(item.line): unknown report format '\(item.string ?? "")' (html or md)")
                    }
                    return format
                }
                guard !formats.isEmpty else { throw stageEntry.error(at: "formats", "formats is empty; leave it out for [html, md]") }
            }
            settings = .report(formats: formats)
        }
        return Stage(name: name, settings: settings)
    }

    /// `executor: local` (the default) or `executor: slurm` with its `slurm:` keys.
    private static func executor(from top: YAMLMapping, outputRoot: String) throws -> Executor {
        let name = try top.string("executor") ?? "local"
        switch name {
        case "local":
            if top.value("slurm") != nil {
                throw top.error(at: "slurm", "'slurm' settings are read only with 'executor: slurm'")
            }
            return .local
        case "slurm":
            var settings = SlurmSettings(logs: outputRoot + "/slurm-logs")
            guard let node = top.value("slurm") else { return .slurm(settings) }
            let slurm = try YAMLMapping(node, file: top.file, context: "slurm")
            try slurm.refuseUnknownKeys(["shards", "partition", "account", "time", "cpus_per_task", "mem", "max_wait", "logs"])
            settings.shards = try slurm.int("shards") ?? 1
            guard (1...Shard.maximumCount).contains(settings.shards) else {
                throw slurm.error(at: "shards", "shards must be between 1 and \(Shard.maximumCount), not \(settings.shards)")
            }
            settings.partition = try slurm.string("partition")
            settings.account = try slurm.string("account")
            if let time = try slurm.string("time") {
                guard SlurmTime.seconds(time) != nil else {
                    throw slurm.error(at: "time", "time must be a Slurm time limit (MINUTES, HH:MM:SS or DAYS-HH:MM:SS), got '\(time)'")
                }
                settings.time = time
            }
            if let cpus = try slurm.int("cpus_per_task") {
                guard cpus >= 1 else { throw slurm.error(at: "cpus_per_task", "cpus_per_task must be at least 1, got \(cpus)") }
                settings.cpusPerTask = cpus
            }
            if let memory = try slurm.string("mem") {
                let digits = memory.prefix { $0.isASCII && $0.isNumber }
                guard !digits.isEmpty, ["", "K", "M", "G", "T"].contains(memory.dropFirst(digits.count).uppercased()) else {
                    throw slurm.error(at: "mem", "mem must be a size as sbatch --mem takes it (e.g. 500M, 4G), got '\(memory)'")
                }
                settings.memory = memory
            }
            if let wait = try slurm.string("max_wait") {
                guard let seconds = SlurmTime.seconds(wait), seconds > 0 else {
                    throw slurm.error(at: "max_wait", "max_wait must be a positive Slurm time (MINUTES, HH:MM:SS or "
                                      + "DAYS-HH:MM:SS), got '\(wait)'")
                }
                settings.maxWaitSeconds = seconds
            }
            if let logs = try slurm.string("logs") { settings.logs = expandingTilde(logs) }
            return .slurm(settings)
        default:
            throw top.error(at: "executor", "unknown executor '\(name)' (local or slurm)")
        }
    }

    /// Refuses, at its line, an input that no stage makes and that is not there: the image folder and a weights file
    /// (the cache and the runs that later stages read are made by earlier ones). Paths are the command's, as the stages see them.
    package func checkInputsExist() throws {
        func line(_ key: String) -> String { inputLines[key].map { ":\($0)" } ?? "" }
        var isDirectory: ObjCBool = false
        let found = FileManager.default.fileExists(atPath: images, isDirectory: &isDirectory)
        if !found || !isDirectory.boolValue {
            throw PipelineError("\(path)\(line("images")): images: \(images) " + (found ? "is not a folder" : "does not exist")
                                + " (the image folder, relative to the directory the command runs from)")
        }
        if let weights, case .file(let file) = WeightsChoice.resolve(weights).choice, !FileManager.default.fileExists(atPath: file) {
            throw PipelineError("\(path)\(line("weights")): weights: \(file) does not exist (a weights file, random or random:SEED)")
        }
    }

    /// `~/…` as a shell would read it: weights live in ~/.cache/torch.
    private static func expandingTilde(_ path: String) -> String { (path as NSString).expandingTildeInPath }

    /// A settings check of the jobs, reported against the stage's line with the key as the file spells it.
    private static func validated(_ check: () throws -> Void, entry: YAMLMapping) throws {
        do {
            try check()
        } catch let error as SettingError {
            throw PipelineError("\(entry.file):\(entry.line): \(entry.context): \(error.key.pipelineKey) \(error.problem)")
        }
    }

    /// Reads one key's value from the stage into the settings.
    typealias Field<Settings> = @Sendable (inout Settings, YAMLMapping, String) throws -> Void

    /// How the file's value of each shared setting is read (which keys a stage takes is `TrainingSettingKey`'s).
    private static func sharedFields<Settings: SharedTrainingSettings>() -> [TrainingSettingKey: Field<Settings>] {
        [
            .epochs: { $0.epochs = try $1.int($2)! },
            .batchSize: { $0.batchSize = try $1.int($2)! },
            .optimizer: { $0.optimizer = try $1.choice($2)! },
            .momentum: { $0.momentum = try $1.double($2)! },
            .weightDecay: { $0.weightDecay = try $1.double($2)! },
            .valFraction: { $0.validationFraction = try $1.double($2)! },
            .seed: { $0.seed = UInt64(try $1.nonNegativeInt($2)!) },
            .splitSeed: { $0.splitSeed = UInt64(try $1.nonNegativeInt($2)!) },
            .dropout: { $0.dropout = try $1.double($2)! },
        ]
    }

    /// The readers of a train-head stage's own keys; not private: the tests check they cover the table's.
    static let headFields: [TrainingSettingKey: Field<HeadTrainingSettings>] = sharedFields().merging([
        .lr: { $0.learningRate = try $1.double($2)! },
        .schedule: { $0.schedule = try $1.choice($2)! },
        .stepSize: { $0.stepSize = try $1.int($2)! },
        .gamma: { $0.gamma = try $1.double($2)! },
        .patience: { $0.patience = try $1.int($2)! },
        .trainFrom: { $0.trainFrom = try $1.string($2)! },
        .threads: { $0.threads = try $1.int($2)! },
        .views: { $0.views = try $1.choice($2)! },
    ]) { shared, _ in shared }

    /// The readers of a full-finetune stage's own keys.
    static let finetuneFields: [TrainingSettingKey: Field<FineTuneSettings>] = sharedFields().merging([
        .lr: { $0.learningRate = try $1.double($2)! },
        .augment: { $0.augment = try $1.choice($2)! },
        .freezeThrough: { $0.freezeThrough = try $1.string($2)! },
        .backboneLrMult: { $0.backboneLearningRateMultiplier = try $1.double($2)! },
        .imageSize: { $0.imageSize = try $1.int($2)! },
    ]) { shared, _ in shared }

    private static func describe(_ error: YamlError, file: String, text: String) -> String {
        switch error {
        case .duplicatedKeysInMapping(let duplicates, let context):
            // Yams marks the mapping; the line people need is the key's second appearance in it.
            let key = duplicates.sorted()[0]
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            let appearances = lines.indices.filter { index in
                index + 1 >= context.mark.line
                    && lines[index].drop { $0 == " " || $0 == "-" }.hasPrefix(key + ":")
            }
            let line = appearances.dropFirst().first.map { $0 + 1 } ?? context.mark.line
            let first = appearances.first.map { " (first on line \($0 + 1))" } ?? ""
            return "\(file):\(line): '\(key)' is given twice\(first)"
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let during = context.map { " (\($0.text))" } ?? ""
            return "\(file):\(mark.line): invalid YAML: \(problem)\(during)"
        default:
            return "\(file): invalid YAML: \(error)"
        }
    }
}

extension Node {
    var line: Int { mark?.line ?? 0 }
}

/// A YAML mapping with its file and what it describes, for errors that point at the line.
struct YAMLMapping {
    let file: String
    let context: String
    let line: Int
    private let pairs: [(key: String, keyLine: Int, value: Node)]

    init(_ node: Node, file: String, context: String) throws {
        guard case .mapping(let mapping) = node else {
            throw PipelineError("\(file):\(node.line): \(context) must be a mapping of 'key: value' lines")
        }
        var pairs: [(key: String, keyLine: Int, value: Node)] = []
        for (key, value) in mapping {
            guard let name = key.string else { throw PipelineError("\(file):\(key.line): keys must be plain words") }
            pairs.append((name, key.line, value))
        }
        self.file = file
        self.context = context
        line = node.line
        self.pairs = pairs
    }

    init(_ other: YAMLMapping, context: String) {
        file = other.file
        line = other.line
        pairs = other.pairs
        self.context = context
    }

    func value(_ key: String) -> Node? { pairs.first { $0.key == key }?.value }

    func error(at key: String, _ message: String) -> PipelineError {
        PipelineError("\(file):\(value(key)?.line ?? line): \(message)")
    }

    func missing(_ key: String, example: String) -> PipelineError {
        PipelineError("\(file):\(line): \(context) needs '\(key)', e.g.\n  \(example)")
    }

    /// A layer name the backbone has (`conv3_3`, `fc6`, `features.16`), refused at its line otherwise.
    func checkLayer(_ key: String, backbone: VGGConfig) throws {
        guard let name = try string(key) else { return }
        do {
            _ = try CutPoint(name, in: backbone)
        } catch {
            throw self.error(at: key, "\(key): \(error)")
        }
    }

    func refuseUnknownKeys(_ known: [String]) throws {
        for pair in pairs where !known.contains(pair.key) {
            throw PipelineError("\(file):\(pair.keyLine): unknown key '\(pair.key)' in \(context)"
                                + Suggestion.didYouMean(pair.key, among: known))
        }
    }

    /// Sets every pipeline key of the command's settings; refuses keys that are neither those nor `fixed` (read by
    /// the caller).
    func apply<Settings: SharedTrainingSettings>(_ fields: [TrainingSettingKey: Pipeline.Field<Settings>], to settings: inout Settings,
                                                 fixed: [String]) throws {
        let keys = TrainingSettingKey.keys(of: Settings.command).filter(\.isPipelineKey)
        try refuseUnknownKeys(fixed + keys.map(\.pipelineKey).sorted())
        // In the file's order, so that the first bad value is the one reported.
        for pair in pairs {
            guard let key = keys.first(where: { $0.pipelineKey == pair.key }) else { continue }
            guard let field = fields[key] else { preconditionFailure("no reader of the pipeline key \(pair.key)") }
            try field(&settings, self, pair.key)
        }
    }

    private func scalar(_ key: String, _ kind: String) throws -> String? {
        guard let node = value(key) else { return nil }
        guard case .scalar(let scalar) = node else { throw error(at: key, "'\(key)' must be \(kind), not a list or mapping") }
        return scalar.string
    }

    func string(_ key: String) throws -> String? {
        try scalar(key, "a single value")
    }

    func int(_ key: String) throws -> Int? {
        guard let text = try scalar(key, "a whole number") else { return nil }
        guard let value = Int(text) else { throw error(at: key, "'\(key)' must be a whole number, got '\(text)'") }
        return value
    }

    func nonNegativeInt(_ key: String) throws -> Int? {
        guard let value = try int(key) else { return nil }
        guard value >= 0 else { throw error(at: key, "'\(key)' must not be negative, got \(value)") }
        return value
    }

    func double(_ key: String) throws -> Double? {
        guard let text = try scalar(key, "a number") else { return nil }
        guard let value = Double(text) else { throw error(at: key, "'\(key)' must be a number, got '\(text)'") }
        return value
    }

    func bool(_ key: String) throws -> Bool? {
        guard let text = try scalar(key, "true or false") else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error(at: key, "'\(key)' must be true or false, got '\(text)'")
        }
    }

    func choice<Choice: SettingChoice>(_ key: String) throws -> Choice? {
        guard let text = try scalar(key, "one word") else { return nil }
        guard let value = Choice(word: text) else {
            let known = Choice.allCases.map(\.rawValue)
            throw error(at: key, "'\(key)' must be one of \(known.joined(separator: ", ")), got '\(text)'"
                        + Suggestion.didYouMean(text, among: known))
        }
        return value
    }
}
