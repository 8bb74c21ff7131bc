import BottleneckKernels

/// The layers of a VGG above a cache's cut, in torchvision's order and under its names: what
/// train-head trains, and what evaluate and predict run after the frozen prefix. The last layer,
/// fc8 (`classifier.6`), is the new one with one output per class.
///
///     cut fc7    drop7 → fc8
///     cut fc6    drop6 → fc7 → relu7 → drop7 → fc8
///     cut pool5  avgpool → flatten → fc6 → relu6 → drop6 → fc7 → relu7 → drop7 → fc8
///
/// A dropout at the cut itself (`classifier.5`) belongs to the head: the cache holds its
/// evaluation-mode output, which is its input, and training must still drop.
package struct HeadNetwork: Sendable {
    /// The network's configuration with `classes` set to the head's number of outputs.
    package let config: VGGConfig
    package let cut: CutPoint
    /// Position in `config.layers` of the first module.
    package let firstPosition: Int
    /// modules[i] is config.layers[firstPosition + i]; an optimizer steps its linears in place.
    package var modules: [VGG.Module]

    /// The torchvision path of the replaced last layer.
    package static let newLayerPath = "classifier.6"

    /// Builds the head above `cut`, asking `parameter` for each state-dict key with its shape.
    package init(config: VGGConfig, cut: CutPoint, dropout: Float = 0.5,
                parameter: (_ key: String, _ shape: [Int]) throws -> Tensor) throws {
        let first = try Self.firstPosition(above: cut, in: config)
        var modules: [VGG.Module] = []
        for layer in config.layers[first...] {
            switch layer.kind {
            case .adaptiveAvgPool(let size):
                modules.append(.adaptiveAvgPool(AdaptiveAvgPool2D(outputSize: size)))
            case .linear(let inFeatures, let outFeatures):
                modules.append(.linear(Linear(weight: try parameter("\(layer.path).weight", [outFeatures, inFeatures]),
                                              bias: try parameter("\(layer.path).bias", [outFeatures]))))
            case .relu:
                modules.append(.relu)
            case .dropout:
                modules.append(.dropout(Dropout(probability: dropout)))
            case .conv, .maxPool:
                preconditionFailure("firstPosition(above:in:) admits no convolution or max pool")
            }
        }
        self.config = config
        self.cut = cut
        self.firstPosition = first
        self.modules = modules
    }

    /// Where the head above `cut` starts; refuses cuts with nothing above them and cuts below pool5,
    /// whose heads would hold convolutions (training those is full fine-tuning).
    package static func firstPosition(above cut: CutPoint, in config: VGGConfig) throws -> Int {
        let layers = config.layers
        let first = cut.layer.kind == .dropout ? cut.position : cut.position + 1
        guard first < layers.count else {
            throw TrainingError(.invalidInput, "the cut \(cut.layer.path) is the network's last layer: there is nothing above it to train; "
                                + "extract at fc7 (or fc6, pool5)")
        }
        if let blocking = layers[first...].first(where: {
            switch $0.kind {
            case .conv, .maxPool: return true
            default: return false
            }
        }) {
            throw TrainingError(.invalidInput, "a head above \(cut.layer.path) would hold \(blocking.name) (\(blocking.path)); "
                                + "train-head needs a cache cut at pool5 or above (pool5, avgpool, fc6, fc7)")
        }
        return first
    }

    /// The layers of the head, in order.
    package var layers: ArraySlice<LayerInfo> { config.layers[firstPosition...] }
    package var positions: Range<Int> { firstPosition..<config.layers.count }
    package var classCount: Int { linears.last!.outFeatures }
    /// The module at `position` in `config.layers`.
    package func module(at position: Int) -> VGG.Module { modules[position - firstPosition] }
    /// The head's linears, in order.
    package var linears: [Linear] { modules.compactMap { if case .linear(let linear) = $0 { linear } else { nil } } }
    /// The state-dict key prefix of each of `linears` ("classifier.6").
    package var linearPaths: [String] { layers.filter { if case .linear = $0.kind { true } else { false } }.map(\.path) }

    /// Why cached activations of one row's `shape` cannot enter this head, or nil when they can.
    package func inputProblem(activationShape shape: [Int]) -> String? {
        switch modules.first(where: { if case .dropout = $0 { false } else { true } }) {
        case .adaptiveAvgPool:
            return shape.count == 3 && shape[0] == config.lastConvWidth
                ? nil : "the head starts with avgpool over \(config.lastConvWidth) channels, but rows are \(shape)"
        case .linear(let linear):
            let inFeatures = linear.inFeatures
            return shape.reduce(1, *) == inFeatures ? nil : "the head's first layer takes \(inFeatures) features, but rows are \(shape)"
        default:
            return nil
        }
    }

    /// The position of the linear layer `name` ("fc6", "classifier.0") in the head, for `--train-from`.
    package func linearPosition(named name: String) throws -> Int {
        let key = name.trimmingCharacters(in: .whitespaces)
        let headLinears = layers.filter { if case .linear = $0.kind { true } else { false } }
        guard let layer = headLinears.first(where: { $0.path == key || $0.name == key.lowercased() }) else {
            // A layer of the network below the cut is no typo: suggest only for a name the network does not have.
            let suggestion = (try? CutPoint(key, in: config)) == nil ? Suggestion.didYouMean(key, among: headLinears.map(\.name)) : ""
            throw SettingError(key: .trainFrom, "\(key)\(suggestion): not a fully connected layer above the cut "
                                + "(\(cut.layer.path)); choose one of \(headLinears.map(\.name).joined(separator: ", "))")
        }
        return layer.position
    }

    /// x [N, ...activation entering `positions.lowerBound`] -> [N, ...activation leaving the last of
    /// `positions`], in evaluation mode (dropout is the identity).
    package func forward(_ x: Tensor, positions: Range<Int>) -> Tensor {
        precondition(positions.lowerBound >= firstPosition && positions.upperBound <= config.layers.count,
                     "positions \(positions) outside the head \(self.positions)")
        return VGG.evaluate(x, modules: modules[(positions.lowerBound - firstPosition)..<(positions.upperBound - firstPosition)],
                            at: positions, layers: config.layers)
    }

    /// x [N, ...cut activation] -> logits [N, classes], evaluation mode.
    package func forward(_ x: Tensor) -> Tensor { forward(x, positions: positions) }

    /// Every parameter under its torchvision state-dict key, in order.
    package var stateDict: [(key: String, tensor: Tensor)] {
        zip(linearPaths, linears).flatMap { path, linear in
            [("\(path).weight", linear.weight), ("\(path).bias", linear.bias)]
        }
    }

    /// The head a run starts from: a new fc8 with `config.classes` outputs (torch's `nn.Linear`
    /// initialisation, from `seed`) and, for cuts below fc7, the pretrained layers between the cut and
    /// fc8 from `weights`, which must be the weights with sha256 (or "random-seed-N") `fingerprint`:
    /// the ones the cache was extracted with.
    package static func initial(config: VGGConfig, cut: CutPoint, dropout: Float, seed: UInt64, weights: WeightsChoice,
                               fingerprint: String) throws -> HeadNetwork {
        let first = try firstPosition(above: cut, in: config)
        let pretrained = config.layers[first...].filter { $0.path != newLayerPath && $0.parameterPrefix != nil }
        var tensors: [String: Tensor] = [:]
        if let last = pretrained.last {
            let identity = try NetworkLoader.identity(of: weights)
            guard identity.fingerprint == fingerprint else {
                throw TrainingError(.mismatch, "the layers between the cut (\(cut.layer.path)) and fc8 come from the backbone weights, but "
                                    + "\(weights) is \(identity.fingerprint) and the cache was extracted with \(fingerprint); "
                                    + "pass the cache's weights with --weights")
            }
            let needed = config.stateDictShapes.filter { entry in pretrained.contains { entry.key.hasPrefix($0.path + ".") } }
            switch weights {
            case .file(let path):
                let file = try StateDictFile.open(path: path)
                try file.validate(expected: Dictionary(uniqueKeysWithValues: needed.map { ($0.key, $0.shape) }), allowingExtraKeys: true)
                for entry in needed { tensors[entry.key] = try file.parameter(entry.key) }
            case .random(let seed):
                // The generator runs through the state dict in order, so the layers must be drawn with
                // everything before them, exactly as the prefix that made the cache was.
                let network = VGG.randomlyInitialized(config: config, through: try CutPoint(last.path, in: config), seed: seed)
                for case (let position, .linear(let linear)) in network.modules.enumerated() {
                    tensors["\(config.layers[position].path).weight"] = linear.weight
                    tensors["\(config.layers[position].path).bias"] = linear.bias
                }
            }
        }
        let newLayer = config.layers.last!
        guard case .linear(let inFeatures, let outFeatures) = newLayer.kind else { preconditionFailure("a VGG ends with fc8") }
        let fresh = newLinear(inFeatures: inFeatures, outFeatures: outFeatures, seed: seed)
        tensors["\(newLayer.path).weight"] = fresh.weight
        tensors["\(newLayer.path).bias"] = fresh.bias
        return try HeadNetwork(config: config, cut: cut, dropout: dropout) { key, _ in tensors[key]! }
    }

    /// torch's `nn.Linear(inFeatures, outFeatures)` initialisation, which the usual PyTorch transfer-learning code's
    /// `model.classifier[6] = nn.Linear(4096, K)` gives: kaiming_uniform(a=√5) for the weight and
    /// the same U(-1/√in, 1/√in) for the bias. -> weight [out, in], bias [out]
    package static func newLinear(inFeatures: Int, outFeatures: Int, seed: UInt64) -> Linear {
        var generator = SeededGenerator(seed: TrainingRandomness.seed(seed, .headInitialisation))
        let bound = 1 / Float(inFeatures).squareRoot()
        func uniform(_ shape: [Int]) -> Tensor {
            Tensor(shape: shape) { values in
                for index in values.indices { values[index] = (2 * generator.nextUnitFloat() - 1) * bound }
            }
        }
        let weight = uniform([outFeatures, inFeatures])
        return Linear(weight: weight, bias: uniform([outFeatures]))
    }
}
