import Foundation
import BottleneckKernels

/// A finished feature cache, opened for training: all per-row metadata in memory
/// (paths, labels, splits: small), features read from disk on demand.
///
/// For shuffled training over a cache larger than memory, read blocks of
/// `chunkRows`-aligned rows in a shuffled block order and shuffle the rows within
/// a buffer of a few blocks: every chunk is then read (and decompressed) once per
/// epoch. `readRows(at:)` reads arbitrary rows in one call, but each chunk it
/// touches is read whole, so scattered indices over a big compressed cache cost more.
final class FeatureCacheReader: Sendable {
    package let path: String
    package let fingerprint: CacheFingerprint
    package let count: Int
    package let classes: [String]
    /// Index into `classes`, -1 for unlabeled rows.
    let labels: [Int32]
    /// Relative to `fingerprint.imageRoot`.
    package let paths: [String]
    package let splits: [ImageFolder.Split]
    /// What each row's image file held when its row was made.
    let identities: [FileIdentity]
    package let failed: [CacheFailure]
    let isComplete: Bool
    /// ISO 8601, when the file was written.
    package let created: String
    /// Seconds extraction spent making the rows, where the file records them (`CacheSchema.extractionSeconds`).
    package let extractionSeconds: Double?
    /// Every root attribute as text (numbers and arrays printed), for display.
    package let attributes: [String: String]
    /// How `/features` is stored: chunk shape, compression filters.
    let storage: HDF5Storage
    private let features: HDF5Dataset
    /// `/views/features` when the cache has views (`fingerprint.views` > 0).
    private let viewFeatures: HDF5Dataset?
    /// Per row, its block of augmented views in `/views/features`, -1 for a row without views.
    let viewBlockOfRow: [Int32]

    var activationShape: [Int] { fingerprint.activationShape }
    var rowSize: Int { fingerprint.rowSize }
    /// Rows per chunk of `/features`: the natural unit of reading.
    var chunkRows: Int { storage.chunkShape?.first ?? max(count, 1) }

    /// Opens `path`, refusing (one line) a missing file, a foreign or damaged file, and a cache whose
    /// `complete` attribute is 0 unless `allowIncomplete`.
    package init(path: String, allowIncomplete: Bool = false) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            if FileManager.default.fileExists(atPath: FeatureCacheBuilder.journalPath(for: path)) {
                throw FeatureCacheError(.incomplete, "\(path) does not exist yet: extraction in progress or interrupted "
                                        + "(see \(FeatureCacheBuilder.journalPath(for: path))); "
                                        + "rerun the same extract command to finish it")
            }
            throw FeatureCacheError(.missing, "\(path): no such file")
        }
        let file: HDF5File
        do {
            file = try HDF5File(path: path, mode: .readOnly)
        } catch let error as HDF5Error {
            // Damage is reported as such: called "not a cache", the file would go on to be read as weights
            // and be called a damaged weights file.
            if HDF5File.hasSignature(path: path) {
                throw FeatureCacheError(.damaged, "\(path) is a damaged HDF5 file, which HDF5 cannot open (\(error.reason)): "
                                        + "neither a feature cache nor weights can be read from it")
            }
            throw FeatureCacheError(.notACache, "\(path) is not a bottleneck feature cache: not a readable HDF5 file (\(error.reason))")
        }
        self.path = path
        do {
            guard let schema = try file.stringAttribute(CacheFingerprint.CodingKeys.schema.rawValue) else {
                throw FeatureCacheError(.notACache, "\(path) is an HDF5 file but not a bottleneck feature cache (no 'schema' attribute)")
            }
            guard schema == CacheFingerprint.currentSchema else {
                let older = schema.hasPrefix("bottleneck-cache/") && schema < CacheFingerprint.currentSchema
                throw FeatureCacheError(.notACache, "\(path) has schema \(schema); this bottleneck reads \(CacheFingerprint.currentSchema)"
                                        + (older ? " (it was made by an older bottleneck: rerun extract with --overwrite)" : ""))
            }
            fingerprint = try CacheFingerprint(attributesOf: file)
            isComplete = try file.attribute(CacheSchema.complete, as: Int32.self) == 1
            let rowsDone = try file.attribute(CacheSchema.rowsDone, as: Int64.self) ?? 0
            guard isComplete || allowIncomplete else {
                throw FeatureCacheError(.incomplete, "\(path) is incomplete (complete = 0 after \(rowsDone) rows): "
                                        + "not every image was processed; rerun the same extract command to finish it")
            }
            created = try file.stringAttribute(CacheSchema.created) ?? ""
            extractionSeconds = try file.attribute(CacheSchema.extractionSeconds, as: Double.self)

            func dataset(_ name: String, in group: HDF5Group = file) throws -> HDF5Dataset {
                guard try group.contains(name), try group.kind(of: name) == .dataset else {
                    throw FeatureCacheError(.damaged, "\(path) is damaged: no "
                                            + "\(group === file ? "" : "/\(CacheSchema.failed)")/\(name) dataset")
                }
                return try group.openDataset(name)
            }
            features = try dataset(CacheSchema.features)
            let shape = try features.shape()
            let rowCount = shape.first ?? 0
            count = rowCount
            guard Array(shape.dropFirst()) == fingerprint.activationShape else {
                throw FeatureCacheError(.damaged, "\(path) is damaged: /features has shape \(shape) "
                                        + "but activation_shape is \(fingerprint.activationShape)")
            }
            storage = try features.storage()
            let classNames = try dataset(CacheSchema.classes).readStrings()
            guard Set(classNames).count == classNames.count else {
                throw FeatureCacheError(.damaged, "\(path) is damaged: /\(CacheSchema.classes) names a class twice")
            }
            let labelValues = try dataset(CacheSchema.labels).read(as: Int32.self)
            classes = classNames
            labels = labelValues
            paths = try dataset(CacheSchema.paths).readStrings()
            let splitNames = try dataset(CacheSchema.split).readStrings()
            splits = try splitNames.map { name in
                guard let split = ImageFolder.Split(rawValue: name) else {
                    throw FeatureCacheError(.damaged, "\(path) is damaged: /split holds '\(name)' (expected train, val, test or none)")
                }
                return split
            }
            guard try file.contains(CacheSchema.source) else {
                throw FeatureCacheError(.damaged, "\(path) is damaged: no /\(CacheSchema.source) group")
            }
            let sourceGroup = try file.openGroup(CacheSchema.source)
            func sourceDataset(_ name: String) throws -> HDF5Dataset {
                guard try sourceGroup.contains(name), try sourceGroup.kind(of: name) == .dataset else {
                    throw FeatureCacheError(.damaged, "\(path) is damaged: no /\(CacheSchema.source)/\(name) dataset")
                }
                return try sourceGroup.openDataset(name)
            }
            let sizes = try sourceDataset(CacheSchema.sourceSize).read(as: Int64.self)
            let mtimes = try sourceDataset(CacheSchema.sourceMtime).read(as: Int64.self)
            let ctimes = try sourceDataset(CacheSchema.sourceCtime).read(as: Int64.self)
            let inodes = try sourceDataset(CacheSchema.sourceInode).read(as: UInt64.self)
            let digests = try sourceDataset(CacheSchema.sourceSHA256).readStrings()
            for (name, length) in [(CacheSchema.labels, labelValues.count), (CacheSchema.paths, paths.count),
                                   (CacheSchema.split, splits.count),
                                   ("\(CacheSchema.source)/\(CacheSchema.sourceSize)", sizes.count),
                                   ("\(CacheSchema.source)/\(CacheSchema.sourceMtime)", mtimes.count),
                                   ("\(CacheSchema.source)/\(CacheSchema.sourceCtime)", ctimes.count),
                                   ("\(CacheSchema.source)/\(CacheSchema.sourceInode)", inodes.count),
                                   ("\(CacheSchema.source)/\(CacheSchema.sourceSHA256)", digests.count)]
            where length != rowCount {
                throw FeatureCacheError(.damaged, "\(path) is damaged: /\(name) has \(length) entries for \(rowCount) rows of /features")
            }
            identities = try (0..<rowCount).map { row in
                guard let digest = SHA256.bytes(fromHex: digests[row]) else {
                    throw FeatureCacheError(.damaged, "\(path) is damaged: /\(CacheSchema.source)/\(CacheSchema.sourceSHA256) "
                                            + "holds '\(digests[row].prefix(80))' for row \(row), not a SHA-256")
                }
                return FileIdentity(size: sizes[row], mtimeNanoseconds: mtimes[row], ctimeNanoseconds: ctimes[row],
                                    inode: inodes[row], sha256: digest)
            }
            if let repeated = paths.firstRepeated() {
                throw FeatureCacheError(.damaged, "\(path) is damaged: /\(CacheSchema.paths) holds \(repeated) twice")
            }
            if let label = labelValues.first(where: { $0 < -1 || $0 >= Int32(classNames.count) }) {
                throw FeatureCacheError(.damaged, "\(path) is damaged: label \(label) for \(classNames.count) classes")
            }
            guard try file.contains(CacheSchema.failed) else {
                throw FeatureCacheError(.damaged, "\(path) is damaged: no /\(CacheSchema.failed) group")
            }
            let failedGroup = try file.openGroup(CacheSchema.failed)
            let failedPaths = try dataset(CacheSchema.failedPaths, in: failedGroup).readStrings()
            let reasons = try dataset(CacheSchema.failedReasons, in: failedGroup).readStrings()
            guard failedPaths.count == reasons.count else {
                throw FeatureCacheError(.damaged, "\(path) is damaged: \(failedPaths.count) failed paths but \(reasons.count) reasons")
            }
            failed = zip(failedPaths, reasons).map { CacheFailure(path: $0, reason: $1) }
            (viewFeatures, viewBlockOfRow) = try Self.openViews(of: file, path: path, fingerprint: fingerprint, rowCount: rowCount)
            attributes = try Self.attributesAsText(of: file)
        } catch let error as HDF5Error {
            throw FeatureCacheError(.damaged, "\(path) is damaged: \(error)")
        }
    }

    /// Rows `range` as a tensor [range.count, ...activationShape].
    func readRows(_ range: Range<Int>) throws -> Tensor {
        var rows = Tensor(zeros: [range.count] + activationShape)
        try rows.data.withUnsafeMutableBufferPointer { try readRows(range, into: $0) }
        return rows
    }

    /// Rows `range` into a caller's buffer of exactly `range.count * rowSize` floats.
    func readRows(_ range: Range<Int>, into buffer: UnsafeMutableBufferPointer<Float>) throws {
        try checkRows(range.isEmpty ? [] : [range.lowerBound, range.upperBound - 1])
        try readFeatures { try features.readRows([range], into: buffer) }
    }

    /// The rows at `indices`, in that order (repeats allowed), read in one pass over the file.
    func readRows(at indices: [Int]) throws -> Tensor {
        try checkRows(indices)
        let sortedRows = Array(Set(indices)).sorted()
        var runs: [Range<Int>] = []
        for row in sortedRows {
            if let last = runs.last, last.upperBound == row {
                runs[runs.count - 1] = last.lowerBound..<(row + 1)
            } else {
                runs.append(row..<(row + 1))
            }
        }
        var gathered = [Float](repeating: 0, count: sortedRows.count * rowSize)
        try gathered.withUnsafeMutableBufferPointer { buffer in try readFeatures { try features.readRows(runs, into: buffer) } }
        let position = Dictionary(uniqueKeysWithValues: sortedRows.enumerated().map { ($1, $0) })
        let rowSize = rowSize
        return Tensor(shape: [indices.count] + activationShape) { output in
            for (outputRow, row) in indices.enumerated() {
                let source = position[row]! * rowSize
                for column in 0..<rowSize { output[outputRow * rowSize + column] = gathered[source + column] }
            }
        }
    }

    /// The augmented views of `row` [views, ...activation] into a buffer of exactly `fingerprint.views * rowSize` floats.
    func readViews(ofRow row: Int, into buffer: UnsafeMutableBufferPointer<Float>) throws {
        try checkRows([row])
        guard let viewFeatures, viewBlockOfRow[row] >= 0 else {
            throw FeatureCacheError(.invalidInput, "\(path): row \(row) (\(paths[row])) has no augmented views")
        }
        let block = Int(viewBlockOfRow[row])
        try readFeatures { try viewFeatures.readRows([block..<(block + 1)], into: buffer) }
    }

    /// `/views`, checked against `/features`: nil and no blocks for a cache without views.
    private static func openViews(of file: HDF5File, path: String, fingerprint: CacheFingerprint,
                                  rowCount: Int) throws -> (HDF5Dataset?, [Int32]) {
        guard fingerprint.views > 0 else { return (nil, Array(repeating: -1, count: rowCount)) }
        func damaged(_ what: String) -> FeatureCacheError { FeatureCacheError(.damaged, "\(path) is damaged: \(what)") }
        guard try file.contains(CacheSchema.views) else { throw damaged("views = \(fingerprint.views) but no /\(CacheSchema.views) group") }
        let group = try file.openGroup(CacheSchema.views)
        for name in [CacheSchema.viewFeatures, CacheSchema.viewRows] where try !group.contains(name) {
            throw damaged("no /\(CacheSchema.views)/\(name) dataset")
        }
        let features = try group.openDataset(CacheSchema.viewFeatures)
        let rows = try group.openDataset(CacheSchema.viewRows).read(as: Int64.self)
        let shape = try features.shape()
        guard shape == [rows.count, fingerprint.views] + fingerprint.activationShape else {
            throw damaged("/\(CacheSchema.views)/\(CacheSchema.viewFeatures) has shape \(shape), not "
                          + "\([rows.count, fingerprint.views] + fingerprint.activationShape)")
        }
        var blockOfRow = [Int32](repeating: -1, count: rowCount)
        for (block, row) in rows.enumerated() {
            guard row >= 0, row < rowCount, block == 0 || row > rows[block - 1] else {
                throw damaged("/\(CacheSchema.views)/\(CacheSchema.viewRows) holds \(row) at \(block): "
                              + "not an ascending row of the \(rowCount)")
            }
            blockOfRow[Int(row)] = Int32(block)
        }
        return (features, blockOfRow)
    }

    /// A chunk failing its checksum (a flipped bit on disk) or otherwise unreadable is one line naming the dataset.
    private func readFeatures(_ read: () throws -> Void) throws {
        do {
            try read()
        } catch let error as HDF5Error {
            throw FeatureCacheError(.damaged, "\(path) is damaged: /\(CacheSchema.features) cannot be read (\(error.reason)); "
                                    + "rerun extract with --overwrite")
        }
    }

    private func checkRows(_ rows: [Int]) throws {
        if let bad = rows.first(where: { $0 < 0 || $0 >= count }) {
            throw FeatureCacheError(.invalidInput, "\(path): row \(bad) is out of range (the cache has \(count) rows)")
        }
    }

    private static func attributesAsText(of file: HDF5File) throws -> [String: String] {
        func text<T>(_ values: [T]?) -> String {
            guard let values else { return "" }
            return values.count == 1 ? "\(values[0])" : "[\(values.map { "\($0)" }.joined(separator: ", "))]"
        }
        var attributes: [String: String] = [:]
        for name in try file.attributeNames() {
            switch try file.attributeKind(name) {
            case .string: attributes[name] = try file.stringAttribute(name)
            case .integer: attributes[name] = text(try file.attributeValues(name, as: Int64.self))
            case .float: attributes[name] = text(try file.attributeValues(name, as: Double.self))
            case .other, nil: attributes[name] = "(not shown: neither text nor a number)"
            }
        }
        return attributes
    }
}
