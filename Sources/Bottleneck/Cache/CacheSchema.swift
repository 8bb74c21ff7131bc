import BottleneckKernels

/// Names inside a cache file (schema "bottleneck-cache/3"), shared by the writer and the reader.
/// Every dataset is chunked with HDF5's fletcher32 checksum, strings are fixed-length UTF-8 (inside
/// the checksummed chunks, not in the unchecked global heap), and `/source/*` identify the bytes each
/// row was made from (`FileIdentity`).
enum CacheSchema {
    static let features = "features"
    static let labels = "labels"
    static let classes = "classes"
    static let paths = "paths"
    static let split = "split"
    static let failed = "failed"
    static let failedPaths = "paths"
    static let failedReasons = "reasons"
    static let source = "source"
    static let sourceSize = "size"
    static let sourceMtime = "mtime_ns"
    static let sourceCtime = "ctime_ns"
    static let sourceInode = "inode"
    static let sourceSHA256 = "sha256"
    /// `extract --views K`: `/views/features` [M, K, ...activation] holds the K augmented views of the M rows that
    /// have them, and `/views/rows` [M] (int64, ascending) the `/features` row each block belongs to.
    static let views = "views"
    static let viewFeatures = "features"
    static let viewRows = "rows"

    static let created = "created"
    static let rowsDone = "rows_done"
    static let complete = "complete"
    /// Seconds `bottleneck extract` spent making the rows (loading weights, decoding, the network): what a head's
    /// report adds to its training time. Absent where unknown (merged shards, rows of an interrupted or older run).
    static let extractionSeconds = "extraction_seconds"

    /// What `/features` chunks aim at: big enough for fast sequential reads,
    /// small enough for HDF5's default 1 MiB chunk cache.
    static let chunkBytes = 1 << 20
    /// Chunk length of the per-row metadata datasets (labels, paths, identities).
    static let metadataChunkRows = 4096
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
        guard let views = try file.attribute(CodingKeys.views.rawValue, as: Int64.self), (0...1 << 16).contains(views) else {
            throw FeatureCacheError(.damaged, "\(file.path) is damaged: no '\(CodingKeys.views.rawValue)' attribute "
                                    + "between 0 and 65536")
        }
        self.views = Int(views)
        guard let shape = try file.attributeValues(CodingKeys.activationShape.rawValue, as: Int64.self) else {
            throw missing(.activationShape)
        }
        guard CacheFingerprint.isActivationShape(shape.map { Int($0) }) else {
            throw FeatureCacheError(.damaged, "\(file.path) is damaged: its '\(CodingKeys.activationShape.rawValue)' attribute "
                                    + "is \(shape.prefix(8)), not the shape of one image's activation")
        }
        activationShape = shape.map { Int($0) }
        shard = try file.stringAttribute(CodingKeys.shard.rawValue)
    }

    func writeAttributes(to file: HDF5File) throws {
        for (key, field) in Self.stringAttributes { try file.setAttribute(key.rawValue, self[keyPath: field]) }
        try file.setAttribute(CodingKeys.activationShape.rawValue, values: activationShape.map { Int64($0) })
        if let shard { try file.setAttribute(CodingKeys.shard.rawValue, shard) }
        try file.setAttribute(CodingKeys.views.rawValue, Int64(views))
    }
}
