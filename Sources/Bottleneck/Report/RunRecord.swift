import Foundation
import BottleneckKernels

/// What the report shows of one run directory (train-head or full-finetune): read from its config.json,
/// metrics.csv, summary.json and the attributes of its model.h5.
package struct RunRecord: Sendable {
    package enum Mode: String, Sendable {
        case head, finetune
    }

    package var directory: String
    /// The folder's name: how the report labels the run.
    package var name: String
    package var mode: Mode
    /// "through fc7 (cached)", "through fc7 (cached, 4 augmented views)", "through conv3_3", "none".
    package var frozen: String
    package var trainableParameters: Int
    /// metrics.csv's lines (without the steps' seconds, which the file does not keep).
    package var epochs: [EpochRecord]
    /// Seconds of training by the end of each epoch: the sum of `epochs`' seconds up to and including it.
    var elapsedSeconds: [Double] {
        var total = 0.0
        return epochs.map { total += $0.seconds; return total }
    }
    package var bestEpoch: Int
    var bestValidationAccuracy: Double
    var bestValidationLoss: Double
    package var chanceAccuracy: Double
    package var wallSeconds: Double
    /// Training samples through optimizer steps per second.
    package var samplesPerSecond: Double
    /// The feature cache a head trained on; nil for fine-tuning (no cache).
    package var cache: CacheFile?
    /// The backbone weights the run started from (model.h5's attributes): a file's sha256, or seeded random ones.
    package var weights: WeightsIdentity
    package var imageSize: Int
    package var classes: [String]
    package var perClass: [ClassificationMetrics.ClassFigures]
    /// confusion[true class][predicted class], validation rows, best epoch.
    package var confusion: [[Int]]
    /// Which images it validated on; nil for a run made before runs recorded it.
    package var validation: TrainingSplit.Record?

    package struct CacheFile: Sendable {
        package var path: String
        /// nil when the file is gone.
        package var bytes: Int?
        /// What extracting it took, where the cache records it.
        package var extractionSeconds: Double?
    }

    /// What the run cost from images to model: a head's training plus the extraction that made its cache (nil when the
    /// cache does not record that), a fine-tuning's training.
    package var totalSeconds: Double? {
        guard let cache else { return wallSeconds }
        return cache.extractionSeconds.map { $0 + wallSeconds }
    }

    var usesRandomWeights: Bool { !weights.isPretrained }

    private struct ConfigFile: Decodable {
        struct Cache: Decodable {
            struct Fingerprint: Decodable {
                var preprocess: String
                /// nil in the configs of runs made before caches had views.
                var views: Int?
            }
            var path: String
            var fingerprint: Fingerprint
        }
        struct Head: Decodable {
            var cutLayer: String
        }
        struct Network: Decodable {
            var frozenThrough: String?
        }
        struct Settings: Decodable {
            var imageSize: Int?
            /// train-head's `HeadTrainingSettings.ViewsChoice`.
            var views: String?
        }
        var command: String
        var cache: Cache?
        var head: Head?
        var network: Network?
        var settings: Settings
    }

    package init(directory: String) throws {
        let run = { (name: String) in (directory as NSString).appendingPathComponent(name) }
        guard FileManager.default.fileExists(atPath: run(RunDirectory.summaryFile)) else {
            throw ReportError("\(directory): no \(RunDirectory.summaryFile), so not a finished train-head or full-finetune run")
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        func decode<T: Decodable>(_ type: T.Type, _ file: String) throws -> T {
            do {
                return try decoder.decode(type, from: Data(DurableFiles.readRegularFile(run(file)).bytes))
            } catch {
                throw ReportError("\(run(file)): cannot read it: \(error)")
            }
        }
        let summary = try decode(TrainingSummary.self, RunDirectory.summaryFile)
        let config = try decode(ConfigFile.self, RunDirectory.configFile)

        self.directory = directory
        name = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        switch config.command {
        case "train-head":
            mode = .head
            let trainedOnViews = config.settings.views != HeadTrainingSettings.ViewsChoice.evalOnly.rawValue
            let views = trainedOnViews ? config.cache?.fingerprint.views ?? 0 : 0
            frozen = "through \(config.head?.cutLayer ?? "the cut") (cached\(views > 0 ? ", \(views) augmented views" : ""))"
            cache = config.cache.map { cache in
                CacheFile(path: cache.path, bytes: (try? FileManager.default.attributesOfItem(atPath: cache.path))?[.size] as? Int,
                          extractionSeconds: (try? FeatureCacheReader(path: cache.path))?.extractionSeconds)
            }
            imageSize = (try? Preprocessing(jsonDescription: config.cache?.fingerprint.preprocess ?? ""))?.crop ?? 224
        case "full-finetune":
            mode = .finetune
            frozen = config.network?.frozenThrough.map { "through \($0)" } ?? "none"
            cache = nil
            imageSize = config.settings.imageSize ?? 224
        default:
            throw ReportError("\(run(RunDirectory.configFile)): command '\(config.command)' is neither train-head nor full-finetune")
        }
        epochs = try Self.readMetrics(run(RunDirectory.metricsFile))
        (trainableParameters, weights) = try Self.modelAttributes(run(RunDirectory.modelFile))
        bestEpoch = summary.bestEpoch
        bestValidationAccuracy = summary.bestValAccuracy
        bestValidationLoss = summary.bestValLoss
        chanceAccuracy = summary.chanceAccuracy
        wallSeconds = summary.wallSeconds
        samplesPerSecond = summary.throughput
        classes = summary.classes
        perClass = summary.perClass
        confusion = summary.confusionMatrix
        validation = summary.split
    }

    /// metrics.csv by its header's column names.
    private static func readMetrics(_ path: String) throws -> [EpochRecord] {
        let text: String
        do { text = try DurableFiles.readText(path) } catch { throw ReportError("\(path): cannot read it: \(error.reason)") }
        let lines = text.split(whereSeparator: \.isNewline).map {
            $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        }
        guard let header = lines.first else { throw ReportError("\(path) is empty") }
        let columns = try Dictionary(uniqueKeysWithValues: EpochRecord.csvColumns.map { name in
            guard let index = header.firstIndex(of: name) else { throw ReportError("\(path): no column '\(name)'") }
            return (name, index)
        })
        return try lines.dropFirst().enumerated().map { offset, fields in
            EpochRecord(csvValues: try columns.mapValues { column in
                guard column < fields.count, let value = Double(fields[column]) else {
                    throw ReportError("\(path):\(offset + 2): not a number in column '\(header[column])'")
                }
                return value
            })
        }
    }

    /// Elements of the layers model.h5 lists as trained, from the dataset shapes (no parameter is read), and the
    /// backbone weights it records.
    private static func modelAttributes(_ path: String) throws -> (trainableParameters: Int, weights: WeightsIdentity) {
        let file = try StateDictFile.open(path: path)
        guard let listed = file.metadata["trainable_layers"],
              let layers = try? JSONDecoder().decode([String].self, from: Data(listed.utf8)) else {
            throw ReportError("\(path): no trainable_layers attribute (not a bottleneck model)")
        }
        guard let source = file.metadata["weights_source"], let fingerprint = file.metadata["weights_sha256"] else {
            throw ReportError("\(path): no weights_source or weights_sha256 attribute (not a bottleneck model)")
        }
        let parameters = file.entries.filter { entry in layers.contains { entry.key.hasPrefix($0 + ".") } }
            .reduce(0) { $0 + $1.elementCount }
        return (parameters, WeightsIdentity(source: source, fingerprint: fingerprint))
    }
}
