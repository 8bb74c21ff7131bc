/// Names inside a cache file (schema "bottleneck-cache/1"), shared by the writer and the reader.
enum CacheSchema {
    static let features = "features"
    static let labels = "labels"
    static let classes = "classes"
    static let paths = "paths"
    static let split = "split"
    static let failed = "failed"
    static let failedPaths = "paths"
    static let failedReasons = "reasons"

    static let created = "created"
    static let rowsDone = "rows_done"
    static let complete = "complete"

    /// What `/features` chunks aim at: big enough for fast sequential reads,
    /// small enough for HDF5's default 1 MiB chunk cache.
    static let chunkBytes = 1 << 20
    /// shuffle + deflate at h5py's default gzip level.
    static let deflateLevel = 4
}

extension CacheFingerprint {
    private static var stringAttributes: [(CodingKeys, WritableKeyPath<CacheFingerprint, String>)] {
        [(.schema, \.schema), (.backbone, \.backbone), (.layer, \.layer), (.layerPath, \.layerPath),
         (.weightsSHA256, \.weightsSHA256), (.weightsSource, \.weightsSource), (.preprocess, \.preprocess),
         (.imageRoot, \.imageRoot), (.toolVersion, \.toolVersion)]
    }

    /// Reads the root attributes of a cache; a missing one is named in the error.
    init(attributesOf file: HDF5File) throws {
        self.init(backbone: "", layer: "", layerPath: "", activationShape: [], weightsSHA256: "", weightsSource: "",
                  preprocess: "", imageRoot: "")
        func missing(_ key: CodingKeys) -> FeatureCacheError {
            FeatureCacheError(.damaged, "\(file.path) is damaged: no '\(key.rawValue)' attribute")
        }
        for (key, field) in Self.stringAttributes {
            guard let value = try file.stringAttribute(key.rawValue) else { throw missing(key) }
            self[keyPath: field] = value
        }
        guard let shape = try file.attributeValues(CodingKeys.activationShape.rawValue, as: Int64.self) else {
            throw missing(.activationShape)
        }
        activationShape = shape.map { Int($0) }
        shard = try file.stringAttribute(CodingKeys.shard.rawValue)
    }

    func writeAttributes(to file: HDF5File) throws {
        for (key, field) in Self.stringAttributes { try file.setAttribute(key.rawValue, self[keyPath: field]) }
        try file.setAttribute(CodingKeys.activationShape.rawValue, values: activationShape.map { Int64($0) })
        if let shard { try file.setAttribute(CodingKeys.shard.rawValue, shard) }
    }
}
