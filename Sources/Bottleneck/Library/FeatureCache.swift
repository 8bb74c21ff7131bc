/// A feature cache opened for reading: one row of activations per image, with its class and path. The file is
/// plain HDF5 (h5py reads it too); every chunk carries a checksum, and a damaged one is an error, never a silent row.
///
/// ```swift
/// let cache = try FeatureCache(path: "runs/pets-fc7.h5")
/// let first = try cache.features(rows: 0..<1)   // cache.rowSize floats
/// print(cache.paths[0], cache.classes[cache.labels[0]], first.count)
/// ```
public struct FeatureCache: Sendable {
    let reader: FeatureCacheReader

    /// Opens a finished cache; `allowIncomplete` also opens one whose extraction was interrupted.
    public init(path: String, allowIncomplete: Bool = false) throws(BottleneckError) {
        reader = try BottleneckError.wrapping { try FeatureCacheReader(path: path, allowIncomplete: allowIncomplete) }
    }

    /// Rows (images) in the cache.
    public var count: Int { reader.count }
    /// Class names, sorted as torchvision's ImageFolder sorts them; `labels` index into them.
    public var classes: [String] { reader.classes }
    /// Each row's class, an index into `classes`.
    public var labels: [Int] { reader.labels.map(Int.init) }
    /// Each row's image, relative to the image folder.
    public var paths: [String] { reader.paths }
    /// The cut layer as asked for: `fc7`, `pool5`, `conv4_3`.
    public var layer: String { reader.fingerprint.layer }
    /// torchvision's path of the cut layer: `classifier.4` for fc7 (after its ReLU), `features.30` for pool5.
    public var layerPath: String { reader.fingerprint.layerPath }
    /// One row's shape: [4096] at fc7, [512, 7, 7] at pool5.
    public var activationShape: [Int] { reader.activationShape }
    /// Floats per row.
    public var rowSize: Int { reader.rowSize }

    /// Rows `rows`, one after the other: `rows.count * rowSize` floats.
    public func features(rows: Range<Int>) throws(BottleneckError) -> [Float] {
        try BottleneckError.wrapping { try reader.readRows(rows).data }
    }
}
