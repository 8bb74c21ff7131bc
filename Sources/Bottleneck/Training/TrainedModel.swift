import Foundation
import BottleneckKernels

/// A trained classifier as `model.h5` holds it: parameters under their torchvision state-dict names
/// (`classifier.6.weight`, …) as float32 datasets at the root, and as root string attributes all that
/// running it needs: the network configuration, class names, cut, the backbone weights' sha256 and
/// source, the preprocessing. h5py reads it without bottleneck; `--weights model.h5` reads it too.
///
/// A head model (train-head) holds the layers above the cut and runs after the frozen prefix, which
/// comes from the backbone weights it records. A fine-tuned model (full fine-tuning) holds the whole
/// state dict, prefix included, and needs no other file. `evaluate` and `predict` take either.
struct TrainedModel: Sendable {
    static let formatName = "bottleneck-model/1"

    package enum Mode: String, Sendable, Codable {
        /// Only the layers above the cut were trained, on cached activations.
        case head
        /// The whole network was trained end to end.
        case finetune
    }

    package var mode: Mode
    /// `classes` is the number of class names.
    package var config: VGGConfig
    package var classes: [String]
    /// Where the head starts: the activations it takes are this layer's output.
    package var cut: CutPoint
    /// The conventional name of the cut ("fc7"), as the cache calls it.
    var cutName: String
    /// The backbone weights the prefix ran with when the model was trained.
    package var weights: WeightsIdentity
    package var preprocessing: Preprocessing
    /// torchvision paths of the layers that learned ("classifier.6").
    var trainableLayers: [String]
    package var dropout: Double
    /// How its validation rows were chosen, so that evaluate can score the held-out rows again; nil in a
    /// model that does not say (written before models recorded it, or made by hand).
    package var split: TrainingSplit.Rule?
    var stateDict: [(key: String, tensor: Tensor)]

    private enum Attribute {
        static let format = "format"
        static let mode = "mode"
        static let backbone = "backbone"
        static let config = "config"
        static let classes = "classes"
        static let cutLayer = "cut_layer"
        static let cutLayerPath = "cut_layer_path"
        static let weightsSHA256 = "weights_sha256"
        static let weightsSource = "weights_source"
        static let preprocess = "preprocess"
        static let trainableLayers = "trainable_layers"
        static let dropout = "dropout"
        static let split = "split"
        static let toolVersion = "tool_version"
        static let created = "created"
    }

    package init(mode: Mode, config: VGGConfig, classes: [String], cut: CutPoint, cutName: String, weights: WeightsIdentity,
                preprocessing: Preprocessing, trainableLayers: [String], dropout: Double, split: TrainingSplit.Rule?,
                stateDict: [(key: String, tensor: Tensor)]) {
        precondition(config.classes == classes.count, "the configuration has \(config.classes) outputs for \(classes.count) classes")
        self.mode = mode
        self.config = config
        self.classes = classes
        self.cut = cut
        self.cutName = cutName
        self.weights = weights
        self.preprocessing = preprocessing
        self.trainableLayers = trainableLayers
        self.dropout = dropout
        self.split = split
        self.stateDict = stateDict
    }

    /// Writes `path` atomically (a file aside, then renamed).
    func save(to path: String) throws {
        var attributes = [
            Attribute.format: Self.formatName,
            Attribute.mode: mode.rawValue,
            Attribute.backbone: config.name,
            Attribute.config: Self.json(config),
            Attribute.classes: Self.json(classes),
            Attribute.cutLayer: cutName,
            Attribute.cutLayerPath: cut.layer.path,
            Attribute.weightsSHA256: weights.fingerprint,
            Attribute.weightsSource: weights.source,
            Attribute.preprocess: preprocessing.jsonDescription,
            Attribute.trainableLayers: Self.json(trainableLayers),
            Attribute.dropout: String(dropout),
            Attribute.toolVersion: BottleneckVersion.current,
            Attribute.created: ISO8601DateFormatter().string(from: Date()),
        ]
        if let split { attributes[Attribute.split] = Self.json(split) }
        try inRole(Self.role) {
            try writeStateDictHDF5(path: path, tensors: stateDict.map { ($0.key, $0.tensor) }, attributes: attributes)
        }
    }

    /// What messages call the file.
    private static let role = "model file"

    /// Reads a model written by `save(to:)`; a weights file or a feature cache is refused as not a model.
    /// Every attribute is range-checked and every dataset's shape compared with the configuration before a
    /// parameter is read, so a damaged or hostile file is one line naming it and the attribute, never a crash.
    /// `path` may be a run directory: its model.h5 is read.
    package init(contentsOf path: String) throws {
        let file = try Self.file(at: path)
        self = try inRole(Self.role) { try TrainedModel(checking: file) }
    }

    /// The model file `path` names: itself, or a run directory's model.h5.
    static func file(at path: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { return path }
        let model = (path as NSString).appendingPathComponent(RunDirectory.modelFile)
        guard FileManager.default.fileExists(atPath: model) else {
            throw TrainingError(.invalidInput, "\(path) is a folder without \(RunDirectory.modelFile): give a model file or the run "
                                + "directory of a finished train-head or full-finetune run")
        }
        return model
    }

    /// Whether `path` (a file or run directory) is a model rather than plain weights; throws when it is neither.
    static func isModel(at path: String) throws -> Bool {
        try StateDictFile.open(path: file(at: path)).metadata[Attribute.format] == formatName
    }

    private init(checking path: String) throws {
        let file = try StateDictFile.open(path: path)
        let metadata = file.metadata
        guard metadata[Attribute.format] == Self.formatName else {
            throw TrainingError(.malformed, "\(path) is not a bottleneck model (no '\(Attribute.format)' attribute "
                                + "\(Self.formatName)); models are the model.h5 that train-head writes in its run directory")
        }
        func attribute(_ name: String) throws -> String {
            guard let value = metadata[name] else { throw TrainingError(.malformed, "\(path) is damaged: no '\(name)' attribute") }
            return value
        }
        func decoded<T: Decodable>(_ type: T.Type, _ name: String) throws -> T {
            do {
                return try JSONDecoder().decode(type, from: Data(try attribute(name).utf8))
            } catch let error as TrainingError {
                throw error
            } catch {
                throw TrainingError(.malformed, "\(path) is damaged: its '\(name)' attribute is not valid (\(error))")
            }
        }
        guard let mode = Mode(rawValue: try attribute(Attribute.mode)) else {
            throw TrainingError(.malformed, "\(path): unknown mode '\(try attribute(Attribute.mode))'")
        }
        func damaged(_ name: String, _ problem: String) -> TrainingError {
            TrainingError(.malformed, "\(path) is damaged: its '\(name)' attribute \(problem)")
        }
        self.mode = mode
        config = try decoded(VGGConfig.self, Attribute.config)
        if let problem = config.problem { throw damaged(Attribute.config, "is not a network bottleneck can build: \(problem)") }
        classes = try decoded([String].self, Attribute.classes)
        guard config.classes == classes.count else {
            throw TrainingError(.malformed, "\(path) is damaged: \(classes.count) class names for \(config.classes) outputs")
        }
        if let repeated = classes.firstRepeated() {
            throw damaged(Attribute.classes, "names the class \(repeated) twice")
        }
        do {
            cut = try CutPoint(try attribute(Attribute.cutLayerPath), in: config)
        } catch let error as ModelError {
            throw damaged(Attribute.cutLayerPath, "is not a layer of its network (\(error))")
        }
        cutName = try attribute(Attribute.cutLayer)
        weights = WeightsIdentity(source: try attribute(Attribute.weightsSource), fingerprint: try attribute(Attribute.weightsSHA256))
        preprocessing = try decoded(Preprocessing.self, Attribute.preprocess)
        trainableLayers = try decoded([String].self, Attribute.trainableLayers)
        guard let dropout = Double(try attribute(Attribute.dropout)), (0..<1).contains(dropout) else {
            throw damaged(Attribute.dropout, "is '\(try attribute(Attribute.dropout).prefix(40))', not a probability in [0, 1)")
        }
        self.dropout = dropout
        split = try metadata[Attribute.split].map { _ in try decoded(TrainingSplit.Rule.self, Attribute.split) }
        if let fraction = split?.validationFraction, !(0...1).contains(fraction) {
            throw damaged(Attribute.split, "gives the validation fraction \(fraction), outside [0, 1]")
        }
        stateDict = try Self.parameters(of: file, config: config)
    }

    /// The file's parameters in torchvision's order, each dataset's shape checked against the configuration
    /// and their total against the memory before any is read.
    private static func parameters(of file: StateDictFile, config: VGGConfig) throws -> [(key: String, tensor: Tensor)] {
        let shapes = config.stateDictShapes
        let expected = Dictionary(shapes.map { ($0.key, $0.shape) }, uniquingKeysWith: { first, _ in first })
        for entry in file.entries where expected[entry.key] != entry.shape {
            throw TrainingError(.malformed, "\(file.path) is damaged: dataset \(entry.key) "
                                + (expected[entry.key].map { "has shape \(entry.shape), but its 'config' gives \($0)" }
                                   ?? "has no place in the network its 'config' describes"))
        }
        try file.checkFitsInMemory()
        // HDF5 lists datasets by name; torchvision's order reads better and is what a state dict has.
        let order = Dictionary(shapes.enumerated().map { ($1.key, $0) }, uniquingKeysWith: { first, _ in first })
        let keys = file.entries.map(\.key).sorted { (order[$0] ?? .max, $0) < (order[$1] ?? .max, $1) }
        return try keys.map { ($0, try file.parameter($0)) }
    }

    /// The layers above the cut, in evaluation mode, from the state dict.
    package func head() throws -> HeadNetwork {
        let tensors = Dictionary(stateDict.map { ($0.key, $0.tensor) }, uniquingKeysWith: { $1 })
        return try HeadNetwork(config: config, cut: cut, dropout: Float(dropout)) { key, shape in
            guard let tensor = tensors[key] else {
                throw TrainingError(.malformed, "the model has no \(key): it does not hold the head above \(cutName)")
            }
            guard tensor.shape == shape else {
                throw TrainingError(.malformed, "the model's \(key) has shape \(tensor.shape), expected \(shape)")
            }
            return tensor
        }
    }

    /// The frozen network through the cut with the weights the model was trained on: from the model
    /// itself when it holds them (fine-tuned), else from `weights` or the file it records (or the seeded
    /// random initialisation it records). Weights whose sha256 differs are refused: the head would be
    /// fed features it never saw.
    package func prefix(weights override: WeightsChoice? = nil) throws -> LoadedNetwork {
        let tensors = Dictionary(stateDict.map { ($0.key, $0.tensor) }, uniquingKeysWith: { $1 })
        let needed = config.stateDictShapes(through: cut)
        if override == nil, needed.allSatisfy({ tensors[$0.key]?.shape == $0.shape }) {
            let network = VGG(config: config, through: cut) { key, _ in tensors[key]! }
            return LoadedNetwork(network: network, weights: weights, notes: [])
        }
        let choice = override ?? WeightsChoice(reproducing: weights)
        if case .file(let path) = choice, !FileManager.default.fileExists(atPath: path) {
            throw TrainingError(.mismatch, "the model's backbone weights \(path) are not there; pass --weights FILE "
                                + "(the file with sha256 \(weights.fingerprint))")
        }
        let identity = try NetworkLoader.identity(of: choice)
        guard identity.fingerprint == weights.fingerprint else {
            throw TrainingError(.mismatch, "the model was trained on features of weights \(weights.fingerprint) "
                                + "(\(weights.source)), but \(choice) is \(identity.fingerprint): its features would not be "
                                + "the ones the head learned; pass the original weights with --weights")
        }
        return try NetworkLoader.load(config: config, through: cut, weights: choice)
    }

    private static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Plain strings, numbers and arrays: encoding cannot fail.
        return String(decoding: try! encoder.encode(value), as: UTF8.self)
    }
}

extension WeightsChoice {
    /// The weights an identity was made with: its file, or the seeded random initialisation.
    package init(reproducing identity: WeightsIdentity) {
        let randomPrefix = "random-seed-"
        if identity.fingerprint.hasPrefix(randomPrefix), let seed = UInt64(identity.fingerprint.dropFirst(randomPrefix.count)) {
            self = .random(seed: seed)
        } else {
            self = .file(identity.source)
        }
    }
}
