import Foundation

/// `bottleneck merge`: joins the caches of `extract --shard I/N` runs into one cache equal to what a
/// single process would have written (same rows in the same order, same `/features` bytes).
///
/// The result is a copy, not an HDF5 virtual dataset: a virtual dataset would keep depending on N
/// shard files staying where they are, and older h5py/h5dump builds read it poorly; one plain file
/// is what every later stage (and anyone with h5py) expects. The copy goes through the cache
/// builder, so an interrupted merge resumes like an interrupted extract.
public enum CacheMerge {
    public static func merge(shards paths: [String], into output: String, compress: Bool = false,
                             overwrite: Bool = false, log: (String) -> Void = { _ in }) throws -> CacheSummary {
        guard !paths.isEmpty else { throw FeatureCacheError(.invalidInput, "merge needs at least one shard cache") }
        let readers = try paths.map { try FeatureCacheReader(path: $0) }
        let shards = try zip(paths, readers).map { path, reader -> (shard: Shard, reader: FeatureCacheReader) in
            guard let text = reader.fingerprint.shard else {
                throw FeatureCacheError(.invalidInput, "\(path) is not a shard (made without --shard)")
            }
            return (try Shard(text), reader)
        }.sorted { $0.shard.index < $1.shard.index }

        let count = shards[0].shard.count
        let indices = shards.map(\.shard.index)
        guard shards.allSatisfy({ $0.shard.count == count }), indices == Array(1...count) else {
            let given = shards.map(\.shard.description).joined(separator: ", ")
            let missing = Set(1...max(count, 1)).subtracting(indices).sorted().map { "\($0)/\(count)" }
            throw FeatureCacheError(.invalidInput, "merge needs each of the shards 1/\(count) … \(count)/\(count) once; "
                                    + "given \(given)" + (missing.isEmpty ? "" : "; missing \(missing.joined(separator: ", "))"))
        }
        var fingerprint = shards[0].reader.fingerprint
        fingerprint.shard = nil
        for (shard, reader) in shards.dropFirst() {
            var other = reader.fingerprint
            other.shard = nil
            let differences = other.differences(from: fingerprint)
            guard differences.isEmpty else {
                throw FeatureCacheError.mismatch(reader.path, differences.map { "\($0) (shard \(shard) against shard 1)" })
            }
        }

        let classes = Set(shards.flatMap(\.reader.classes)).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        let classIndex = Dictionary(uniqueKeysWithValues: classes.enumerated().map { ($1, Int32($0)) })
        let builder = try FeatureCacheBuilder.open(path: output, fingerprint: fingerprint, classes: classes, overwrite: overwrite)
        let rowSize = fingerprint.rowSize
        let blockRows = max(1, (4 << 20) / (rowSize * MemoryLayout<Float>.size))
        var buffer = [Float](repeating: 0, count: blockRows * rowSize)
        for (shard, reader) in shards {
            log("shard \(shard): \(reader.count) rows, \(reader.failed.count) failed (\(reader.path))")
            var failed = reader.failed.map { (path: $0.path, reason: $0.reason) }
            var first = 0
            repeat {
                let rows = first..<min(first + blockRows, reader.count)
                let items = rows.compactMap { row -> ImageFolder.Item? in
                    guard !builder.donePaths.contains(reader.paths[row]) else { return nil }
                    let label = reader.labels[row]
                    return ImageFolder.Item(path: reader.paths[row], label: label < 0 ? -1 : classIndex[reader.classes[Int(label)]]!,
                                            split: reader.splits[row])
                }
                if items.count == rows.count {
                    try buffer.withUnsafeMutableBufferPointer { block in
                        let target = UnsafeMutableBufferPointer(rebasing: block[0..<(rows.count * rowSize)])
                        try reader.readRows(rows, into: target)
                        try builder.append(features: UnsafeBufferPointer(target), items: items, failed: failed)
                    }
                } else if !items.isEmpty {
                    // Part of this block is already merged (a resumed merge): copy the rest row by row.
                    let pending = rows.filter { !builder.donePaths.contains(reader.paths[$0]) }
                    let features = try reader.readRows(at: pending)
                    try features.data.withUnsafeBufferPointer { try builder.append(features: $0, items: items, failed: failed) }
                } else if !failed.isEmpty {
                    try builder.append(features: UnsafeBufferPointer<Float>(start: nil, count: 0), items: [], failed: failed)
                }
                failed = []
                first = rows.upperBound
            } while first < reader.count
        }
        return try builder.finish(compress: compress)
    }
}
