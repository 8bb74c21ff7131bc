import Foundation
import BottleneckKernels

/// Where the frozen network is cut: the activation it hands on is the output of the
/// layer at `position` in `VGGConfig.layers`.
///
/// Names mean the layer's output after its ReLU, as the activation is usually meant
/// (`conv4_3` and `fc7` are the outputs of `features.22` and `classifier.4`); torchvision
/// paths mean exactly that module's output (`features.21` is conv4_3 before its ReLU).
/// `fc8`/`logits` is the last linear layer; dropout is an identity in evaluation, so a
/// cut at `drop7` equals one at `fc7`.
package struct CutPoint: Sendable, Equatable, CustomStringConvertible {
    let position: Int
    package let layer: LayerInfo
    /// The name the user gave, kept for messages.
    let requested: String
    /// The activation's conventional name: a ReLU after a conv or linear layer takes that layer's name
    /// (features.22 is conv4_3, classifier.4 is fc7), any other layer keeps its own.
    package let name: String

    package var description: String { "\(name) (\(layer.path))" }

    package init(_ text: String, in config: VGGConfig) throws {
        let layers = config.layers
        let key = text.trimmingCharacters(in: .whitespaces)
        let lowered = key.lowercased()
        let match: LayerInfo?
        if let exact = layers.first(where: { $0.path == key }) {
            match = exact
        } else if lowered == "logits" {
            match = layers.last
        } else if let named = layers.first(where: { $0.name == lowered }) {
            // conv and fc names mean "after the ReLU that follows".
            if case .relu = layers[safe: named.position + 1]?.kind, named.name.hasPrefix("conv") || named.name.hasPrefix("fc") {
                match = layers[named.position + 1]
            } else {
                match = named
            }
        } else {
            match = nil
        }
        guard let layer = match else {
            let examples = layers.filter { $0.name.hasPrefix("conv") || $0.name.hasPrefix("pool") || $0.name.hasPrefix("fc") }
                .map(\.name)
            throw ModelError.unknownLayer(key, suggestion: Suggestion.didYouMean(key, among: layers.map(\.name) + layers.map(\.path)),
                                          known: examples + ["avgpool", "features.N", "classifier.N"])
        }
        self.position = layer.position
        self.layer = layer
        self.requested = key
        switch (layer.kind, layers[safe: layer.position - 1]?.kind) {
        case (.relu, .conv?), (.relu, .linear?): self.name = layers[layer.position - 1].name
        default: self.name = layer.name
        }
    }

    /// The output shape of one image's activation at this cut for a square input.
    func activationShape(config: VGGConfig, imageSize: Int) -> [Int] {
        var channels = config.inputChannels
        var size = imageSize
        var features: Int? = nil
        for layer in config.layers.prefix(position + 1) {
            switch layer.kind {
            case .conv(_, let outChannels): channels = outChannels
            case .maxPool: size = (size - 2) / 2 + 1
            case .adaptiveAvgPool(let pooled): size = pooled
            case .linear(_, let outFeatures): features = outFeatures
            case .relu, .dropout: break
            }
        }
        if let features { return [features] }
        return [channels, size, size]
    }
}

