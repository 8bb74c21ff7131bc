import Foundation
import BottleneckKernels

/// What `bottleneck inspect` tells about a cache: the finished file, the journal of a run
/// in progress or interrupted, or both (a rerun adding images to a finished cache).
package struct CacheInspection: Codable, Sendable {
    /// Rows of one class (or of unlabeled images, `name` nil) per split name.
    package struct ClassCount: Codable, Equatable, Sendable {
        package var name: String?
        var perSplit: [String: Int]
        var total: Int
    }

    /// The journal next to the cache: rows durable in it that the cache does not hold yet.
    package struct JournalStatus: Codable, Sendable {
        package var path: String
        package var rows: Int
        package var failed: Int
        /// A record a kill cut short; dropped when the extraction continues.
        var tornBytes: Int
    }

    package var path: String
    /// Whether the finished file exists (false: only a journal).
    var cacheExists: Bool
    package var fingerprint: CacheFingerprint
    package var rows: Int
    var complete: Bool
    package var created: String?
    package var fileBytes: Int?
    /// "chunks of 64 rows, shuffle+deflate level 4, fletcher32 checksums"
    var storage: String?
    package var classes: [ClassCount]
    package var failed: [CacheFailure]
    package var journal: JournalStatus?

    /// Reads `path` (and `path.partial`); one-line errors when neither is a readable cache.
    package init(path: String) throws {
        self.path = path
        let journalPath = FeatureCacheBuilder.journalPath(for: path)
        let journalContents = FileManager.default.fileExists(atPath: journalPath) ? try CacheJournal.read(path: journalPath) : nil

        if FileManager.default.fileExists(atPath: path) {
            let cache = try FeatureCacheReader(path: path, allowIncomplete: true)
            cacheExists = true
            fingerprint = cache.fingerprint
            rows = cache.count
            complete = cache.isComplete
            created = cache.created
            fileBytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue
            storage = Self.describe(cache.storage)
            classes = Self.count(cache.splits.indices.map { row in
                (cache.labels[row] < 0 ? nil : cache.classes[Int(cache.labels[row])], cache.splits[row])
            }, classes: cache.classes)
            failed = cache.failed
            if let journalContents {
                let cached = Set(cache.paths)
                journal = JournalStatus(path: journalPath, rows: journalContents.rows.count { !cached.contains($0.path) },
                                        failed: journalContents.failures.count, tornBytes: Int(journalContents.tornBytes))
            }
        } else if let journalContents {
            cacheExists = false
            fingerprint = journalContents.header.fingerprint
            rows = journalContents.rows.count
            complete = false
            classes = Self.count(journalContents.rows.map { ($0.className, $0.split) }, classes: journalContents.currentClasses)
            failed = journalContents.failures
            journal = JournalStatus(path: journalPath, rows: rows, failed: failed.count, tornBytes: Int(journalContents.tornBytes))
        } else {
            throw FeatureCacheError(.missing, "\(path): no such file")
        }
    }

    /// Several lines for people; `--json` prints the structure itself.
    package var report: String {
        var lines: [String] = []
        if cacheExists {
            let size = fileBytes.map { ", \($0.formattedBytes)" } ?? ""
            lines.append("cache: \(path) (\(complete ? "complete" : "INCOMPLETE: not every image was processed")\(size))")
        } else {
            lines.append("cache: \(path) (not written yet)")
        }
        if let journal {
            let torn = journal.tornBytes > 0 ? " (and a torn record of \(journal.tornBytes) bytes, dropped on continuing)" : ""
            lines.append("extraction in progress or interrupted: \(journal.rows) rows durable in \(journal.path)\(torn); "
                         + "rerun the same extract command to continue")
        }
        lines.append("schema: \(fingerprint.schema)")
        lines.append("backbone: \(fingerprint.backbone)")
        lines.append("layer: \(fingerprint.layer) (\(fingerprint.layerPath))")
        lines.append("activation shape: \(fingerprint.activationShape)")
        lines.append("rows: \(rows)")
        if fingerprint.views > 0 { lines.append("augmented views: \(fingerprint.views) per labeled image outside val/ and test/") }
        lines += classTable()
        let weights = WeightsIdentity(source: fingerprint.weightsSource, fingerprint: fingerprint.weightsSHA256)
        lines.append(weights.isPretrained ? "weights: sha256 \(weights.fingerprint) (from \(weights.source))"
                                          : "weights: \(weights.fingerprint) (random initialisation, NOT pretrained)")
        lines.append("preprocess: \(fingerprint.preprocess)")
        lines.append("image root: \(fingerprint.imageRoot)")
        if let created { lines.append("created: \(created)") }
        lines.append("tool version: \(fingerprint.toolVersion)")
        if let storage { lines.append("storage: \(storage)") }
        lines.append("failed: \(failed.count)")
        lines += failed.map { "  \($0.path): \($0.reason)" }
        return lines.joined(separator: "\n")
    }

    /// One line per class (and unlabeled), one column per split that has rows.
    private func classTable() -> [String] {
        let splits = ImageFolder.Split.allCases.map(\.rawValue).filter { split in classes.contains { $0.perSplit[split] != nil } }
        let names = classes.map { $0.name ?? "(unlabeled)" }
        let nameWidth = max(names.map(\.count).max() ?? 0, 5)
        let columns = splits + ["total"]
        func row(_ name: String, _ cells: [String]) -> String {
            "  " + name.padding(toLength: nameWidth, withPad: " ", startingAt: 0)
                + cells.map { String(repeating: " ", count: max(0, 8 - $0.count)) + $0 }.joined()
        }
        let labeled = classes.filter { $0.name != nil }.count
        return ["classes: \(labeled)", row("class", columns)]
            + zip(names, classes).map { name, count in
                row(name, splits.map { String(count.perSplit[$0] ?? 0) } + [String(count.total)])
            }
    }

    private static func count(_ rows: [(className: String?, split: ImageFolder.Split)], classes: [String]) -> [ClassCount] {
        var counts = classes.map { ClassCount(name: $0, perSplit: [:], total: 0) }
        var position = Dictionary(uniqueKeysWithValues: classes.enumerated().map { ($1, $0) })
        for row in rows {
            let key = row.className ?? ""
            if position[key] == nil {
                position[key] = counts.count
                counts.append(ClassCount(name: row.className, perSplit: [:], total: 0))
            }
            counts[position[key]!].perSplit[row.split.rawValue, default: 0] += 1
            counts[position[key]!].total += 1
        }
        return counts
    }

    private static func describe(_ storage: HDF5Storage) -> String {
        let layout = storage.chunkShape.map { "chunks of \($0.first ?? 0) rows" } ?? "contiguous"
        let compression = storage.filters.filter { $0.name != "fletcher32" }.map { filter in
            filter.name == "deflate" ? "deflate level \(filter.parameters.first ?? 0)" : filter.name
        }
        let checksum = storage.filters.contains { $0.name == "fletcher32" } ? ", fletcher32 checksums" : ", NO checksums"
        return layout + ", " + (compression.isEmpty ? "uncompressed" : compression.joined(separator: "+")) + checksum
    }
}
