import Foundation
import BottleneckKernels

/// What `finish` wrote. Every image of the run's list is exactly one of reused, extracted, changed
/// or failed; `removedRows` were rows of the earlier cache whose image is no longer in the list.
package struct CacheSummary: Sendable {
    package let path: String
    package let rows: Int
    /// Rows copied from the cache an earlier run finished: their files are unchanged.
    let reusedRows: Int
    /// Rows of images the earlier cache did not have, extracted by this run or by an interrupted one.
    let extractedRows: Int
    /// Rows extracted again because their file's contents changed since the earlier cache.
    let changedRows: Int
    /// Rows of the earlier cache dropped because their image is gone.
    let removedRows: Int
    /// Rows recovered from the journal of an interrupted run (counted in extracted or changed too).
    let recoveredRows: Int
    /// Reused rows whose file had new times or another inode but the same bytes.
    let refreshedRows: Int
    package let failed: Int
    package let fileBytes: Int
}

/// Writes a feature cache so that `kill -9` at any moment loses no finished batch
/// and never leaves a cache that looks whole but is not, and so that the cache is always
/// exactly as fresh as the images (as `make` would have it):
///
/// - the run hands in its manifest: every image it should cover, in the order of the final rows;
/// - a row of the earlier finished cache, or of an interrupted run's journal, is reused only for an
///   image still in the manifest whose file still has the contents the row was made from
///   (`currentIdentity`, see `FileIdentity`); everything else in the manifest is `pending`;
/// - batches go to an append-only journal (`CACHE.h5.partial`, see `CacheJournal`),
///   each durable once `append` returns;
/// - `CACHE.h5` is only ever replaced by renaming a synced, finished file over it, holding the
///   manifest's rows in manifest order: the bytes a fresh extraction of the same images gives.
///
/// Memory is the per-row metadata plus a few MB of copy buffer, whatever the number of rows.
/// Used from one thread.
final class FeatureCacheBuilder {
    package let path: String
    let journalPath: String
    package let fingerprint: CacheFingerprint
    /// What the labels of manifest items index; the final `/classes`.
    package let classes: [String]
    let manifest: [ImageFolder.Item]
    let reusedRowCount: Int
    let recoveredRowCount: Int
    /// Reused rows whose file was found under new times but with the same bytes.
    let refreshedRowCount: Int
    /// Rows of the earlier cache whose image is not in the manifest.
    let removedRowCount: Int
    /// Bytes of a record a kill cut short, dropped from the journal when it was reopened.
    let tornJournalBytes: Int
    /// Rows appended by this run so far.
    private(set) var appendedRowCount = 0

    private enum RowSource: Equatable {
        case previous(row: Int)
        case journal(offset: Int64)
    }

    /// Held from before anything is deleted or created until the builder finishes, is abandoned, or goes.
    private var lock: WriterLock?
    private let previous: FeatureCacheReader?
    /// nil once finished.
    private var journal: CacheJournal?
    /// Per manifest item: where its row is, and the identity of the bytes it was made from.
    private var sources: [RowSource?]
    private var identities: [FileIdentity?]
    private let manifestIndex: [String: Int]
    /// Manifest paths whose row in the earlier cache is stale.
    private let changedPaths: Set<String>
    /// The latest reason per path, for manifest items that end without a row.
    private var failureReasons: [String: String] = [:]

    static func journalPath(for path: String) -> String { path + ".partial" }

    /// Manifest items without a row yet, in manifest order: what the run still has to extract.
    var pending: [ImageFolder.Item] { manifest.indices.filter { sources[$0] == nil }.map { manifest[$0] } }

    /// Opens (or starts) the cache at `path` for a run with `fingerprint` over `manifest`, whose labels
    /// index `classes`. `currentIdentity(item, recorded)` says whether a row recorded with `recorded`
    /// still holds `item`'s features, returning the identity to keep (refreshed to the file's stat now),
    /// or nil when the file changed or is gone. Refuses a cache or journal made with another fingerprint
    /// unless `overwrite`, which deletes both. Creates the cache's folder when it is missing, as train-head its run
    /// folder; fails before any work when it cannot be made or is read-only.
    package static func open(path: String, fingerprint: CacheFingerprint, classes: [String], manifest: [ImageFolder.Item],
                            overwrite: Bool,
                            currentIdentity: (ImageFolder.Item, FileIdentity) -> FileIdentity?) throws -> FeatureCacheBuilder {
        try FeatureCacheError.whenFileFails(.writeFailed) {
            try DurableFiles.createFolders(for: path)
            try DurableFiles.checkWritableFolder(for: path)
        }
        guard Set(classes).count == classes.count else {
            throw FeatureCacheError(.invalidInput, "\(path): the class list names a class twice")
        }
        var manifestIndex: [String: Int] = [:]
        for (index, item) in manifest.enumerated() {
            guard manifestIndex.updateValue(index, forKey: item.path) == nil else {
                throw FeatureCacheError(.invalidInput, "\(path): \(item.path) is listed twice")
            }
            guard item.label >= -1, item.label < Int32(classes.count) else {
                throw FeatureCacheError(.invalidInput, "\(path): \(item.path) has label \(item.label) "
                                        + "but there are \(classes.count) classes")
            }
        }
        let journalPath = journalPath(for: path)
        let lock = try WriterLock.cache(path)
        for file in [path, journalPath] {
            do { try DurableFiles.checkDestination(file) } catch { throw FeatureCacheError(.writeFailed, error.description) }
        }
        if overwrite {
            try FeatureCacheError.whenFileFails(.writeFailed) {
                try DurableFiles.remove(path)
                try DurableFiles.remove(journalPath)
            }
        }
        let previous = try openPrevious(path: path, fingerprint: fingerprint)
        let journal: CacheJournal
        var contents: JournalContents?
        if FileManager.default.fileExists(atPath: journalPath) {
            let resumed = try CacheJournal.resume(path: journalPath, fingerprint: fingerprint)
            journal = resumed.journal
            contents = resumed.contents
            if resumed.contents.currentClasses != classes { try journal.appendClasses(classes) }
        } else {
            journal = try CacheJournal.create(path: journalPath, header: JournalHeader(fingerprint: fingerprint, classes: classes))
        }
        return FeatureCacheBuilder(path: path, lock: lock, fingerprint: fingerprint, classes: classes, manifest: manifest,
                                   manifestIndex: manifestIndex, previous: previous, journal: journal, contents: contents,
                                   currentIdentity: currentIdentity)
    }

    private static func openPrevious(path: String, fingerprint: CacheFingerprint) throws -> FeatureCacheReader? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let previous: FeatureCacheReader
        do {
            previous = try FeatureCacheReader(path: path, allowIncomplete: true)
        } catch let error as FeatureCacheError where error.kind == .notACache || error.kind == .damaged {
            throw FeatureCacheError(error.kind, "\(error.description); use --overwrite to replace it, or another --out")
        }
        let differences = previous.fingerprint.differences(from: fingerprint)
        guard differences.isEmpty else { throw FeatureCacheError.mismatch(path, differences) }
        return previous
    }

    private init(path: String, lock: WriterLock, fingerprint: CacheFingerprint, classes: [String], manifest: [ImageFolder.Item],
                 manifestIndex: [String: Int], previous: FeatureCacheReader?, journal: CacheJournal,
                 contents: JournalContents?, currentIdentity: (ImageFolder.Item, FileIdentity) -> FileIdentity?) {
        self.path = path
        self.lock = lock
        self.journalPath = journal.path
        self.fingerprint = fingerprint
        self.classes = classes
        self.manifest = manifest
        self.manifestIndex = manifestIndex
        self.previous = previous
        self.journal = journal
        self.tornJournalBytes = Int(contents?.tornBytes ?? 0)

        var sources = [RowSource?](repeating: nil, count: manifest.count)
        var identities = [FileIdentity?](repeating: nil, count: manifest.count)
        var reused = 0, refreshed = 0, removed = 0, recovered = 0
        var changed = Set<String>()
        // The earlier cache first: when a kill came between renaming the finished cache into place and
        // deleting the journal, both hold the same rows, and the file is then left as it is.
        if let previous {
            for row in 0..<previous.count {
                guard let index = manifestIndex[previous.paths[row]] else {
                    removed += 1
                    continue
                }
                let recorded = previous.identities[row]
                guard let current = currentIdentity(manifest[index], recorded) else {
                    changed.insert(previous.paths[row])
                    continue
                }
                sources[index] = .previous(row: row)
                identities[index] = current
                reused += 1
                // A row recorded too fresh to trust its stat (ctime -1) was only checked, not found under new times.
                if current != recorded && recorded.ctimeNanoseconds != -1 { refreshed += 1 }
            }
        }
        for row in contents?.rows ?? [] {
            guard let index = manifestIndex[row.path], sources[index] == nil, row.views == fingerprint.viewCount(of: manifest[index]),
                  let current = currentIdentity(manifest[index], row.identity) else { continue }
            sources[index] = .journal(offset: row.featureOffset)
            identities[index] = current
            recovered += 1
        }
        for failure in (previous?.failed ?? []) + (contents?.failures ?? []) { failureReasons[failure.path] = failure.reason }
        self.sources = sources
        self.identities = identities
        self.changedPaths = changed
        self.reusedRowCount = reused
        self.refreshedRowCount = refreshed
        self.removedRowCount = removed
        self.recoveredRowCount = recovered
    }

    /// Adds one batch: `features` holds, row after row, each row's eval view then its `fingerprint.viewCount(of:)`
    /// augmented views, each of `fingerprint.rowSize` floats, made from the bytes `identity` describes, and `failed`
    /// the inputs of the batch that could not be read.
    /// Only pending manifest items are accepted. A row holding a NaN or an infinity is never written: its image
    /// is recorded as failed instead. Returns the batch's failures, those given and those found; durable when
    /// this returns.
    @discardableResult
    package func append(features: UnsafeBufferPointer<Float>, rows: [(item: ImageFolder.Item, identity: FileIdentity)],
                       failed: [(path: String, reason: String)]) throws -> [(path: String, reason: String)] {
        guard let journal else { throw FeatureCacheError(.invalidInput, "\(path) is already finished") }
        let rowSize = fingerprint.rowSize
        let viewCounts = rows.map { fingerprint.viewCount(of: $0.item) }
        // Where each row's values start in `features`, and one past the last row's.
        let starts = viewCounts.reduce(into: [0]) { $0.append($0.last! + (1 + $1) * rowSize) }
        guard features.count == starts.last! else {
            throw FeatureCacheError(.invalidInput, "\(path): \(features.count) feature values for \(rows.count) rows "
                                    + "with \(viewCounts.reduce(0, +)) augmented views of \(rowSize) (\(fingerprint.activationShape))")
        }
        var batchPaths = Set<String>()
        for (item, _) in rows {
            guard let index = manifestIndex[item.path], manifest[index] == item else {
                throw FeatureCacheError(.invalidInput, "\(path): \(item.path) is not one of the run's images")
            }
            guard sources[index] == nil, batchPaths.insert(item.path).inserted else {
                throw FeatureCacheError(.invalidInput, "\(path): \(item.path) already has a row")
            }
        }
        let nonFinite = (0..<rows.count).filter { row in
            !Self.allFinite(UnsafeBufferPointer(rebasing: features[starts[row]..<starts[row + 1]]))
        }
        let failed = failed + nonFinite.map {
            (path: rows[$0].item.path, reason: "the network gave non-finite (NaN or infinite) activations at \(fingerprint.layer)")
        }
        guard !rows.isEmpty || !failed.isEmpty else { return failed }
        let failures = failed.map { CacheFailure(path: $0.path, reason: $0.reason) }
        let kept = rows.indices.filter { !nonFinite.contains($0) }
        let written = kept.map { (item: rows[$0].item, identity: rows[$0].identity, views: viewCounts[$0]) }
        let journalRows = try nonFinite.isEmpty
            ? journal.appendBatch(written, failures: failures, features: features)
            : kept.flatMap { features[starts[$0]..<starts[$0 + 1]] }.withUnsafeBufferPointer {
                try journal.appendBatch(written, failures: failures, features: $0)
            }
        for journalRow in journalRows {
            let index = manifestIndex[journalRow.path]!
            sources[index] = .journal(offset: journalRow.featureOffset)
            identities[index] = journalRow.identity
        }
        for failure in failures { failureReasons[failure.path] = failure.reason }
        appendedRowCount += written.count
        return failed
    }

    /// Ends a run that stopped before its first batch (its weights were refused, say): a journal holding
    /// no record is deleted, so the failure leaves no trace beside the cache; one with rows is kept for the rerun.
    func abandon() {
        defer { lock = nil }
        guard let journal, journal.isEmpty else { return }
        try? journal.delete()
        self.journal = nil
    }

    /// Whether no value is a NaN or an infinity.
    private static func allFinite(_ values: UnsafeBufferPointer<Float>) -> Bool {
        // x - x is 0 for a finite x and NaN otherwise; a sum of them is NaN as soon as one is.
        var sum: Float = 0
        for value in values { sum += value - value }
        return sum == 0
    }

    /// Writes the cache: the manifest's rows in manifest order, copied from the earlier cache and the journal,
    /// into a temporary file that replaces `path` atomically; then deletes the journal. The file says it is
    /// `complete` when every manifest item has a row or a failure. A rerun that found nothing new leaves the
    /// earlier file alone: copying a pool5 cache of many GB to get the same bytes (but the creation time)
    /// would take minutes and twice the disk.
    /// `extractionSeconds` (this run's) is recorded with the earlier cache's for the rows reused from it, or not at
    /// all when some rows' cost is unknown: an earlier cache that does not record it, an interrupted run's rows.
    package func finish(compress: Bool, extractionSeconds: Double? = nil) throws -> CacheSummary {
        guard let journal else { throw FeatureCacheError(.invalidInput, "\(path) is already finished") }
        let totalSeconds = extractionSeconds.flatMap { seconds -> Double? in
            guard recoveredRowCount == 0 else { return nil }
            return reusedRowCount == 0 ? seconds : previous?.extractionSeconds.map { $0 + seconds }
        }
        let rowItems = manifest.indices.filter { sources[$0] != nil }
        let failures = manifest.compactMap { item in
            sources[manifestIndex[item.path]!] == nil ? failureReasons[item.path].map { CacheFailure(path: item.path, reason: $0) } : nil
        }
        let complete = rowItems.count + failures.count == manifest.count
        if !wouldRewritePrevious(rowItems: rowItems, failures: failures, compress: compress, complete: complete) {
            let metadataBytes = rowItems.count * 512 + failures.count * 512 + (1 << 20)
            do {
                try FeatureCacheError.whenFileFails(.writeFailed) {
                    let viewCount = rowItems.reduce(rowItems.count) { $0 + fingerprint.viewCount(of: manifest[$1]) }
                    try DurableFiles.checkFreeSpace(for: path,
                                                    bytes: viewCount * fingerprint.rowSize * MemoryLayout<Float>.size + metadataBytes,
                                                    keeping: "the extracted rows stay in \(journalPath): free some space and rerun")
                    try DurableFiles.writeThroughTemporary(to: path) { temporaryPath in
                        try writeCache(to: temporaryPath, from: journal, rowItems: rowItems, failures: failures, compress: compress,
                                       complete: complete, extractionSeconds: totalSeconds)
                    }
                }
            } catch let error as FileAccessError {
                throw FeatureCacheError(.writeFailed, error.description)
            }
        }
        try journal.delete()
        self.journal = nil
        lock = nil
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        let newRows = rowItems.filter { if case .journal = sources[$0] { true } else { false } }
        let changedRows = newRows.count { changedPaths.contains(manifest[$0].path) }
        return CacheSummary(path: path, rows: rowItems.count, reusedRows: reusedRowCount,
                            extractedRows: newRows.count - changedRows, changedRows: changedRows,
                            removedRows: removedRowCount, recoveredRows: recoveredRowCount, refreshedRows: refreshedRowCount,
                            failed: failures.count, fileBytes: (attributes[.size] as? NSNumber)?.intValue ?? 0)
    }

    /// Whether writing the cache now would give the earlier cache again: its rows, all of them, in the same
    /// order; the same failures (the broken images retried and failing again, for the same reasons), the
    /// same classes, completeness and compression. New times on unchanged files alone do not rewrite it.
    private func wouldRewritePrevious(rowItems: [Int], failures: [CacheFailure], compress: Bool, complete: Bool) -> Bool {
        guard let previous, rowItems.count == previous.count else { return false }
        return rowItems.enumerated().allSatisfy { position, index in sources[index] == .previous(row: position) }
            && failures == previous.failed && previous.isComplete == complete && previous.classes == classes
            && previous.storage.filters.contains { $0.name == "deflate" } == compress
    }

    private func writeCache(to temporaryPath: String, from journal: CacheJournal, rowItems: [Int], failures: [CacheFailure],
                            compress: Bool, complete: Bool, extractionSeconds: Double?) throws {
        let file = try HDF5File(path: temporaryPath, mode: .createNew)
        let rowSize = fingerprint.rowSize
        let rowCount = rowItems.count
        let rowBytes = Int64(rowSize * MemoryLayout<Float>.size)

        let chunkRows = max(1, min(CacheSchema.chunkBytes / (rowSize * MemoryLayout<Float>.size), rowCount))
        let features = try file.createDataset(
            CacheSchema.features, of: Float.self, shape: [0] + fingerprint.activationShape,
            layout: .extendibleRows(chunkRows: chunkRows, deflateLevel: compress ? CacheSchema.deflateLevel : nil, checksum: true))
        var writer = FeatureBlockWriter(dataset: features, rowSize: rowSize, chunkRows: chunkRows)
        // Consecutive rows from consecutive places in one source are copied in one call.
        var position = 0
        while position < rowItems.count {
            let first = sources[rowItems[position]]!
            var end = position + 1
            func follows(_ source: RowSource?, _ step: Int) -> Bool {
                switch (first, source) {
                case (.previous(let row), .previous(let next)?): next == row + step
                case (.journal(let offset), .journal(let next)?): next == offset + Int64(step) * rowBytes
                default: false
                }
            }
            while end < rowItems.count && follows(sources[rowItems[end]], end - position) { end += 1 }
            try writer.append(end - position) { rows, destination in
                switch first {
                case .previous(let row):
                    try previous!.readRows((row + rows.lowerBound)..<(row + rows.upperBound), into: destination)
                case .journal(let offset):
                    try journal.readFeatures(from: offset + Int64(rows.lowerBound) * rowBytes, into: destination)
                }
            }
            position = end
        }
        try writer.flush()
        if fingerprint.views > 0 { try writeViews(to: file, from: journal, rowItems: rowItems, compress: compress) }

        let items = rowItems.map { manifest[$0] }
        let rowIdentities = rowItems.map { identities[$0]! }
        let checked = { (rows: Int) in
            HDF5Layout.extendibleRows(chunkRows: max(1, min(rows, CacheSchema.metadataChunkRows)), checksum: true)
        }
        try file.createDataset(CacheSchema.labels, of: Int32.self, shape: [rowCount], layout: checked(rowCount)).write(items.map(\.label))
        try file.createStringDataset(CacheSchema.classes, strings: classes, layout: checked(classes.count))
        try file.createStringDataset(CacheSchema.paths, strings: items.map(\.path), layout: checked(rowCount))
        try file.createStringDataset(CacheSchema.split, strings: items.map(\.split.rawValue), layout: checked(rowCount))
        let source = try file.createGroup(CacheSchema.source)
        try source.createDataset(CacheSchema.sourceSize, of: Int64.self, shape: [rowCount], layout: checked(rowCount))
            .write(rowIdentities.map(\.size))
        try source.createDataset(CacheSchema.sourceMtime, of: Int64.self, shape: [rowCount], layout: checked(rowCount))
            .write(rowIdentities.map(\.mtimeNanoseconds))
        try source.createDataset(CacheSchema.sourceCtime, of: Int64.self, shape: [rowCount], layout: checked(rowCount))
            .write(rowIdentities.map(\.ctimeNanoseconds))
        try source.createDataset(CacheSchema.sourceInode, of: UInt64.self, shape: [rowCount], layout: checked(rowCount))
            .write(rowIdentities.map(\.inode))
        try source.createStringDataset(CacheSchema.sourceSHA256, strings: rowIdentities.map { SHA256.hex($0.sha256) },
                                       layout: checked(rowCount))
        let failed = try file.createGroup(CacheSchema.failed)
        try failed.createStringDataset(CacheSchema.failedPaths, strings: failures.map(\.path), layout: checked(failures.count))
        try failed.createStringDataset(CacheSchema.failedReasons, strings: failures.map(\.reason), layout: checked(failures.count))

        try fingerprint.writeAttributes(to: file)
        try file.setAttribute(CacheSchema.created, ISO8601DateFormatter().string(from: Date()))
        try file.setAttribute(CacheSchema.rowsDone, Int64(rowCount))
        try file.setAttribute(CacheSchema.complete, Int32(complete ? 1 : 0))
        if let extractionSeconds { try file.setAttribute(CacheSchema.extractionSeconds, extractionSeconds) }
        // Everything reaches the file here, where a failure (a full disk) can still be reported and
        // the journal kept; the close when the last object is released on return has nothing left to write.
        try file.flush()
    }

    /// `/views`: each row's block of augmented views, copied one block at a time (see `CacheSchema.views`).
    private func writeViews(to file: HDF5File, from journal: CacheJournal, rowItems: [Int], compress: Bool) throws {
        let blockSize = fingerprint.views * fingerprint.rowSize
        let blockRows = rowItems.indices.filter { fingerprint.viewCount(of: manifest[rowItems[$0]]) > 0 }
        let group = try file.createGroup(CacheSchema.views)
        let chunkRows = max(1, min(CacheSchema.chunkBytes / (blockSize * MemoryLayout<Float>.size), blockRows.count))
        let features = try group.createDataset(
            CacheSchema.viewFeatures, of: Float.self, shape: [0, fingerprint.views] + fingerprint.activationShape,
            layout: .extendibleRows(chunkRows: chunkRows, deflateLevel: compress ? CacheSchema.deflateLevel : nil, checksum: true))
        var writer = FeatureBlockWriter(dataset: features, rowSize: blockSize, chunkRows: chunkRows)
        let rowBytes = Int64(fingerprint.rowSize * MemoryLayout<Float>.size)
        for row in blockRows {
            try writer.append(1) { _, destination in
                switch sources[rowItems[row]]! {
                case .previous(let previousRow): try previous!.readViews(ofRow: previousRow, into: destination)
                case .journal(let offset): try journal.readFeatures(from: offset + rowBytes, into: destination)
                }
            }
        }
        try writer.flush()
        try group.createDataset(CacheSchema.viewRows, of: Int64.self, shape: [blockRows.count],
                                layout: .extendibleRows(chunkRows: max(1, min(blockRows.count, CacheSchema.metadataChunkRows)),
                                                        checksum: true))
            .write(blockRows.map { Int64($0) })
    }
}

/// Copies rows into `/features` through one buffer of whole chunks, so each chunk is
/// written (and compressed) once and memory stays a few MB whatever the row count.
private struct FeatureBlockWriter {
    private static let blockBytes = 4 << 20

    let dataset: HDF5Dataset
    let rowSize: Int
    private let blockRows: Int
    private var buffer: [Float]
    private var bufferedRows = 0
    private var writtenRows = 0

    init(dataset: HDF5Dataset, rowSize: Int, chunkRows: Int) {
        self.dataset = dataset
        self.rowSize = rowSize
        blockRows = chunkRows * max(1, Self.blockBytes / (chunkRows * rowSize * MemoryLayout<Float>.size))
        buffer = [Float](repeating: 0, count: blockRows * rowSize)
    }

    /// Adds `count` rows; `copy(rows, destination)` copies source rows `rows` (of 0..<count) into `destination`.
    mutating func append(_ count: Int, copy: (Range<Int>, UnsafeMutableBufferPointer<Float>) throws -> Void) throws {
        var done = 0
        while done < count {
            let taken = min(count - done, blockRows - bufferedRows)
            let free = (bufferedRows * rowSize)..<((bufferedRows + taken) * rowSize)
            try buffer.withUnsafeMutableBufferPointer { buffer in
                try copy(done..<(done + taken), UnsafeMutableBufferPointer(rebasing: buffer[free]))
            }
            bufferedRows += taken
            done += taken
            if bufferedRows == blockRows { try flush() }
        }
    }

    mutating func flush() throws {
        guard bufferedRows > 0 else { return }
        try buffer.withUnsafeBufferPointer { buffer in
            try dataset.writeRows(UnsafeBufferPointer(rebasing: buffer[0..<(bufferedRows * rowSize)]), startingAt: writtenRows)
        }
        writtenRows += bufferedRows
        bufferedRows = 0
    }
}
