import BottleneckKernels

/// keras.applications' VGG weight files (`vgg16_weights_tf_dim_ordering_tf_kernels.h5` and `..._notop.h5`), read
/// as torchvision's state dict. The layer group (the root of a `save_weights` file, `model_weights` of a whole
/// saved model) lists its layers, in model order, in the attribute `layer_names`; each layer is a group whose
/// attribute `weight_names` lists its datasets, kernel then bias, by paths relative to it (`block1_conv1_W_1:0` in
/// Keras 1 files, `block1_conv1/kernel:0` in later ones). Layers without weights (input, pools, flatten) list none.
///
/// Keras keeps conv kernels as [3, 3, in, out] and dense kernels as [in, out], flattens pool5 channels-last
/// (H, W, C), and its VGG was trained in caffe's style on BGR images: each is turned into what torchvision's VGG
/// expects when the tensor is read (`KerasConversion`), the first convolution's input channels reversed so that
/// the network takes RGB. The input normalisation the weights were trained with travels with them
/// (`caffeNormalization`).
enum KerasWeightsFormat {
    /// caffe's preprocessing in RGB order, on the [0, 1] scale `Preprocessing` subtracts the mean on: keras's
    /// `preprocess_input(mode="caffe")` subtracts [103.939, 116.779, 123.68] from BGR values in 0...255 and
    /// divides by nothing, which is (x / 255 - mean / 255) / (1 / 255).
    static let caffeNormalization = InputNormalization(
        mean: [123.68 / 255, 116.779 / 255, 103.939 / 255], std: [1 / 255, 1 / 255, 1 / 255],
        origin: "Keras's caffe preprocessing (RGB 0-255 minus [123.68, 116.779, 103.939], no std)")

    /// Far more layers than any VGG has (VGG19 with its head: 27), few enough to list in a message.
    private static let maximumLayerCount = 1024

    /// The group holding the layers when `file` is a Keras weights file: one with a `layer_names` attribute, at
    /// the root or under `model_weights`; nil for any other HDF5 file.
    static func layerGroup(in file: HDF5File) throws -> (group: HDF5Group, path: String)? {
        if try file.attributeKind("layer_names") != nil { return (file, "") }
        let nested = "model_weights"
        guard try file.contains(nested), try file.kind(of: nested) == .group else { return nil }
        let group = try file.openGroup(nested)
        return try group.attributeKind("layer_names") != nil ? (group, nested + "/") : nil
    }

    static func parse(_ file: HDF5File, layers: (group: HDF5Group, path: String)) throws -> ParsedStateDict {
        let owner = layers.path.isEmpty ? "the root group" : "group model_weights"
        let layerNames = try names(layers.group, attribute: "layer_names", of: owner)
        guard layerNames.count <= maximumLayerCount else {
            throw WeightFileProblem.malformed("layer_names lists \(layerNames.count) layers, more than any VGG has (\(maximumLayerCount))")
        }
        var walk = Walk()
        for name in layerNames {
            guard !name.isEmpty, try layers.group.contains(name), try layers.group.kind(of: name) == .group else {
                throw WeightFileProblem.malformed("layer_names lists layer '\(name)', but the file has no group of that name")
            }
            let layer = try layers.group.openGroup(name)
            let weightNames = try names(layer, attribute: "weight_names", of: "layer \(name)")
            if weightNames.isEmpty { continue }
            guard weightNames.count == 2 else {
                throw WeightFileProblem.malformed("layer \(name) lists \(counted(weightNames.count, "weight")) (\(listFew(weightNames))); "
                                                  + "a VGG convolution or dense layer has a kernel and a bias")
            }
            let kernel = try Weight(in: layer, layerName: name, weightName: weightNames[0], root: layers.path)
            let bias = try Weight(in: layer, layerName: name, weightName: weightNames[1], root: layers.path)
            try walk.add(layer: name, kernel: kernel, bias: bias)
        }
        guard !walk.tensors.isEmpty else {
            throw WeightFileProblem.malformed("none of the \(counted(layerNames.count, "layer")) in layer_names holds weights")
        }
        let note = "read as Keras VGG weights: kernels transposed to PyTorch's layout, fc1's inputs reordered from "
            + "channels-last, the first convolution's input channels reversed from BGR to RGB"
        return ParsedStateDict(format: .keras, tensors: walk.tensors, notes: [note], metadata: try HDF5WeightsFormat.metadata(of: file),
                               normalization: caffeNormalization)
    }

    /// The strings of a layer-list attribute, with a message naming it when it is missing or not strings.
    private static func names(_ group: HDF5Group, attribute: String, of owner: String) throws -> [String] {
        let names: [String]?
        do {
            names = try group.stringsAttribute(attribute)
        } catch let error as HDF5Error {
            let what = try group.attributeKind(attribute) == .string ? error.reason : "it does not hold strings"
            throw WeightFileProblem.malformed("the \(attribute) attribute of \(owner) cannot be read: \(what)")
        }
        guard let names else { throw WeightFileProblem.malformed("\(owner) has no \(attribute) attribute") }
        return names
    }

    /// One dataset a layer's `weight_names` lists.
    private struct Weight {
        let name: String
        /// From the file's root, for reading later.
        let path: String
        let shape: [Int]
        let dtype: WeightDType

        init(in layer: HDF5Group, layerName: String, weightName: String, root: String) throws {
            let dataset: HDF5Dataset
            do {
                dataset = try layer.openDataset(weightName)
            } catch let error as HDF5Error {
                throw WeightFileProblem.malformed("layer \(layerName) lists weight '\(weightName)', which is not a dataset "
                                                  + "in its group (\(error.reason))")
            }
            let kind = try dataset.elementKind()
            guard let dtype = HDF5WeightsFormat.dtype(of: kind), dtype.isReadableAsFloat32 else {
                throw WeightFileProblem.malformed("weight \(weightName) of layer \(layerName) does not hold floating-point values")
            }
            name = weightName
            path = root + layerName + "/" + weightName
            shape = try dataset.shape()
            self.dtype = dtype
        }
    }

    /// The layers seen so far and the torchvision keys they became.
    private struct Walk {
        var tensors: [ParsedTensor] = []
        /// The last convolution's block and place in it (keras names them `block<b>_conv<n>`), and its width.
        var lastConvolution: (block: Int, number: Int, name: String, width: Int)?
        /// Index in torchvision's `features` of the next convolution: each is followed by a ReLU, each block by a pool.
        var featureIndex = 0
        var denseLayers = 0

        mutating func add(layer: String, kernel: Weight, bias: Weight) throws {
            // A width of 0 would divide by zero in fc1's grid, and no trained layer has one.
            guard !kernel.shape.contains(0) else {
                throw WeightFileProblem.malformed("layer \(layer)'s kernel \(kernel.name) has shape \(kernel.shape), with no values")
            }
            switch kernel.shape.count {
            case 4: try addConvolution(layer, kernel: kernel, bias: bias)
            case 2: try addDense(layer, kernel: kernel, bias: bias)
            default:
                throw WeightFileProblem.malformed("layer \(layer)'s kernel \(kernel.name) has shape \(kernel.shape), neither a "
                                                  + "convolution's [3, 3, in, out] nor a dense layer's [in, out]")
            }
        }

        private mutating func addConvolution(_ layer: String, kernel: Weight, bias: Weight) throws {
            guard denseLayers == 0 else {
                throw WeightFileProblem.malformed("convolution layer \(layer) comes after a dense layer in layer_names")
            }
            let (height, width, inputs, outputs) = (kernel.shape[0], kernel.shape[1], kernel.shape[2], kernel.shape[3])
            guard height == 3, width == 3 else {
                // keras.applications' `..._th_dim_ordering_th_kernels.h5` keeps Theano's flipped [out, in, 3, 3] kernels.
                let theano = inputs == 3 && outputs == 3 ? " (a th_dim_ordering_th_kernels file? use the tf_kernels one)" : ""
                throw WeightFileProblem.malformed("layer \(layer)'s kernel has shape \(kernel.shape), not a VGG convolution's "
                                                  + "[3, 3, in, out]\(theano)")
            }
            try checkBias(bias, of: layer, outputs: outputs)
            let place = try Self.blockAndNumber(layer)
            if let last = lastConvolution {
                let nextInBlock = place.block == last.block && place.number == last.number + 1
                let nextBlock = place.block == last.block + 1 && place.number == 1
                guard nextInBlock || nextBlock else {
                    throw WeightFileProblem.malformed("layer \(layer) follows \(last.name) in layer_names: a convolution "
                                                      + "between them is missing")
                }
                guard inputs == last.width else {
                    throw WeightFileProblem.malformed("layer \(layer)'s kernel has shape \(kernel.shape), but \(last.name) "
                                                      + "gives it \(last.width) channels")
                }
                if nextBlock { featureIndex += 1 }
            } else if place.block != 1 || place.number != 1 {
                throw WeightFileProblem.malformed("the first convolution in layer_names is \(layer), not block1_conv1")
            }
            let key = "features.\(featureIndex)"
            tensors.append(ParsedTensor(key: key + ".weight", dtype: kernel.dtype, shape: [outputs, inputs, 3, 3],
                                        location: .kerasDataset(path: kernel.path,
                                                                conversion: .convolution(reversingInputs: lastConvolution == nil))))
            tensors.append(ParsedTensor(key: key + ".bias", dtype: bias.dtype, shape: bias.shape,
                                        location: .hdf5Dataset(path: bias.path)))
            lastConvolution = (place.block, place.number, layer, outputs)
            featureIndex += 2
        }

        private mutating func addDense(_ layer: String, kernel: Weight, bias: Weight) throws {
            guard denseLayers < 3 else {
                throw WeightFileProblem.malformed("dense layer \(layer) is a fourth; a VGG classifier has three (fc1, fc2, predictions)")
            }
            let (inputs, outputs) = (kernel.shape[0], kernel.shape[1])
            try checkBias(bias, of: layer, outputs: outputs)
            var grid = 1
            if denseLayers == 0, let channels = lastConvolution?.width {
                // fc1 reads the last pool's [grid, grid, channels] output flattened channels-last.
                let cells = inputs / channels
                grid = Int(Double(cells).squareRoot().rounded())
                guard inputs % channels == 0, grid * grid == cells else {
                    throw WeightFileProblem.malformed("layer \(layer)'s kernel has shape \(kernel.shape): \(inputs) inputs are not "
                                                      + "a square grid of the last convolution's \(channels) channels")
                }
            }
            let key = "classifier.\(3 * denseLayers)"
            tensors.append(ParsedTensor(key: key + ".weight", dtype: kernel.dtype, shape: [outputs, inputs],
                                        location: .kerasDataset(path: kernel.path, conversion: .dense(flattenedGrid: grid))))
            tensors.append(ParsedTensor(key: key + ".bias", dtype: bias.dtype, shape: bias.shape,
                                        location: .hdf5Dataset(path: bias.path)))
            denseLayers += 1
        }

        private func checkBias(_ bias: Weight, of layer: String, outputs: Int) throws {
            guard bias.shape == [outputs] else {
                throw WeightFileProblem.malformed("layer \(layer)'s bias \(bias.name) has shape \(bias.shape), expected [\(outputs)] "
                                                  + "for its \(outputs) outputs")
            }
        }

        /// (b, n) of keras.applications' `block<b>_conv<n>`.
        private static func blockAndNumber(_ layer: String) throws -> (block: Int, number: Int) {
            let parts = layer.split(separator: "_")
            guard parts.count == 2, parts[0].hasPrefix("block"), parts[1].hasPrefix("conv"),
                  let block = Int(parts[0].dropFirst(5)), let number = Int(parts[1].dropFirst(4)), block > 0, number > 0 else {
                throw WeightFileProblem.malformed("convolution layer \(layer) is not named block<b>_conv<n>, as keras.applications' "
                                                  + "VGG names its layers")
            }
            return (block, number)
        }
    }

    /// The dataset at `datasetPath` as float32 in torchvision's layout (`shape`).
    static func readTensor(_ file: HDF5File, datasetPath: String, conversion: KerasConversion, shape: [Int]) throws -> Tensor {
        let stored = try HDF5WeightsFormat.readTensor(file, datasetPath: datasetPath, shape: shape)
        return Tensor(shape: shape, unsafeUninitialized: { values in
            stored.data.withUnsafeBufferPointer { stored in
                switch conversion {
                case .convolution(let reversingInputs):
                    // [3, 3, in, out] → [out, in, 3, 3]
                    let (outputs, inputs, height, width) = (shape[0], shape[1], shape[2], shape[3])
                    for row in 0..<height {
                        for column in 0..<width {
                            for input in 0..<inputs {
                                let source = ((row * width + column) * inputs + input) * outputs
                                let target = (reversingInputs ? inputs - 1 - input : input) * height * width + row * width + column
                                for output in 0..<outputs { values[output * inputs * height * width + target] = stored[source + output] }
                            }
                        }
                    }
                case .dense(let grid):
                    // [in, out] → [out, in]; with a grid, input (h, w, c) becomes torch's (c, h, w).
                    let (outputs, inputs) = (shape[0], shape[1])
                    let channels = inputs / (grid * grid)
                    for input in 0..<inputs {
                        let (cell, channel) = input.quotientAndRemainder(dividingBy: channels)
                        let target = channel * grid * grid + cell
                        for output in 0..<outputs { values[output * inputs + target] = stored[input * outputs + output] }
                    }
                }
            }
        })
    }
}

/// How a Keras kernel becomes torchvision's tensor when it is read.
enum KerasConversion: Sendable {
    /// [3, 3, in, out] → [out, in, 3, 3], the input channels reversed (BGR → RGB) for the first convolution.
    case convolution(reversingInputs: Bool)
    /// [in, out] → [out, in]; a grid above 1 means the inputs are a [grid, grid, channels] map flattened channels-last.
    case dense(flattenedGrid: Int)
}
