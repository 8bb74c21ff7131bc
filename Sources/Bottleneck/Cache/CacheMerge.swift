import Foundation
import BottleneckKernels

/// `bottleneck merge`: joins the caches of `extract --shard I/N` runs into one cache equal to what a
/// single process would have written (same rows in the same order, same `/features` bytes).
///
/// The result is a copy, not an HDF5 virtual dataset: a virtual dataset would keep depending on N
/// shard files staying where they are, and older h5py/h5dump builds read it poorly; one plain file
/// is what every later stage (and anyone with h5py) expects. The copy goes through the cache
/// builder, so an interrupted merge resumes like an interrupted extract.
package enum CacheMerge {
    package static func merge(shards paths: [String], into output: String, compress: Bool = false,
                             overwrite: Bool = false, log: (String) -> Void = { _ in }) throws -> CacheSummary {
        guard !paths.isEmpty else { throw FeatureCacheError(.invalidInput, "merge needs at least one shard cache") }
        let readers = try paths.map { try FeatureCacheReader(path: $0) }
        let shards = try zip(paths, readers).map { path, reader -> (shard: Shard, reader: FeatureCacheReader) in
            guard let text = reader.fingerprint.shard else {
                throw FeatureCacheError(.invalidInput, "\(path) is not a shard (made without --shard)")
            }
            do {
                return (try Shard(text), reader)
            } catch {
                throw FeatureCacheError(.damaged, "\(path) is damaged: its 'shard' attribute is '\(text.prefix(40))', "
                                        + "not I/N with 1 <= I <= N <= \(Shard.maximumCount)")
            }
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
        // Every shard's rows, then its failures, in shard order: the rows and failures of one process, in its order.
        var manifest: [ImageFolder.Item] = []
        var recorded: [String: FileIdentity] = [:]
        var origin: [String: Shard] = [:]
        for (shard, reader) in shards {
            let failedItems = reader.failed.map { ImageFolder.Item(path: $0.path, label: -1, split: .none) }
            for (row, path) in (reader.paths + failedItems.map(\.path)).enumerated() {
                if let other = origin.updateValue(shard, forKey: path) {
                    throw FeatureCacheError(.invalidInput, "\(reader.path): \(path) is in shard \(other) and in shard \(shard); "
                                            + "shards of one extraction never share an image: were they made from different folders?")
                }
                if row < reader.count { recorded[path] = reader.identities[row] }
            }
            manifest += reader.paths.indices.map { row in
                let label = reader.labels[row]
                return ImageFolder.Item(path: reader.paths[row], label: label < 0 ? -1 : classIndex[reader.classes[Int(label)]]!,
                                        split: reader.splits[row])
            } + failedItems
        }
        let builder = try FeatureCacheBuilder.open(path: output, fingerprint: fingerprint, classes: classes, manifest: manifest,
                                                   overwrite: overwrite) { item, identity in
            recorded[item.path] == identity ? identity : nil
        }
        let pending = Set(builder.pending.map(\.path))
        let rowSize = fingerprint.rowSize
        let blockRows = max(1, (4 << 20) / (rowSize * MemoryLayout<Float>.size))
        var buffer = [Float](repeating: 0, count: blockRows * rowSize)
        var itemIndex = 0
        for (shard, reader) in shards {
            log("shard \(shard): \(reader.count) rows, \(reader.failed.count) failed (\(reader.path))")
            var failed = reader.failed.filter { pending.contains($0.path) }.map { (path: $0.path, reason: $0.reason) }
            var first = 0
            repeat {
                let block = first..<min(first + blockRows, reader.count)
                // A resumed merge finds part of the rows already in the journal: only the others are copied.
                let rows = block.filter { pending.contains(reader.paths[$0]) }
                let items = rows.map { (item: manifest[itemIndex + $0], identity: reader.identities[$0]) }
                if fingerprint.views > 0 {
                    // Each row followed by its augmented views, as the builder takes them: rows are copied one at a time.
                    var values: [Float] = []
                    var views = [Float](repeating: 0, count: fingerprint.views * rowSize)
                    for row in rows {
                        values += try reader.readRows(row..<(row + 1)).data
                        guard reader.viewBlockOfRow[row] >= 0 else { continue }
                        try views.withUnsafeMutableBufferPointer { try reader.readViews(ofRow: row, into: $0) }
                        values += views
                    }
                    try values.withUnsafeBufferPointer { _ = try builder.append(features: $0, rows: items, failed: failed) }
                } else if !rows.isEmpty || !failed.isEmpty {
                    try buffer.withUnsafeMutableBufferPointer { storage in
                        let target = UnsafeMutableBufferPointer(rebasing: storage[0..<(rows.count * rowSize)])
                        if rows.count == block.count {
                            try reader.readRows(block, into: target)
                        } else if !rows.isEmpty {
                            let features = try reader.readRows(at: rows)
                            _ = target.initialize(from: features.data)
                        }
                        try builder.append(features: UnsafeBufferPointer(target), rows: items, failed: failed)
                    }
                }
                failed = []
                first = block.upperBound
            } while first < reader.count
            itemIndex += reader.count + reader.failed.count
        }
        return try builder.finish(compress: compress)
    }
}
