import Foundation

/// A training run's folder: `config.json` when training starts, a `metrics.csv` line after every
/// epoch, and at the end `model.h5`, then `summary.json`. summary.json comes last, so a folder without
/// it (a run that diverged or was killed) never looks finished.
public final class RunDirectory {
    public static let configFile = "config.json"
    public static let metricsFile = "metrics.csv"
    public static let modelFile = "model.h5"
    public static let summaryFile = "summary.json"
    static let runFiles = [configFile, metricsFile, modelFile, summaryFile]

    public let path: String

    /// Creates the folder (with its parents). A folder that already holds a run is refused unless
    /// `overwrite`, which removes that run's files (and nothing else).
    public init(path: String, overwrite: Bool) throws {
        self.path = path
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        if manager.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw TrainingError(.runDirectory, "\(path) exists and is not a folder") }
            let existing = Self.runFiles.filter { manager.fileExists(atPath: (path as NSString).appendingPathComponent($0)) }
            if !existing.isEmpty {
                guard overwrite else {
                    let state = existing.contains(Self.summaryFile) ? "a finished run" : "an unfinished run"
                    throw TrainingError(.runDirectory, "\(path) already holds \(state) (\(existing.joined(separator: ", "))); "
                                        + "use --overwrite to replace it, or another --out")
                }
                for name in existing { try manager.removeItem(atPath: (path as NSString).appendingPathComponent(name)) }
            }
        } else {
            do {
                try manager.createDirectory(atPath: path, withIntermediateDirectories: true)
            } catch {
                throw TrainingError(.runDirectory, "cannot create the run folder \(path): \(error.localizedDescription)")
            }
        }
    }

    /// Opens the folder of an interrupted run to continue it: it must hold the run's config.json and no
    /// summary.json (a finished run has nothing to continue).
    public init(resuming path: String) throws {
        self.path = path
        let manager = FileManager.default
        guard manager.fileExists(atPath: (path as NSString).appendingPathComponent(Self.configFile)) else {
            throw TrainingError(.runDirectory, "\(path) holds no run to resume (no \(Self.configFile)); leave out --resume to start one")
        }
        guard !manager.fileExists(atPath: (path as NSString).appendingPathComponent(Self.summaryFile)) else {
            throw TrainingError(.runDirectory, "\(path) holds a finished run (\(Self.summaryFile)); nothing to resume")
        }
    }

    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    /// Pretty, sorted, snake_case JSON, written atomically.
    func writeJSON<T: Encodable>(_ value: T, to name: String) throws {
        let encoder = JSONEncoder.snakeCaseDocument()
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try write(try encoder.encode(value) + Data("\n".utf8), to: name)
    }

    /// metrics.csv's header; the report reads the file by these names.
    public static let metricsColumns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]

    func startMetrics() throws {
        try write(Data((Self.metricsColumns.joined(separator: ",") + "\n").utf8), to: Self.metricsFile)
    }

    func appendMetrics(_ record: HeadTrainer.EpochRecord) throws {
        let line = [String(record.epoch), "\(record.trainLoss)", "\(record.trainAccuracy)", "\(record.validationLoss)",
                    "\(record.validationAccuracy)", "\(record.learningRate)", String(format: "%.4f", record.seconds)]
            .joined(separator: ",") + "\n"
        do {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file(Self.metricsFile)))
            defer { try? handle.close() }
            try handle.seekToEnd()
            try handle.write(contentsOf: Data(line.utf8))
        } catch {
            throw TrainingError(.runDirectory, "cannot write \(file(Self.metricsFile)): \(error.localizedDescription)")
        }
    }

    private func write(_ data: Data, to name: String) throws {
        do {
            try data.write(to: URL(fileURLWithPath: file(name)), options: .atomic)
        } catch {
            throw TrainingError(.runDirectory, "cannot write \(file(name)): \(error.localizedDescription)")
        }
    }
}
