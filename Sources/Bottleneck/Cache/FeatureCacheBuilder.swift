import Foundation

/// What `finish` wrote.
public struct CacheSummary: Sendable {
    public let path: String
    public let rows: Int
    /// Rows copied from the cache an earlier run finished.
    public let reusedRows: Int
    /// Rows recovered from the journal of an interrupted run.
    public let recoveredRows: Int
    /// Rows appended by this run.
    public let extractedRows: Int
    public let failed: Int
    public let fileBytes: Int
}

/// Writes a feature cache so that `kill -9` at any moment loses no finished batch
/// and never leaves a cache that looks whole but is not:
///
/// - batches go to an append-only journal (`CACHE.h5.partial`, see `CacheJournal`),
///   each durable once `append` returns;
/// - `CACHE.h5` itself is only ever replaced by renaming a synced, finished file over it.
///
/// Opening again continues where the journal ends and reuses the rows of an earlier
/// finished cache, so a rerun with more images extracts only the new ones. Memory is
/// the per-row metadata plus a few MB of copy buffer, whatever the number of rows.
/// Used from one thread.
public final class FeatureCacheBuilder {
    public let path: String
    public let journalPath: String
    public let fingerprint: CacheFingerprint
    /// What the labels of appended items index.
    public let classes: [String]
    /// Paths that already have a row (in the earlier cache, the journal, or appended since);
    /// paths that failed before are not here, so they are tried again.
    public private(set) var donePaths: Set<String>
    public let reusedRowCount: Int
    public let recoveredRowCount: Int
    /// Bytes of a record a kill cut short, dropped from the journal when it was reopened.
    public let tornJournalBytes: Int
    /// Rows appended by this run so far.
    public private(set) var appendedRowCount = 0

    private let previous: FeatureCacheReader?
    /// nil once finished.
    private var journal: CacheJournal?
    /// Journal rows not already in `previous`, with where their features are.
    private var journalRows: [CacheRowInfo]
    private var journalFeatureRuns: [JournalFeatureRun]
    private var journalFailures: [CacheFailure]

    public static func journalPath(for path: String) -> String { path + ".partial" }

    /// Opens (or starts) the cache at `path` for a run with `fingerprint` whose item labels index
    /// `classes`. Refuses a cache or journal made with another fingerprint unless `overwrite`,
    /// which deletes both. Fails before any work when the folder is missing or read-only.
    public static func open(path: String, fingerprint: CacheFingerprint, classes: [String],
                            overwrite: Bool) throws -> FeatureCacheBuilder {
        try DurableFiles.checkWritableFolder(for: path)
        guard Set(classes).count == classes.count else {
            throw FeatureCacheError(.invalidInput, "\(path): the class list names a class twice")
        }
        let journalPath = journalPath(for: path)
        if overwrite {
            try DurableFiles.remove(path)
            try DurableFiles.remove(journalPath)
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
        return FeatureCacheBuilder(path: path, fingerprint: fingerprint, classes: classes, previous: previous,
                                   journal: journal, contents: contents)
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

    private init(path: String, fingerprint: CacheFingerprint, classes: [String], previous: FeatureCacheReader?,
                 journal: CacheJournal, contents: JournalContents?) {
        self.path = path
        self.journalPath = journal.path
        self.fingerprint = fingerprint
        self.classes = classes
        self.previous = previous
        self.journal = journal
        self.reusedRowCount = previous?.count ?? 0
        self.tornJournalBytes = Int(contents?.tornBytes ?? 0)
        self.journalFailures = contents?.failures ?? []

        // A kill between renaming the finished cache into place and deleting the journal
        // leaves a journal whose rows the cache already holds: those are skipped.
        let previousPaths = Set(previous?.paths ?? [])
        var rows: [CacheRowInfo] = []
        var runs: [JournalFeatureRun] = []
        if let contents {
            let rowBytes = Int64(fingerprint.rowSize * MemoryLayout<Float>.size)
            var recorded = contents.rows.makeIterator()
            for run in contents.featureRuns {
                for rowInRun in 0..<run.rowCount {
                    let row = recorded.next()!
                    guard !previousPaths.contains(row.path) else { continue }
                    rows.append(row)
                    let offset = run.offset + Int64(rowInRun) * rowBytes
                    if let last = runs.last, last.offset + Int64(last.rowCount) * rowBytes == offset {
                        runs[runs.count - 1] = JournalFeatureRun(offset: last.offset, rowCount: last.rowCount + 1)
                    } else {
                        runs.append(JournalFeatureRun(offset: offset, rowCount: 1))
                    }
                }
            }
        }
        self.journalRows = rows
        self.journalFeatureRuns = runs
        self.recoveredRowCount = rows.count
        self.donePaths = previousPaths.union(rows.map(\.path))
    }

    /// Adds one batch: `features` holds `items.count` rows of `fingerprint.rowSize` floats, row-major,
    /// and `failed` the inputs of the batch that could not be read. Durable when this returns.
    public func append(features: UnsafeBufferPointer<Float>, items: [ImageFolder.Item],
                       failed: [(path: String, reason: String)]) throws {
        guard let journal else { throw FeatureCacheError(.invalidInput, "\(path) is already finished") }
        guard features.count == items.count * fingerprint.rowSize else {
            throw FeatureCacheError(.invalidInput, "\(path): \(features.count) feature values for \(items.count) rows "
                                    + "of \(fingerprint.rowSize) (\(fingerprint.activationShape))")
        }
        var batchPaths = Set<String>()
        for item in items {
            guard item.label >= -1, item.label < Int32(classes.count) else {
                throw FeatureCacheError(.invalidInput, "\(path): \(item.path) has label \(item.label) but there are \(classes.count) classes")
            }
            guard !donePaths.contains(item.path), batchPaths.insert(item.path).inserted else {
                throw FeatureCacheError(.invalidInput, "\(path): \(item.path) already has a row")
            }
        }
        guard !items.isEmpty || !failed.isEmpty else { return }
        let failures = failed.map { CacheFailure(path: $0.path, reason: $0.reason) }
        let featuresOffset = try journal.appendBatch(items, failures: failures, features: features)
        if !items.isEmpty { journalFeatureRuns.append(JournalFeatureRun(offset: featuresOffset, rowCount: items.count)) }
        journalRows += items.map { CacheRowInfo(path: $0.path, className: $0.label < 0 ? nil : classes[Int($0.label)], split: $0.split) }
        journalFailures += failures
        donePaths.formUnion(batchPaths)
        appendedRowCount += items.count
    }

    /// Writes the cache: the earlier cache's rows, then the journal's, into a temporary file
    /// that replaces `path` atomically; then deletes the journal. `complete` is what the file
    /// claims: that every image of the run has a row or a failure. A rerun that found nothing new
    /// leaves the earlier file alone: copying a pool5 cache of many GB to get the same bytes (but the
    /// creation time) would take minutes and twice the disk.
    public func finish(compress: Bool, complete: Bool = true) throws -> CacheSummary {
        guard let journal else { throw FeatureCacheError(.invalidInput, "\(path) is already finished") }
        let failures = finalFailures()
        let rowCount = reusedRowCount + journalRows.count
        if !wouldRewritePrevious(failures: failures, compress: compress, complete: complete) {
            let temporaryPath = path + ".tmp"
            let metadataBytes = rowCount * 256 + failures.count * 512 + (1 << 20)
            try DurableFiles.checkFreeSpace(for: temporaryPath, bytes: rowCount * fingerprint.rowSize * MemoryLayout<Float>.size + metadataBytes,
                                            keeping: "the \(journalRows.count) extracted rows stay in \(journalPath): free some space and rerun")
            do {
                try writeCache(to: temporaryPath, from: journal, failures: failures, compress: compress, complete: complete)
                try DurableFiles.replace(path, with: temporaryPath)
            } catch {
                try? DurableFiles.remove(temporaryPath)
                throw error
            }
        }
        try journal.delete()
        self.journal = nil
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return CacheSummary(path: path, rows: rowCount, reusedRows: reusedRowCount,
                            recoveredRows: recoveredRowCount, extractedRows: appendedRowCount, failed: failures.count,
                            fileBytes: (attributes[.size] as? NSNumber)?.intValue ?? 0)
    }

    /// Whether writing the cache now would give the earlier cache again: no row since, the same failures
    /// (the broken images retried and failing again, for the same reasons), no new class, the same
    /// completeness and compression.
    private func wouldRewritePrevious(failures: [CacheFailure], compress: Bool, complete: Bool) -> Bool {
        guard let previous else { return false }
        return journalRows.isEmpty && failures == previous.failed && previous.isComplete == complete
            && Set(classes).isSubset(of: previous.classes)
            && previous.storage.filters.contains { $0.name == "deflate" } == compress
    }

    /// Failures of the earlier cache and the journal, the latest reason per path, without the paths
    /// that have a row by now (a retry that worked).
    private func finalFailures() -> [CacheFailure] {
        var reasons: [String: String] = [:]
        var order: [String] = []
        for failure in (previous?.failed ?? []) + journalFailures {
            if reasons.updateValue(failure.reason, forKey: failure.path) == nil { order.append(failure.path) }
        }
        return order.filter { !donePaths.contains($0) }.map { CacheFailure(path: $0, reason: reasons[$0]!) }
    }

    private func writeCache(to temporaryPath: String, from journal: CacheJournal, failures: [CacheFailure], compress: Bool,
                            complete: Bool) throws {
        let file = try HDF5File(path: temporaryPath, mode: .truncate)
        let rowSize = fingerprint.rowSize
        let rowCount = reusedRowCount + journalRows.count

        let chunkRows = max(1, min(CacheSchema.chunkBytes / (rowSize * MemoryLayout<Float>.size), rowCount))
        let features = try file.createDataset(
            CacheSchema.features, of: Float.self, shape: [0] + fingerprint.activationShape,
            layout: .extendibleRows(chunkRows: chunkRows, deflateLevel: compress ? CacheSchema.deflateLevel : nil))
        var writer = FeatureBlockWriter(dataset: features, rowSize: rowSize, chunkRows: chunkRows)
        if let previous {
            try writer.append(previous.count) { rows, destination in try previous.readRows(rows, into: destination) }
        }
        for run in journalFeatureRuns {
            try writer.append(run.rowCount) { rows, destination in
                try journal.readFeatures(from: run.offset + Int64(rows.lowerBound * rowSize * MemoryLayout<Float>.size),
                                         into: destination)
            }
        }
        try writer.flush()

        // Labels are stored by class name until now: the final list is the sorted union,
        // so an earlier cache's labels keep naming the same classes.
        let previousRows = previous.map { previous in
            previous.paths.indices.map { row in
                CacheRowInfo(path: previous.paths[row],
                             className: previous.labels[row] < 0 ? nil : previous.classes[Int(previous.labels[row])],
                             split: previous.splits[row])
            }
        } ?? []
        let rows = previousRows + journalRows
        let finalClasses = Set(classes).union(previous?.classes ?? []).union(rows.compactMap(\.className))
            .sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        let classIndex = Dictionary(uniqueKeysWithValues: finalClasses.enumerated().map { ($1, Int32($0)) })

        try file.createDataset(CacheSchema.labels, of: Int32.self, shape: [rowCount])
            .write(rows.map { row in row.className.map { classIndex[$0]! } ?? -1 })
        try file.createStringDataset(CacheSchema.classes, count: finalClasses.count).writeStrings(finalClasses)
        try file.createStringDataset(CacheSchema.paths, count: rowCount).writeStrings(rows.map(\.path))
        try file.createStringDataset(CacheSchema.split, count: rowCount).writeStrings(rows.map(\.split.rawValue))
        let failed = try file.createGroup(CacheSchema.failed)
        try failed.createStringDataset(CacheSchema.failedPaths, count: failures.count).writeStrings(failures.map(\.path))
        try failed.createStringDataset(CacheSchema.failedReasons, count: failures.count).writeStrings(failures.map(\.reason))

        try fingerprint.writeAttributes(to: file)
        try file.setAttribute(CacheSchema.created, ISO8601DateFormatter().string(from: Date()))
        try file.setAttribute(CacheSchema.rowsDone, Int64(rowCount))
        try file.setAttribute(CacheSchema.complete, Int32(complete ? 1 : 0))
        // Everything reaches the file here, where a failure (a full disk) can still be reported and
        // the journal kept; the close when the last object is released on return has nothing left to write.
        try file.flush()
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
