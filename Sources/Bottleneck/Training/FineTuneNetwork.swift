import BottleneckKernels

/// The whole VGG in training mode, for full fine-tuning: one step is forward (keeping what backward
/// needs), cross-entropy, backward, and each layer's parameters updated as soon as its gradients exist.
///
///     images [N, 3, S, S] → conv/relu/pool … → avgpool → flatten → fc6 → relu → drop → fc7 → relu → drop → fc8
///     logits [N, K] → dlogits → … backward down to the lowest trainable layer, updating each on the way
///
/// Freezing is torch's `requires_grad=False` with the optimizer built on the rest: layers at or below
/// `frozenThrough` get no gradient and no update, and backpropagation stops at the lowest trainable
/// layer (which computes its parameter gradients but no input gradient), so nothing below it runs
/// backward at all. The frozen layers are a fixed feature extractor and run as evaluation (no dropout),
/// exactly what a feature cache holds, so `--freeze-through fc7` is train-head's fc7 head, uncached.
///
/// Memory: the forward keeps, for trainable layers only, each layer's input (a conv's ReLU output
/// serves its own ReLU's mask and the next layer's input at once; max pool finds its argmax again from
/// its input instead of keeping indices); backward frees them as it passes, and holds one layer's
/// parameter gradient at a time, since that layer is updated before the next gradient is made.
package struct FineTuneNetwork: Sendable {
    package let config: VGGConfig
    /// modules[i] is config.layers[i]; an optimizer steps its convs and linears in place.
    package private(set) var modules: [VGG.Module]
    /// Layers at positions up to this one are frozen; -1 when everything trains.
    package let frozenThrough: Int
    /// The lowest conv or linear that learns: backward stops there.
    package let firstTrainablePosition: Int
    /// One layer's parameter gradients, kept across layers and steps in storage as large as the largest
    /// layer's: fc6's 400 MB would otherwise be allocated, faulted in and freed every step.
    private var gradWeight = Tensor(zeros: [])
    private var gradBias = Tensor(zeros: [])

    /// What one step did, for the trainer's figures and for tests that check freezing really skips work.
    package struct StepOutcome: Sendable {
        package var loss: SoftmaxCrossEntropy.Loss
        /// Positions of the layers whose parameter gradients were computed (and which were updated).
        package var updatedPositions: [Int]
        /// Positions of the layers that computed a gradient for their input.
        package var inputGradientPositions: [Int]
    }

    /// The network of `vgg` with dropout `dropout` in its classifier, frozen through `frozenThrough` (-1:
    /// nothing frozen). A `vgg` loaded only through fc7 gets `newHead` as its fc8 (`classifier.6`).
    package init(_ vgg: VGG, newHead: Linear? = nil, dropout: Float, frozenThrough: Int) throws {
        let layers = vgg.config.layers
        var modules: [VGG.Module] = []
        for layer in layers {
            if layer.kind == .dropout {
                modules.append(.dropout(Dropout(probability: dropout)))
            } else if layer.position <= vgg.lastPosition {
                modules.append(vgg.modules[layer.position])
            } else if layer.path == HeadNetwork.newLayerPath, let newHead {
                modules.append(.linear(newHead))
            } else {
                throw TrainingError(.invalidInput, "fine-tuning needs the whole network, but it was loaded only through "
                                    + "\(layers[vgg.lastPosition].name)")
            }
        }
        guard let firstTrainable = layers.first(where: { $0.position > frozenThrough && $0.parameterPrefix != nil }) else {
            throw TrainingError(.invalidInput, "freezing through \(layers[frozenThrough].name) leaves no layer to train")
        }
        self.config = vgg.config
        self.modules = modules
        self.frozenThrough = frozenThrough
        self.firstTrainablePosition = firstTrainable.position
    }

    /// torchvision paths of the layers that learn ("features.17", …, "classifier.6").
    package var trainableLayers: [String] {
        config.layers.filter { $0.position >= firstTrainablePosition && $0.parameterPrefix != nil }.map(\.path)
    }

    package var trainableParameterCount: Int {
        modules.indices.filter { $0 >= firstTrainablePosition }.reduce(0) { total, position in
            switch modules[position] {
            case .conv(let conv): total + conv.weight.count + conv.bias.count
            case .linear(let linear): total + linear.weight.count + linear.bias.count
            default: total
            }
        }
    }

    /// Every parameter under its torchvision state-dict key, in torchvision's order.
    package var stateDict: [(key: String, tensor: Tensor)] {
        zip(config.layers, modules).flatMap { layer, module -> [(key: String, tensor: Tensor)] in
            switch module {
            case .conv(let conv): [("\(layer.path).weight", conv.weight), ("\(layer.path).bias", conv.bias)]
            case .linear(let linear): [("\(layer.path).weight", linear.weight), ("\(layer.path).bias", linear.bias)]
            default: []
            }
        }
    }

    /// Replaces the parameters of layer `path` ("classifier.6") with tensors of the same shapes.
    package mutating func setParameters(path: String, weight: Tensor, bias: Tensor) throws {
        guard let layer = config.layers.first(where: { $0.path == path }) else {
            throw TrainingError(.mismatch, "the network has no layer \(path)")
        }
        func check(_ name: String, _ tensor: Tensor, _ expected: [Int]) throws {
            guard tensor.shape == expected else {
                throw TrainingError(.mismatch, "\(path).\(name) has shape \(tensor.shape), but this network's is \(expected)")
            }
        }
        switch modules[layer.position] {
        case .conv(var conv):
            try check("weight", weight, conv.weight.shape)
            try check("bias", bias, conv.bias.shape)
            conv.weight = weight
            conv.bias = bias
            modules[layer.position] = .conv(conv)
        case .linear(var linear):
            try check("weight", weight, linear.weight.shape)
            try check("bias", bias, linear.bias.shape)
            linear.weight = weight
            linear.bias = bias
            modules[layer.position] = .linear(linear)
        default:
            throw TrainingError(.mismatch, "\(path) (\(layer.name)) has no parameters")
        }
    }

    /// What the process holds besides the network (runtime, BLAS and HDF5 buffers, decoded images), measured
    /// as the gap between the estimate and the peak RSS of 112 px runs.
    static let fixedOverheadBytes = 300 << 20

    /// An upper estimate of the bytes a training step needs: every parameter, `optimizerCopies` optimizer
    /// buffers per trainable parameter (SGD momentum 1, Adam 2), the largest parameter gradient (one at a
    /// time), the activations kept for backward, the few largest activation-sized buffers alive at once
    /// (a layer's input, output, gradients and conv tiles), and the fixed overhead.
    package static func estimatedStepBytes(config: VGGConfig, imageSize: Int, batchSize: Int, frozenThrough: Int,
                                          optimizerCopies: Int) -> Int {
        let layers = config.layers
        var shape = [config.inputChannels, imageSize, imageSize]
        var parameters = 0
        var trainableParameters = 0
        var largestGradient = 0
        var kept = 0
        var largestActivation = shape.reduce(1, *)
        let firstTrainable = layers.first { $0.position > frozenThrough && $0.parameterPrefix != nil }?.position ?? layers.count
        for layer in layers {
            let inputSize = shape.reduce(1, *)
            var layerParameters = 0
            switch layer.kind {
            case .conv(let inChannels, let outChannels):
                layerParameters = outChannels * inChannels * 9 + outChannels
                shape = [outChannels, shape[1], shape[2]]
            case .maxPool: shape = [shape[0], (shape[1] - 2) / 2 + 1, (shape[2] - 2) / 2 + 1]
            case .adaptiveAvgPool(let size): shape = [shape[0], size, size]
            case .linear(let inFeatures, let outFeatures):
                layerParameters = outFeatures * inFeatures + outFeatures
                shape = [outFeatures]
            case .relu, .dropout: break
            }
            parameters += layerParameters
            if layer.position >= firstTrainable {
                trainableParameters += layerParameters
                largestGradient = max(largestGradient, layerParameters)
                if layer.kind != .relu { kept += inputSize }
            }
            largestActivation = max(largestActivation, shape.reduce(1, *))
        }
        let floats = parameters + optimizerCopies * trainableParameters + largestGradient
            + batchSize * (kept + 4 * largestActivation)
        return floats * MemoryLayout<Float>.size + fixedOverheadBytes
    }

    /// The optimizer slot of a parameter layer's weight (its bias is the next): 2 × its index among the
    /// network's convs and linears, so a slot means the same tensor whatever is frozen.
    static func slot(ofParameterLayerAt position: Int, in layers: [LayerInfo]) -> Int {
        2 * layers.prefix(position).filter { $0.parameterPrefix != nil }.count
    }

    /// images [N, 3, S, S] -> logits [N, K] in evaluation mode (dropout is the identity).
    package func logits(_ images: Tensor) -> Tensor {
        VGG.evaluate(images, modules: modules[...], at: modules.indices, layers: config.layers)
    }

    /// One optimizer step on images [N, 3, S, S] with labels [N]. `dropoutGenerator(row, position)` gives the
    /// generator of row `row`'s mask at the dropout at `position`; `learningRate(layer)` each layer's rate
    /// (parameter groups). When the loss is not finite nothing is updated: the caller stops the run. `profile`, when
    /// given, gets the step's seconds per layer and phase.
    ///
    /// With a `group`, `images` are this rank's share of a global batch (possibly none) and the step is that of the
    /// global batch: the loss and its gradient become the global mean's (each rank's dlogits scaled by its rows over
    /// the global rows), each layer's parameter gradients are summed across the ranks before its update, and the
    /// outcome's loss is the global batch's. Every rank then applies the same update to the same parameters.
    package mutating func trainStep<Step: Optimizer>(images: Tensor, labels: [Int32], optimizer: inout Step,
                                                    learningRate: (LayerInfo) -> Double, profile: StepProfile? = nil,
                                                    group: ProcessGroup? = nil,
                                                    dropoutGenerator: (_ row: Int, _ position: Int) -> SeededGenerator) -> StepOutcome {
        let layers = config.layers
        let batch = images.shape[0]
        precondition(labels.count == batch, "\(batch) images but \(labels.count) labels")
        precondition(batch > 0 || group != nil, "a training step needs images")
        // inputs[p]: the activation entering layer p, kept for trainable layers whose backward reads it.
        var inputs = [Tensor?](repeating: nil, count: modules.count)
        var masks = [Tensor?](repeating: nil, count: modules.count)
        var activation = images
        var position = 0
        profile?.start()
        // Its own walk, not `VGG.evaluate`: it keeps what backward reads and drops rows by their seeds.
        while batch > 0 && position < modules.count {
            let layerPosition = position
            let keeps = position >= firstTrainablePosition
            switch modules[position] {
            case .conv(let conv):
                if keeps { inputs[position] = activation }
                let fused = VGG.fusesReLU(convAt: position, within: modules.indices, layers: layers)
                activation = conv.forward(activation, fusingReLU: fused)
                if fused { position += 1 }
            case .relu:
                ReLU.forward(&activation)
            case .maxPool(let pool):
                if keeps { inputs[position] = activation }
                activation = pool.forward(activation)
            case .adaptiveAvgPool(let pool):
                if keeps { inputs[position] = activation }
                activation = pool.forward(activation)
            case .linear(let linear):
                activation = activation.reshaped([batch, activation.count / batch])
                if keeps { inputs[position] = activation }
                activation = linear.forward(activation)
            case .dropout(let dropout) where position > frozenThrough:
                // Kept before the in-place drop: it is the ReLU's output, whose mask the ReLU below needs.
                if keeps { inputs[position] = activation }
                var mask = keeps ? Tensor(zeros: activation.shape) : nil
                applyDropout(dropout, to: &activation, mask: &mask, position: position, dropoutGenerator: dropoutGenerator)
                masks[position] = mask
            case .dropout:
                break
            }
            // A conv's fused ReLU counts as the conv's.
            profile?.lap(layerPosition, .forward)
            position += 1
        }

        var gradient = Tensor(zeros: [])
        var loss = batch == 0 ? SoftmaxCrossEntropy.Loss(mean: 0, correct: 0, count: 0)
            : SoftmaxCrossEntropy.lossAndGradient(logits: activation, labels: labels, gradLogits: &gradient)
        if let group { loss = Self.globalLoss(loss, scalingGradient: &gradient, over: group) }
        profile?.lapOther()
        var outcome = StepOutcome(loss: loss, updatedPositions: [], inputGradientPositions: [])
        // Every image of the global batch failed to decode: nothing to learn from, on any rank.
        guard loss.isFinite && loss.count > 0 else { return outcome }

        for position in stride(from: modules.count - 1, through: firstTrainablePosition, by: -1) {
            let layer = layers[position]
            let needsInputGradient = position > firstTrainablePosition
            let slot = Self.slot(ofParameterLayerAt: position, in: layers)
            // A ReLU below that runs backward: it reads this layer's input as its output.
            let reluBelow = position - 1 >= firstTrainablePosition && layers[position - 1].kind == .relu
            if batch == 0 {
                // This rank has no images in the step: its share of each layer's gradient sum is zero.
                if let shapes = parameterShapes(at: position) {
                    // In the kept storage, as the other ranks' steps fill it, so fc6's 400 MB is not allocated afresh.
                    gradWeight.reshapeKeepingStorage(shapes.weight)
                    gradBias.reshapeKeepingStorage(shapes.bias)
                    gradWeight.data.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
                    gradBias.data.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
                }
            } else {
                switch modules[position] {
                case .linear(let linear):
                    let input = inputs[position]!
                    gradWeight.reshapeKeepingStorage(linear.weight.shape)
                    gradBias.reshapeKeepingStorage(linear.bias.shape)
                    linear.parameterGradients(input: input, gradOutput: gradient, weight: &gradWeight, bias: &gradBias)
                    profile?.lap(position, .weightGradient)
                    if needsInputGradient {
                        var gradInput = Tensor(zeros: [])
                        linear.inputGradient(gradOutput: gradient, into: &gradInput)
                        gradient = gradInput
                        outcome.inputGradientPositions.append(position)
                    }
                case .conv(let conv):
                    gradWeight.reshapeKeepingStorage(conv.weight.shape)
                    gradBias.reshapeKeepingStorage(conv.bias.shape)
                    conv.parameterGradients(input: inputs[position]!, gradOutput: gradient, weight: &gradWeight, bias: &gradBias)
                    profile?.lap(position, .weightGradient)
                    if needsInputGradient {
                        gradient = conv.inputGradient(gradOutput: gradient, throughReLUWithOutput: reluBelow ? inputs[position] : nil)
                        outcome.inputGradientPositions.append(position)
                    }
                case .relu:
                    // The layer above kept this ReLU's output as its own input; a max pool or conv above has applied its mask.
                    switch modules[position + 1] {
                    case .maxPool, .conv: break
                    default: ReLU.backward(output: inputs[position + 1]!.reshaped(gradient.shape), gradOutput: &gradient)
                    }
                    inputs[position + 1] = nil
                case .dropout(let dropout):
                    dropout.backward(gradOutput: &gradient, mask: masks[position]!)
                    masks[position] = nil
                case .maxPool(let pool):
                    gradient = pool.backward(input: inputs[position]!, gradOutput: gradient, throughReLU: reluBelow)
                case .adaptiveAvgPool(let pool):
                    let inputShape = inputs[position]!.shape
                    gradient = pool.backward(gradOutput: gradient.reshaped([batch, inputShape[1], pool.outputHeight, pool.outputWidth]),
                                             inputShape: inputShape)
                }
            }
            if needsInputGradient { profile?.lap(position, .inputGradient) }
            if layer.parameterPrefix != nil {
                if let group {
                    gradWeight.data.withUnsafeMutableBufferPointer { group.sum($0, "\(layer.path).weight's gradient") }
                    gradBias.data.withUnsafeMutableBufferPointer { group.sum($0, "\(layer.path).bias's gradient") }
                }
                // After the switch, whose binding of the layer would otherwise hold its tensors twice and make the update copy them.
                optimizer.step(&modules, at: position, gradWeight: gradWeight, gradBias: gradBias, slot: slot,
                               learningRate: learningRate(layer))
                outcome.updatedPositions.append(position)
                profile?.lap(position, .optimizer)
            }
            if !reluBelow { inputs[position] = nil }
        }
        return outcome
    }

    /// The global batch's loss from each rank's `local` one; `gradient` (this rank's dlogits [n, K], the local mean's)
    /// becomes its rows' part of the global mean's, (softmax - onehot) / N, so that the ranks' gradients sum to it.
    private static func globalLoss(_ local: SoftmaxCrossEntropy.Loss, scalingGradient gradient: inout Tensor,
                                   over group: ProcessGroup) -> SoftmaxCrossEntropy.Loss {
        var figures = [local.mean * Double(local.count), Double(local.correct), Double(local.count)]
        group.sum(&figures, "the step's loss")
        let globalCount = Int(figures[2])
        guard globalCount > 0 else { return SoftmaxCrossEntropy.Loss(mean: 0, correct: 0, count: 0) }
        if local.count > 0 {
            let share = Float(Double(local.count) / Double(globalCount))
            gradient.data.withUnsafeMutableBufferPointer { values in
                for index in values.indices { values[index] *= share }
            }
        }
        return SoftmaxCrossEntropy.Loss(mean: figures[0] / Double(globalCount), correct: Int(figures[1]), count: globalCount)
    }

    /// The weight and bias shapes of the conv or linear at `position`; nil for a layer without parameters.
    private func parameterShapes(at position: Int) -> (weight: [Int], bias: [Int])? {
        switch modules[position] {
        case .conv(let conv): (conv.weight.shape, conv.bias.shape)
        case .linear(let linear): (linear.weight.shape, linear.bias.shape)
        case .relu, .maxPool, .adaptiveAvgPool, .dropout: nil
        }
    }

    /// activation [N, ...] -> the same with row n dropped by `dropoutGenerator(n, position)`, mask [N, ...]
    /// filled when given.
    private func applyDropout(_ dropout: Dropout, to activation: inout Tensor, mask: inout Tensor?, position: Int,
                              dropoutGenerator: (Int, Int) -> SeededGenerator) {
        let batch = activation.shape[0]
        let rowSize = activation.count / batch
        activation.data.withUnsafeMutableBufferPointer { values in
            for row in 0..<batch {
                var generator = dropoutGenerator(row, position)
                let rowValues = UnsafeMutableBufferPointer(rebasing: values[(row * rowSize)..<((row + 1) * rowSize)])
                if mask != nil {
                    mask!.data.withUnsafeMutableBufferPointer { factors in
                        let rowFactors = UnsafeMutableBufferPointer(rebasing: factors[(row * rowSize)..<((row + 1) * rowSize)])
                        dropout.forwardTraining(UnsafeBufferPointer(rowValues), into: rowValues, mask: rowFactors,
                                                generator: &generator)
                    }
                } else {
                    dropout.forwardTraining(UnsafeBufferPointer(rowValues), into: rowValues, mask: nil, generator: &generator)
                }
            }
        }
    }
}
