import BottleneckKernels

/// A VGG network, or the prefix of one up to a cut: the modules in torchvision's
/// order with their parameters. Only the layers up to the cut are held, so a cut at
/// conv4_3 never loads fc6's 400 MB.
package struct VGG: Sendable {
    package enum Module: Sendable {
        case conv(Conv2D)
        case relu
        case maxPool(MaxPool2D)
        case adaptiveAvgPool(AdaptiveAvgPool2D)
        case linear(Linear)
        case dropout(Dropout)
    }

    package let config: VGGConfig
    /// modules[i] is config.layers[i], for i up to the last loaded position.
    package private(set) var modules: [Module]

    /// Builds the prefix through `cut` (the whole network when nil), asking `parameter`
    /// for each state-dict key with the shape it must have.
    package init(config: VGGConfig, through cut: CutPoint? = nil,
                parameter: (_ key: String, _ shape: [Int]) throws -> Tensor) rethrows {
        self.config = config
        let layers = config.layers.prefix((cut?.position ?? config.layers.count - 1) + 1)
        var modules: [Module] = []
        modules.reserveCapacity(layers.count)
        for layer in layers {
            switch layer.kind {
            case .conv(let inChannels, let outChannels):
                modules.append(.conv(Conv2D(
                    weight: try parameter("\(layer.path).weight", [outChannels, inChannels, 3, 3]),
                    bias: try parameter("\(layer.path).bias", [outChannels]))))
            case .linear(let inFeatures, let outFeatures):
                modules.append(.linear(Linear(
                    weight: try parameter("\(layer.path).weight", [outFeatures, inFeatures]),
                    bias: try parameter("\(layer.path).bias", [outFeatures]))))
            case .relu: modules.append(.relu)
            case .maxPool: modules.append(.maxPool(MaxPool2D()))
            case .adaptiveAvgPool(let size): modules.append(.adaptiveAvgPool(AdaptiveAvgPool2D(outputSize: size)))
            case .dropout: modules.append(.dropout(Dropout()))
            }
        }
        self.modules = modules
    }

    /// torchvision's initialisation (vgg.py `_initialize_weights`), from a seed: conv weights
    /// Kaiming-normal with fan_out and ReLU gain, linear weights N(0, 0.01), biases zero.
    package static func randomlyInitialized(config: VGGConfig, through cut: CutPoint? = nil, seed: UInt64) -> VGG {
        var generator = SeededGenerator(seed: seed)
        return VGG(config: config, through: cut) { key, shape in
            let isBias = key.hasSuffix(".bias")
            let standardDeviation: Float = shape.count == 4
                ? (2 / Float(shape[0] * shape[2] * shape[3])).squareRoot()
                : 0.01
            return Tensor(shape: shape) { values in
                for index in values.indices {
                    values[index] = isBias ? 0 : generator.nextNormal() * standardDeviation
                }
            }
        }
    }

    /// The last position this prefix can run to.
    package var lastPosition: Int { modules.count - 1 }

    /// x [N, 3, S, S] normalised images -> the activation at `cut`, [N, ...activationShape].
    /// Evaluation mode: dropout is the identity. `layerTimer` receives each layer's seconds.
    package func forward(_ x: Tensor, through cut: CutPoint,
                        layerTimer: ((LayerInfo, Double) -> Void)? = nil) throws -> Tensor {
        guard cut.position <= lastPosition else {
            throw ModelError.badInput("the network was loaded only through \(config.layers[lastPosition].name), not \(cut.layer.name)")
        }
        guard x.rank == 4, x.shape[1] == config.inputChannels else {
            throw ModelError.badInput("expected input [N, \(config.inputChannels), H, W], got \(x.shape)")
        }
        var (height, width) = (x.shape[2], x.shape[3])
        for (position, module) in modules.prefix(cut.position + 1).enumerated() {
            guard case .maxPool(let pool) = module else { continue }
            guard height >= pool.kernel, width >= pool.kernel else {
                throw ModelError.inputTooSmall(size: x.shape[2], layer: config.layers[position].name)
            }
            (height, width) = pool.outputSize(height: height, width: width)
        }
        return Self.evaluate(x, modules: modules[...cut.position], at: 0..<(cut.position + 1), layers: config.layers,
                             layerTimer: layerTimer)
    }

    /// x [N, ...activation entering `positions.lowerBound`] -> [N, ...activation leaving the last of `positions`],
    /// in evaluation mode (dropout is the identity): the one forward walk of the frozen prefix, the head and the
    /// fine-tune network's validation. `modules` are the modules at `positions` of `layers`, in order; a max pool's
    /// input must be at least its kernel. `layerTimer` receives each layer's seconds.
    package static func evaluate(_ x: Tensor, modules: ArraySlice<Module>, at positions: Range<Int>, layers: [LayerInfo],
                                 layerTimer: ((LayerInfo, Double) -> Void)? = nil) -> Tensor {
        precondition(modules.count == positions.count, "\(modules.count) modules for positions \(positions)")
        var activation = x
        var reluDone = false
        for (position, module) in zip(positions, modules) {
            let start = ContinuousClock.now
            defer { layerTimer?(layers[position], start.secondsElapsed) }
            switch module {
            case .conv(let conv):
                reluDone = fusesReLU(convAt: position, within: positions, layers: layers)
                activation = conv.forward(activation, fusingReLU: reluDone)
            case .relu:
                if !reluDone { ReLU.forward(&activation) }
                reluDone = false
            case .maxPool(let pool):
                activation = pool.forward(activation)
            case .adaptiveAvgPool(let pool):
                activation = pool.forward(activation)
            case .linear(let linear):
                activation = linear.forward(activation)
            case .dropout(let dropout):
                activation = dropout.forwardEvaluation(activation)
            }
        }
        return activation
    }

    /// Whether the conv at `position` runs its ReLU in its own pass, while the tile is in cache: when the next
    /// layer is that ReLU and a walk over `positions` runs it too (a cut at the conv asks for its raw output).
    package static func fusesReLU(convAt position: Int, within positions: Range<Int>, layers: [LayerInfo]) -> Bool {
        position + 1 < positions.upperBound && layers[position + 1].kind == .relu
    }
}
