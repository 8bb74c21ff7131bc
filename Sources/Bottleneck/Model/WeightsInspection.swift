import BottleneckKernels

/// What a weights file holds and whether a VGG can run on it: `bottleneck inspect FILE.pth`.
package struct WeightsInspection: Sendable {
    package let path: String
    package let format: WeightFileFormat
    let entries: [WeightEntry]
    let notes: [String]
    /// The input normalisation the weights imply, when not torchvision's ImageNet mean and std.
    let normalization: InputNormalization?
    package let sha256: String
    /// nil when every key and shape of `config` is present and every value finite; else the one-line reason.
    let problem: String?
    /// The deepest layer a prefix can be cut at with this file (e.g. pool5 for a features-only file).
    let deepestUsableLayer: String?
    package let config: VGGConfig

    package init(path: String, config: VGGConfig = .vgg16) throws {
        let file = try StateDictFile.open(path: path)
        self.path = path
        self.format = file.format
        self.entries = file.entries
        self.notes = file.notes
        self.normalization = file.normalization
        self.sha256 = try file.sha256()
        self.config = config
        let expected = Dictionary(uniqueKeysWithValues: config.stateDictShapes.map { ($0.key, $0.shape) })
        let loadable = Set(config.stateDictShapes.filter { key, shape in
            file.entry(key).map { $0.shape == shape && $0.dtype.isReadableAsFloat32 } ?? false
        }.map(\.key))
        // Every value is read, as running the network would: a NaN is only found by looking.
        var damaged: [String: String] = [:]
        for (key, _) in config.stateDictShapes where loadable.contains(key) {
            do {
                _ = try file.parameter(key)
            } catch {
                damaged[key] = error.detail
            }
        }
        do {
            try file.validate(expected: expected)
            problem = config.stateDictShapes.lazy.compactMap { damaged[$0.key] }.first
        } catch {
            problem = error.description
        }
        let usable = config.layers.prefix { layer in
            config.stateDictShapes(throughPosition: layer.position).allSatisfy { loadable.contains($0.key) && damaged[$0.key] == nil }
        }
        deepestUsableLayer = usable.last?.name
    }

    package var report: String {
        let parameters = entries.reduce(0) { $0 + $1.elementCount }
        let dtypes = Dictionary(grouping: entries, by: \.dtype).map { "\($0.value.count) \($0.key)" }.sorted()
        var lines = [
            "weights: \(path)",
            "format: \(format.rawValue)",
            "tensors: \(entries.count) (\(dtypes.joined(separator: ", "))), \(parameters) parameters",
            "sha256: \(sha256)",
        ]
        if sha256 == WeightsChoice.torchvisionSHA256 { lines.append("identity: torchvision's vgg16-397923af.pth (ImageNet)") }
        lines += notes.map { "note: \($0)" }
        if let normalization {
            lines.append("input normalisation: \(normalization.origin), used instead of ImageNet's mean and std: \(normalization.values)")
        }
        if let problem {
            lines.append("\(config.name): not usable as it is: \(problem)")
            lines.append("usable cut layers: " + (deepestUsableLayer.map { "up to \($0)" } ?? "none"))
        } else {
            lines.append("\(config.name): every key and shape matches; usable at any cut layer")
        }
        return lines.joined(separator: "\n")
    }
}
