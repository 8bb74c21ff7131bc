import Foundation
import BottleneckKernels

/// What identifies the weights a network runs with: recorded in caches and models so
/// that features from different weights are never mixed.
package struct WeightsIdentity: Sendable, Equatable, Codable {
    /// The file's path, or "random".
    package var source: String
    /// sha256 of the file, or "random-seed-N" for seeded random initialisation.
    package var fingerprint: String
    package var isPretrained: Bool { !fingerprint.hasPrefix("random-seed-") }

    /// The line every result made with these weights carries (extract, train-head, full-finetune, evaluate,
    /// predict, run): accuracy figures from a random backbone look like results and are not transfer learning.
    /// nil for pretrained weights.
    package var randomWeightsNote: String? {
        guard !isPretrained else { return nil }
        return "note: these results come from RANDOM backbone weights (\(fingerprint)), not ImageNet features; "
            + "'\(WeightsChoice.downloadCommand)' fetches torchvision's pretrained VGG16"
    }

    package static func random(seed: UInt64) -> WeightsIdentity {
        WeightsIdentity(source: "random", fingerprint: "random-seed-\(seed)")
    }
}

struct LoadedNetwork: Sendable {
    package var network: VGG
    package var weights: WeightsIdentity
    /// What the weights reader had to do (dtype conversion, a removed `module.` prefix): worth telling the user.
    var notes: [String]
    /// The input normalisation the weights imply when it is not torchvision's (a Keras VGG's caffe values).
    var normalization: InputNormalization?
}

enum NetworkLoader {
    /// Builds the network through `cut` (all of it when nil) with the chosen weights,
    /// checking every key and shape it needs against the file first.
    static func load(config: VGGConfig = .vgg16, through cut: CutPoint? = nil,
                            weights choice: WeightsChoice) throws -> LoadedNetwork {
        switch choice {
        case .random(let seed):
            return LoadedNetwork(network: VGG.randomlyInitialized(config: config, through: cut, seed: seed),
                                 weights: .random(seed: seed), notes: [], normalization: nil)
        case .file(let path):
            let file = try StateDictFile.open(path: path)
            let needed = config.stateDictShapes(through: cut)
            try file.validate(expected: Dictionary(uniqueKeysWithValues: needed.map { ($0.key, $0.shape) }),
                              allowingExtraKeys: true)
            let digest = try identity(ofWeightsFile: file).fingerprint
            let network = try VGG(config: config, through: cut) { key, _ in try file.parameter(key) }
            return LoadedNetwork(network: network, weights: WeightsIdentity(source: path, fingerprint: digest),
                                 notes: file.notes, normalization: file.normalization)
        }
    }
}

/// torch.hub names downloads `name-<first 8+ hex digits of sha256>.ext` and checks them
/// (`check_hash`); a file so named whose digest disagrees is a damaged or partial download.
func checkHubHashPrefix(path: String, sha256: String) throws {
    let stem = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
    guard let dash = stem.lastIndex(of: "-") else { return }
    let prefix = stem[stem.index(after: dash)...].lowercased()
    guard prefix.count >= 8, prefix.allSatisfy(\.isHexDigit) else { return }
    guard sha256.hasPrefix(prefix) else {
        throw WeightsError(.malformed, path: path, "its sha256 is \(sha256.prefix(12))…, but torch.hub names a file by its sha256 "
                           + "prefix (\(prefix)): a damaged or incomplete download; fetch it again")
    }
}

extension NetworkLoader {
    /// The identity of the weights without building the network: enough to check a cache's fingerprint.
    static func identity(of choice: WeightsChoice) throws -> WeightsIdentity {
        switch choice {
        case .random(let seed): return .random(seed: seed)
        case .file(let path): return try identity(ofWeightsFile: StateDictFile.open(path: path))
        }
    }

    /// The identity of the weights and the input normalisation they imply, from one opening of the file and without
    /// building the network: what extraction fingerprints its cache with.
    static func identityAndNormalization(of choice: WeightsChoice) throws
        -> (identity: WeightsIdentity, normalization: InputNormalization?) {
        switch choice {
        case .random(let seed): return (.random(seed: seed), nil)
        case .file(let path):
            let file = try StateDictFile.open(path: path)
            return (try identity(ofWeightsFile: file), file.normalization)
        }
    }

    static func identity(ofWeightsFile file: StateDictFile) throws -> WeightsIdentity {
        let digest = try file.sha256()
        try checkHubHashPrefix(path: file.path, sha256: digest)
        return WeightsIdentity(source: file.path, fingerprint: digest)
    }
}

extension VGGConfig {
    /// The state-dict keys a prefix through `cut` needs (all of them when nil).
    func stateDictShapes(through cut: CutPoint?) -> [(key: String, shape: [Int])] {
        guard let cut else { return stateDictShapes }
        return stateDictShapes(throughPosition: cut.position)
    }

    /// The state-dict keys the layers up to and including `position` need.
    func stateDictShapes(throughPosition position: Int) -> [(key: String, shape: [Int])] {
        let paths = Set(layers.prefix(position + 1).compactMap(\.parameterPrefix))
        return stateDictShapes.filter { paths.contains(String($0.key.prefix(upTo: $0.key.lastIndex(of: ".")!))) }
    }
}
