@testable import Bottleneck
import Foundation
import XCTest

/// The shipped Slurm scripts (pipelines/slurm) submitted as a user would, from a fresh folder, on a real one-node
/// Slurm that Tests/slurm/one-node-cluster.sh starts for this test: the sample images as a job array of 3 extract
/// shards, the merge after it with --dependency=afterok, and the merged cache byte for byte that of one process.
///
/// The jobs store the preprocessed images (LAYER=input), not fc7: the debug build's VGG16 runs at 0.04 img/s on
/// 2 cores, minutes per shard. What this test is for, the scripts on a real Slurm, is the same at any layer; that
/// shards of fc7 merge into the single-process features is `ExtractionTests.testShardsMergeIntoTheSingleProcessCache`.
final class SlurmTests: XCTestCase {
    private static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    private static let clusterScript = repository.appendingPathComponent("Tests/slurm/one-node-cluster.sh").path
    /// Generous for 84 images on 2 cores (seconds): it only keeps a job that never ends from hanging the suite.
    private static let jobsTimeout: TimeInterval = 300

    private var folder: URL!
    private var cluster: URL { folder.appendingPathComponent("cluster") }

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/slurmctld") else {
            throw XCTSkip("Slurm is not installed (apt-get install slurm-wlm, as .ci/run does)")
        }
        guard getuid() == 0 else { throw XCTSkip("the one-node Slurm runs as root (slurmd starts each job as its user)") }
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bottleneck-slurm-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        // The script's watchdog stops the cluster when this process exits, should tearDown never run.
        let started = try command([Self.clusterScript, "start", cluster.path, "\(getpid())"], timeout: 60)
        guard started.status == 0 else { throw TestFailure("the one-node Slurm did not start:\n\(started.output)") }
    }

    override func tearDownWithError() throws {
        guard let folder else { return }
        let stopped = try command([Self.clusterScript, "stop", cluster.path], timeout: 60)
        XCTAssertEqual(stopped.status, 0, "stopping the one-node Slurm:\n\(stopped.output)")
        try FileManager.default.removeItem(at: folder)
    }

    func testShippedArrayAndMergeScriptsGiveTheSingleProcessCache() throws {
        let binary = try builtBinary()
        let submit = folder.appendingPathComponent("submit")
        try FileManager.default.createDirectory(at: submit, withIntermediateDirectories: true)
        let out = folder.appendingPathComponent("caches/shapes-input").path
        let images = Self.repository.appendingPathComponent("data/shapes").path
        let export = "--export=ALL,IMAGES=\(images),OUT=\(out),LAYER=input,BOTTLENECK=\(binary),BATCH_SIZE=8"
        let scripts = Self.repository.appendingPathComponent("pipelines/slurm")

        // The node offers this machine's CPUs (2 here), so the scripts' 8 per task would never be scheduled.
        let array = try sbatch(["--parsable", "--array=1-3", "--cpus-per-task=1", export,
                                scripts.appendingPathComponent("extract-array.sbatch").path], in: submit)
        // A dependency that can no longer be met cancels the merge rather than leaving it pending forever.
        let merge = try sbatch(["--parsable", "--dependency=afterok:\(array)", "--kill-on-invalid-dep=yes", export,
                                scripts.appendingPathComponent("merge.sbatch").path], in: submit)
        let states = try waitForJobs([array, merge], timeout: Self.jobsTimeout)
        guard states.count == 4, states.allSatisfy({ $0.state == "COMPLETED" }) else {
            return XCTFail("the jobs did not all complete: \(states.map { "\($0.job) \($0.state)" }.joined(separator: ", "))\n"
                           + (try jobLogs(in: submit)))
        }

        let single = folder.appendingPathComponent("single.h5").path
        let extracted = try command([binary, "extract", "--images", images, "--out", single, "--layer", "input",
                                     "--batch-size", "8"],
                                    timeout: Self.jobsTimeout)
        XCTAssertEqual(extracted.status, 0, extracted.output)

        let expected = try FeatureCacheReader(path: single)
        let merged = try FeatureCacheReader(path: out + ".h5")
        XCTAssertEqual(merged.count, 84)
        XCTAssertEqual(merged.paths, expected.paths)
        XCTAssertEqual(merged.labels, expected.labels)
        XCTAssertEqual(merged.splits, expected.splits)
        XCTAssertEqual(merged.classes, expected.classes)
        XCTAssertEqual(merged.fingerprint, expected.fingerprint)
        XCTAssertEqual(try merged.readRows(0..<merged.count).data.map(\.bitPattern),
                       try expected.readRows(0..<expected.count).data.map(\.bitPattern), "merged /features differ")

        // Every task and the merge logged into the folder they were submitted from, as the scripts say.
        for task in 1...3 {
            let log = submit.appendingPathComponent("bottleneck-extract-\(array)_\(task).out").path
            XCTAssertTrue(try String(contentsOfFile: log, encoding: .utf8).contains("extract: "), log)
        }
        let mergeLog = try String(contentsOf: submit.appendingPathComponent("bottleneck-merge-\(merge).out"), encoding: .utf8)
        XCTAssertTrue(mergeLog.contains("rows: 84"), mergeLog)
    }

    /// The `bottleneck` that `swift build` (and `swift test`) put beside this test bundle.
    private func builtBinary() throws -> String {
        let binary = Bundle.main.executableURL!.deletingLastPathComponent().appendingPathComponent("bottleneck").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw TestFailure("\(binary) is missing: run swift build first; the Slurm jobs run the built tool")
        }
        return binary
    }

    /// Submits and returns the job id (`--parsable`).
    private func sbatch(_ arguments: [String], in directory: URL) throws -> String {
        let result = try command(["sbatch"] + arguments, in: directory, timeout: 30)
        guard result.status == 0, let id = result.output.split(separator: "\n").first else {
            throw TestFailure("sbatch \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.output)")
        }
        return String(id)
    }

    /// Polls the jobs until every one has ended, or `timeout` has passed (tearDown cancels what is left), and returns
    /// their states. Not `sbatch --wait`: it exits 0 for a job cancelled before it ran, and polls so seldom that it
    /// returned 31 s after the merge had ended, doubling this test's time.
    private func waitForJobs(_ ids: [String], timeout: TimeInterval) throws -> [(job: String, state: String)] {
        let ended: Set<String> = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                                  "BOOT_FAIL", "DEADLINE"]
        let giveUp = Date().addingTimeInterval(timeout)
        while true {
            let states = try jobStates(ids)
            if Date() >= giveUp || states.allSatisfy({ ended.contains(String($0.state.prefix { $0 != " " })) }) {
                return states
            }
            usleep(500_000)
        }
    }

    /// The state of every job (every task of an array) that `scontrol` still remembers, with its reason when it
    /// has one, e.g. ("5", "CANCELLED (DependencyNeverSatisfied)").
    private func jobStates(_ ids: [String]) throws -> [(job: String, state: String)] {
        try ids.flatMap { id in
            let shown = try command(["scontrol", "--oneliner", "show", "job", id], timeout: 30)
            return shown.output.split(separator: "\n").map { line in
                var fields: [String: String] = [:]
                for field in line.split(separator: " ") {
                    let parts = field.split(separator: "=", maxSplits: 1).map(String.init)
                    if parts.count == 2 { fields[parts[0]] = parts[1] }
                }
                let job = fields["ArrayTaskId"].map { "\(fields["ArrayJobId"] ?? id)_\($0)" } ?? fields["JobId"] ?? id
                let reason = fields["Reason"].flatMap { $0 == "None" ? nil : " (\($0))" } ?? ""
                return (job, (fields["JobState"] ?? "unknown: \(line)") + reason)
            }
        }
    }

    /// Each job's log, for a failure message: what a user would read to find out why.
    private func jobLogs(in directory: URL) throws -> String {
        let logs = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".out") }.sorted()
        let queue = try command(["squeue", "--all"], timeout: 30).output
        // Why a task could not start (its log could not be opened, say) is only in slurmd's log.
        let slurmd = (try? String(contentsOf: cluster.appendingPathComponent("slurmd.log"), encoding: .utf8)) ?? ""
        // Less the MPI plugins' complaints: slurmd loads them all at start, and Debian's is built without PMIx.
        let errors = slurmd.split(separator: "\n").filter { $0.contains("error:") && !$0.contains("MPI") && !$0.contains("mpi/") }
            .suffix(10).joined(separator: "\n")
        return "squeue:\n\(queue)\nslurmd's errors:\n\(errors)\n" + logs.map { name in
            "\(name):\n" + ((try? String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)) ?? "(unreadable)")
        }.joined(separator: "\n")
    }

    /// Runs a program (looked up on PATH) with this cluster's SLURM_CONF, its stdout and stderr together; a run
    /// past `timeout` is killed and reported as such.
    private func command(_ arguments: [String], in directory: URL? = nil, timeout: TimeInterval) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.currentDirectoryURL = directory
        process.environment = ProcessInfo.processInfo.environment.merging(
            ["SLURM_CONF": cluster.appendingPathComponent("slurm.conf").path]) { $1 }
        // A file, not a pipe: a full pipe would block a chatty child and look like a hang.
        let log = folder.appendingPathComponent("command-\(UUID().uuidString).log")
        guard FileManager.default.createFile(atPath: log.path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        let handle = try FileHandle(forWritingTo: log)
        defer { try? handle.close() }
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let giveUp = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < giveUp { usleep(50_000) }
        let timedOut = process.isRunning
        if timedOut { process.terminate() }
        process.waitUntilExit()
        let output = try String(contentsOf: log, encoding: .utf8)
        return timedOut ? (-1, "timed out after \(Int(timeout)) s: \(arguments.joined(separator: " "))\n\(output)")
                        : (process.terminationStatus, output)
    }
}

private struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
