#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import BottleneckKernels

/// A training run's folder: `config.json` when training starts, a `metrics.csv` line after every
/// epoch, and at the end `model.h5`, then `summary.json`. summary.json comes last, so a folder without
/// it (a run that diverged or was killed) never looks finished.
final class RunDirectory {
    static let configFile = "config.json"
    static let metricsFile = "metrics.csv"
    static let modelFile = "model.h5"
    static let summaryFile = "summary.json"
    static let runFiles = [configFile, metricsFile, modelFile, summaryFile]

    package let path: String
    /// Held while this object lives: two trainings on one `--out` would otherwise delete and write each other's files.
    private let lock: WriterLock
    static let lockFile = ".lock"

    /// Creates the folder (with its parents). A folder that already holds a run is refused unless
    /// `overwrite`, which removes that run's files (and nothing else).
    package init(path: String, overwrite: Bool) throws {
        self.path = path
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        if manager.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw TrainingError(.runDirectory, "\(path) exists and is not a folder") }
            lock = try Self.lock(path)
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
            lock = try Self.lock(path)
        }
        removeOrphanTemporaries()
    }

    /// Opens the folder of an interrupted run to continue it: it must hold the run's config.json and no
    /// summary.json (a finished run has nothing to continue).
    package init(resuming path: String) throws {
        self.path = path
        let manager = FileManager.default
        guard manager.fileExists(atPath: (path as NSString).appendingPathComponent(Self.configFile)) else {
            throw TrainingError(.runDirectory, "\(path) holds no run to resume (no \(Self.configFile)); leave out --resume to start one")
        }
        guard !manager.fileExists(atPath: (path as NSString).appendingPathComponent(Self.summaryFile)) else {
            throw TrainingError(.runDirectory, "\(path) holds a finished run (\(Self.summaryFile)); nothing to resume")
        }
        lock = try Self.lock(path)
        removeOrphanTemporaries()
    }

    package func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    private static func lock(_ folder: String) throws -> WriterLock {
        let path = (folder as NSString).appendingPathComponent(lockFile)
        return try WriterLock(path: path, busy: {
            TrainingError(.runDirectory, "\(folder) is in use: another bottleneck run is training into it (it holds \(path)); "
                          + "wait for it to finish, or use another --out")
        }, unusable: { TrainingError(.runDirectory, "cannot create the lock file \($0.path): \($0.reason)") })
    }

    /// Deletes what killed runs of this folder left half-written (`model.h5.partial-PID-…`, up to a model's
    /// size each), and only those of dead processes.
    private func removeOrphanTemporaries() {
        for name in Self.runFiles + [FineTuneCheckpoint.fileName] { DurableFiles.removeOrphanTemporaries(of: file(name)) }
    }

    /// Pretty, sorted, snake_case JSON, written atomically (see `DurableFiles.writeAtomically`).
    func writeJSON<T: Encodable>(_ value: T, to name: String) throws {
        let encoder = JSONEncoder.snakeCaseDocument()
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try write(try encoder.encode(value) + Data("\n".utf8), to: name)
    }

    func startMetrics() throws {
        try write(Data((EpochRecord.csvColumns.joined(separator: ",") + "\n").utf8), to: Self.metricsFile)
    }

    func appendMetrics(_ record: EpochRecord) throws {
        let line = record.csvFields.joined(separator: ",") + "\n"
        let path = file(Self.metricsFile)
        let descriptor: Int32, status: stat
        do {
            (descriptor, status) = try DurableFiles.openRegularFile(path, flags: O_WRONLY | O_APPEND | O_NOFOLLOW)
        } catch {
            throw TrainingError(.runDirectory, "cannot write \(path): \(error.reason)")
        }
        defer { close(descriptor) }
        if let code = Array(line.utf8).withUnsafeBytes({ DurableFiles.write($0, to: descriptor, at: Int64(status.st_size)) }) {
            throw TrainingError(.runDirectory, "cannot write \(path): \(systemMessage(code))")
        }
    }

    private func write(_ data: Data, to name: String) throws {
        do {
            try DurableFiles.writeAtomically(data, to: file(name))
        } catch {
            throw TrainingError(.runDirectory, "cannot write \(file(name)): \(error)")
        }
    }
}
