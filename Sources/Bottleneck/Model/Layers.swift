import BottleneckKernels

/// Every module of a VGG in torchvision's order, with its torchvision path
/// (`features.23`, `avgpool`, `classifier.4`) and its conventional name
/// (`conv4_3`, `relu4_3`, `pool4`, `fc7`, `relu7`, `drop7`).
package struct LayerInfo: Sendable, Equatable {
    package enum Kind: Sendable, Equatable {
        case conv(inChannels: Int, outChannels: Int)
        case relu
        case maxPool
        case adaptiveAvgPool(Int)
        case linear(inFeatures: Int, outFeatures: Int)
        case dropout
    }

    /// Position in the flat sequence features…, avgpool, classifier… (flatten is implicit).
    package let position: Int
    package let path: String
    package let name: String
    package let kind: Kind

    /// torchvision state-dict prefix of the parameters, for convs and linears.
    package var parameterPrefix: String? {
        switch kind {
        case .conv, .linear: return path
        default: return nil
        }
    }
}

extension VGGConfig {
    package var layers: [LayerInfo] {
        var layers: [LayerInfo] = []
        var channels = inputChannels
        var block = 1
        var convInBlock = 0
        var index = 0
        func append(_ path: String, _ name: String, _ kind: LayerInfo.Kind) {
            layers.append(LayerInfo(position: layers.count, path: path, name: name, kind: kind))
        }
        for item in features {
            switch item {
            case .conv(let width):
                convInBlock += 1
                append("features.\(index)", "conv\(block)_\(convInBlock)", .conv(inChannels: channels, outChannels: width))
                append("features.\(index + 1)", "relu\(block)_\(convInBlock)", .relu)
                channels = width
                index += 2
            case .pool:
                append("features.\(index)", "pool\(block)", .maxPool)
                block += 1
                convInBlock = 0
                index += 1
            }
        }
        append("avgpool", "avgpool", .adaptiveAvgPool(pooledSize))
        let widths = [(flattenedFeatures, hidden), (hidden, hidden), (hidden, classes)]
        for (layer, (inFeatures, outFeatures)) in widths.enumerated() {
            let fc = 6 + layer
            append("classifier.\(3 * layer)", "fc\(fc)", .linear(inFeatures: inFeatures, outFeatures: outFeatures))
            if layer < 2 {
                append("classifier.\(3 * layer + 1)", "relu\(fc)", .relu)
                append("classifier.\(3 * layer + 2)", "drop\(fc)", .dropout)
            }
        }
        return layers
    }

    /// Every parameter key of the state dict with its shape, in torchvision's order.
    package var stateDictShapes: [(key: String, shape: [Int])] {
        layers.flatMap { layer -> [(key: String, shape: [Int])] in
            switch layer.kind {
            case .conv(let inChannels, let outChannels):
                return [("\(layer.path).weight", [outChannels, inChannels, 3, 3]), ("\(layer.path).bias", [outChannels])]
            case .linear(let inFeatures, let outFeatures):
                return [("\(layer.path).weight", [outFeatures, inFeatures]), ("\(layer.path).bias", [outFeatures])]
            default:
                return []
            }
        }
    }
}
