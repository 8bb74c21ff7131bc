import Foundation
import BottleneckKernels

/// What made a feature cache: everything that decides the numbers in `/features`.
/// A cache or journal is only continued by a run with a compatible fingerprint
/// (`differences(from:)` empty); `weightsSource` and `toolVersion` are recorded
/// for people, not compared: the same weights under another path give the same features.
///
/// Coded with the names of the cache's root attributes, so the journal header
/// and the HDF5 file spell every field the same way.
package struct CacheFingerprint: Codable, Equatable, Sendable {
    static let currentSchema = "bottleneck-cache/3"

    var schema: String
    /// The network configuration, "vgg16".
    package var backbone: String
    /// The conventional name of the cut, "fc7" (a ReLU is named after the layer it follows).
    package var layer: String
    /// torchvision's module path of the cut, "classifier.4": what identifies it.
    var layerPath: String
    /// One image's activation, [4096] or [512, 7, 7].
    var activationShape: [Int]
    /// sha256 of the weights file, or "random-seed-N".
    var weightsSHA256: String
    var weightsSource: String
    /// `Preprocessing.jsonDescription`: compared by meaning (key order and spacing do not count).
    var preprocess: String
    /// Absolute; `/paths` are relative to it.
    var imageRoot: String
    var toolVersion: String
    /// "2/4" for one shard of a sharded extraction (`extract --shard 2/4`), nil for a whole collection.
    package var shard: String?
    /// Augmented views stored per training-side image (`extract --views K`, see `viewCount(of:)`), 0 for none.
    package var views = 0

    enum CodingKeys: String, CodingKey {
        case schema, backbone, layer
        case layerPath = "layer_path"
        case activationShape = "activation_shape"
        case weightsSHA256 = "weights_sha256"
        case weightsSource = "weights_source"
        case preprocess
        case imageRoot = "image_root"
        case toolVersion = "tool_version"
        case shard, views
    }

    package init(schema: String = CacheFingerprint.currentSchema, backbone: String, layer: String, layerPath: String,
                activationShape: [Int], weightsSHA256: String, weightsSource: String, preprocess: String,
                imageRoot: String, toolVersion: String = BottleneckVersion.current) {
        self.schema = schema
        self.backbone = backbone
        self.layer = layer
        self.layerPath = layerPath
        self.activationShape = activationShape
        self.weightsSHA256 = weightsSHA256
        self.weightsSource = weightsSource
        self.preprocess = preprocess
        self.imageRoot = imageRoot
        self.toolVersion = toolVersion
    }

    /// The fingerprint of an extraction through `cut` of `config` with these weights and preprocessing,
    /// over the images below `imageRoot` (made absolute here).
    package init(config: VGGConfig, cut: CutPoint, weights: WeightsIdentity, preprocessing: Preprocessing,
                imageRoot: String) {
        self.init(backbone: config.name, layer: cut.name, layerPath: cut.layer.path,
                  activationShape: cut.activationShape(config: config, imageSize: preprocessing.crop),
                  weightsSHA256: weights.fingerprint, weightsSource: weights.source,
                  preprocess: preprocessing.jsonDescription,
                  imageRoot: URL(fileURLWithPath: imageRoot).standardizedFileURL.path)
    }

    var rowSize: Int { activationShape.reduce(1, *) }

    /// The views `item` gets: `views` for a labeled image outside val/ and test/, none for the rest. The hashed
    /// split is only decided at train time (its seed and fraction are train-head's), so every image it may put on the
    /// training side has views; validation rows never use theirs.
    func viewCount(of item: ImageFolder.Item) -> Int {
        item.label >= 0 && (item.split == .train || item.split == .none) ? views : 0
    }

    /// Whether `shape` can be one image's activation ([C, H, W], [F]): each size at least 1, and bounded so that
    /// every size computed from it (a row, a read buffer) stays far from overflow. A file's claim is checked
    /// with this before `rowSize` is used; conv1_1 at a crop of 8192 is 2^32 values.
    static func isActivationShape(_ shape: [Int]) -> Bool {
        guard (1...4).contains(shape.count), shape.allSatisfy({ $0 >= 1 }), let size = checkedElementCount(shape) else { return false }
        return size <= 1 << 32
    }

    /// What in `self` (a file's fingerprint) differs from `wanted` (the run's), each as
    /// "layer fc7 (classifier.4), not pool5 (features.30)"; empty when the two are compatible.
    func differences(from wanted: CacheFingerprint) -> [String] {
        var found: [String] = []
        if schema != wanted.schema { found.append("schema \(schema), not \(wanted.schema)") }
        if backbone != wanted.backbone { found.append("backbone \(backbone), not \(wanted.backbone)") }
        if layerPath != wanted.layerPath {
            found.append("layer \(layer) (\(layerPath)), not \(wanted.layer) (\(wanted.layerPath))")
        } else if activationShape != wanted.activationShape {
            found.append("activation shape \(activationShape), not \(wanted.activationShape)")
        }
        if weightsSHA256 != wanted.weightsSHA256 {
            found.append("weights \(Self.describeWeights(weightsSHA256, weightsSource)), "
                         + "not \(Self.describeWeights(wanted.weightsSHA256, wanted.weightsSource))")
        }
        if let preprocessing = Self.preprocessDifference(preprocess, wanted.preprocess) { found.append(preprocessing) }
        if imageRoot != wanted.imageRoot { found.append("image root \(imageRoot), not \(wanted.imageRoot)") }
        if views != wanted.views { found.append("views \(views) per training image, not \(wanted.views)") }
        if shard != wanted.shard { found.append("shard \(shard ?? "none (all images)"), not \(wanted.shard ?? "none (all images)")") }
        return found
    }

    private static func describeWeights(_ sha256: String, _ source: String) -> String {
        WeightsIdentity(source: source, fingerprint: sha256).isPretrained
            ? "sha256 \(sha256.prefix(12))… (\(source))" : sha256
    }

    /// "preprocessing crop 224, not crop 256", naming only the keys whose values differ.
    private static func preprocessDifference(_ mine: String, _ theirs: String) -> String? {
        guard let myFields = jsonFields(mine), let theirFields = jsonFields(theirs) else {
            return mine == theirs ? nil : "preprocessing \(mine), not \(theirs)"
        }
        let keys = Set(myFields.keys).union(theirFields.keys).sorted().filter { myFields[$0] != theirFields[$0] }
        guard !keys.isEmpty else { return nil }
        func listed(_ fields: [String: String]) -> String {
            keys.map { "\($0) \(fields[$0] ?? "(none)")" }.joined(separator: " ")
        }
        return "preprocessing \(listed(myFields)), not \(listed(theirFields))"
    }

    /// A JSON object's members, each value re-serialised canonically so that equal values compare equal.
    private static func jsonFields(_ json: String) -> [String: String]? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { return nil }
        return object.mapValues { value in
            let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys])
            return data.map { String(decoding: $0, as: UTF8.self) } ?? "\(value)"
        }
    }
}
