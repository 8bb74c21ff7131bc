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
        // A job's child process runs one stage on the cluster its parent started; run by the suite, it has no job.
        if name.hasSuffix("testRunsTheStageOfItsJob") {
            guard ProcessInfo.processInfo.environment[Self.jobArgumentsVariable] != nil else {
                throw XCTSkip("runs only as a Slurm job of testRunOnSlurmGivesTheLocalRunsCacheAndHead")
            }
            return
        }
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/slurmctld") else {
            throw XCTSkip("Slurm is not installed (apt-get install slurm-wlm, as .ci/run does)")
        }
        guard getuid() == 0 else { throw XCTSkip("the one-node Slurm runs as root (slurmd starts each job as its user)") }
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bottleneck-slurm-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        // The script's watchdog stops the cluster when this process exits, should tearDown never run.
        let started = try command([Self.clusterScript, "start", cluster.path, "\(getpid())"], timeout: 60)
        guard started.status == 0 else { throw TestFailure("the one-node Slurm did not start:\n\(started.output)") }
        // `run` on Slurm (SlurmExecutor) calls sbatch and scontrol in this process, and its jobs inherit the setting.
        setenv("SLURM_CONF", cluster.appendingPathComponent("slurm.conf").path, 1)
    }

    override func tearDownWithError() throws {
        guard let folder else { return }
        unsetenv("SLURM_CONF")
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

        try assertSameCache(out + ".h5", single, rows: 84)

        // Every task and the merge logged into the folder they were submitted from, as the scripts say.
        for task in 1...3 {
            let log = submit.appendingPathComponent("bottleneck-extract-\(array)_\(task).out").path
            XCTAssertTrue(try String(contentsOfFile: log, encoding: .utf8).contains("extract: "), log)
        }
        let mergeLog = try String(contentsOf: submit.appendingPathComponent("bottleneck-merge-\(merge).out"), encoding: .utf8)
        XCTAssertTrue(mergeLog.contains("rows: 84"), mergeLog)
    }

    // MARK: bottleneck run with executor: slurm

    /// The variable that hands a job's arguments (`run FILE --stage NAME …`, one a line) to `testRunsTheStageOfItsJob`.
    private static let jobArgumentsVariable = "BOTTLENECK_TEST_SLURM_JOB"

    /// `run FILE` with `executor: slurm` on the fixture network at 32 px (the tool refuses that network, and the debug
    /// build's VGG16 needs ~20 s per process to make its random weights): every stage a job, the extract stage an array
    /// of 2 shards and their merge. Each job runs `testRunsTheStageOfItsJob` in a child of this test bundle, which does
    /// what `bottleneck run FILE --stage NAME [--shard I/N]` does. The result is that of a local run of the same file.
    func testRunOnSlurmGivesTheLocalRunsCacheAndHead() throws {
        let images = try Fixtures.sampleImages(into: folder.appendingPathComponent("shapes"))
        let start = Date()
        let onSlurm = try runOnSlurm(fixturePipeline(images: images, out: "on-slurm", executor: """
            executor: slurm
            slurm:
              shards: 2
              time: "10"
              max_wait: "3:00"
            """))
        let slurmSeconds = Date().timeIntervalSince(start)
        XCTAssertEqual(onSlurm.outcomes.map(\.name), ["extract", "head", "report"])
        XCTAssertEqual(onSlurm.outcomes.map(\.reused), [false, false, false], onSlurm.log.joined(separator: "\n"))
        // 2 shards, their merge, the head and the report, each reported with its id as it ended.
        let completed = onSlurm.log.filter { $0.hasPrefix("slurm: ") && $0.hasSuffix(": COMPLETED") }
        XCTAssertEqual(completed.count, 5, onSlurm.log.joined(separator: "\n"))
        for shard in 1...2 { XCTAssertTrue(completed.contains { $0.contains("extract shard \(shard)/2 (job ") }, "\(completed)") }
        XCTAssertTrue(onSlurm.log.contains { $0.hasPrefix("head: submitted job ") && $0.contains("(after ") }, "\(onSlurm.log)")

        let local = try PipelineRunner(pipeline: try parse(fixturePipeline(images: images, out: "local", executor: ""))).run { _ in }
        XCTAssertEqual(local.map(\.reused), [false, false, false])

        try assertSameCache(folder.appendingPathComponent("on-slurm/features-fc7.h5").path,
                            folder.appendingPathComponent("local/features-fc7.h5").path, rows: 21)
        // The head's epochs, less their wall times, and its best epoch.
        for run in ["on-slurm", "local"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("\(run)/report.md").path), run)
        }
        XCTAssertEqual(try headMetrics(in: "on-slurm"), try headMetrics(in: "local"))
        XCTAssertEqual(try headSummary(in: "on-slurm")["best_val_accuracy"] as? Double,
                       try headSummary(in: "local")["best_val_accuracy"] as? Double)

        // Nothing changed: nothing is submitted, every stage is reused as a local run would reuse it.
        let again = try runOnSlurm(fixturePipeline(images: images, out: "on-slurm", executor: "executor: slurm\nslurm:\n  shards: 2"))
        XCTAssertEqual(again.outcomes.map(\.reused), [true, true, true])
        XCTAssertFalse(again.log.contains { $0.contains("submitted") }, "\(again.log)")
        print("run on the one-node Slurm: \(String(format: "%.1f", slurmSeconds)) s")
    }

    /// A failing stage (here every extract shard: the image folder has no images) makes `run` fail with the job's id,
    /// state and log, and the jobs after it, which can never run, are cancelled rather than waited on.
    func testFailedJobFailsTheRunAndCancelsItsDependents() throws {
        let images = folder.appendingPathComponent("no-images/train/discs")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        let start = Date()
        XCTAssertThrowsError(try runOnSlurm(fixturePipeline(images: folder.appendingPathComponent("no-images").path, out: "failing",
                                                            executor: "executor: slurm\nslurm:\n  shards: 2\n  max_wait: \"2:00\""))) { error in
            let message = "\(error)"
            XCTAssertTrue(message.hasPrefix("stage extract shard "), message)
            XCTAssertTrue(message.contains(" FAILED (NonZeroExitCode, exit code 1:0), log "), message)
            // The log it names is there and says why, and the message quotes its last line, the error.
            let logs = folder.appendingPathComponent("failing/slurm-logs/extract-shards-").path
            XCTAssertTrue(message.contains(".out ('Error: \(self.folder.appendingPathComponent("no-images").path): no images found"), message)
            guard let log = message.components(separatedBy: ", log ").dropFirst().first?.prefix(while: { $0 != " " }) else {
                return XCTFail("no log in: \(message)")
            }
            XCTAssertTrue(log.hasPrefix(logs), message)
            XCTAssertTrue(((try? String(contentsOfFile: String(log), encoding: .utf8)) ?? "").contains("no images found"), String(log))
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
        // Neither the merge nor the head nor the report is left queued.
        let queue = try command(["squeue", "--noheader", "--format=%i %T %r"], timeout: 30)
        XCTAssertEqual(queue.output.trimmingCharacters(in: .whitespacesAndNewlines), "", "still queued: \(queue.output)")
    }

    /// `max_wait` bounds the wait: past it, run cancels the jobs and fails, saying so.
    func testRunWaitsAtMostMaxWaitThenCancelsTheJobs() throws {
        let images = try Fixtures.sampleImages(into: folder.appendingPathComponent("shapes"))
        let start = Date()
        XCTAssertThrowsError(try runOnSlurm(fixturePipeline(images: images, out: "slow",
                                                            executor: "executor: slurm\nslurm:\n  max_wait: \"0:01\""))) { error in
            XCTAssertTrue("\(error)".contains(": the Slurm jobs did not finish within max_wait (00:00:01); cancelled extract (job "), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 30)
        let queue = try command(["squeue", "--noheader", "--format=%i %T %r"], timeout: 30)
        XCTAssertEqual(queue.output.trimmingCharacters(in: .whitespacesAndNewlines), "", "still queued: \(queue.output)")
    }

    /// What a job runs: the arguments `bottleneck run FILE --stage NAME [--shard I/N] [--force NAME]` would get, done as
    /// the command does them, on the fixture network. Run by the suite, it has no job and is skipped (by setUp).
    func testRunsTheStageOfItsJob() throws {
        let joined = ProcessInfo.processInfo.environment[Self.jobArgumentsVariable]!
        var arguments = joined.split(separator: "\n").map(String.init)
        guard arguments.count >= 2, arguments.removeFirst() == "run" else { throw TestFailure("not a run: \(joined)") }
        let file = arguments.removeFirst()
        var options: [String: String] = [:]
        while arguments.count >= 2 { options[arguments.removeFirst()] = arguments.removeFirst() }
        guard arguments.isEmpty, let stage = options["--stage"] else { throw TestFailure("no --stage in: \(joined)") }
        do {
            let runner = try PipelineRunner(pipeline: try Pipeline(contentsOf: file, backbones: PipelineTests.backbones),
                                            force: options["--force"].map { [$0] } ?? [])
            if let shard = options["--shard"] {
                print(try runner.extractShard(try Shard(shard), stage: stage) { print($0) })
            } else {
                print(try runner.run(stage: stage) { print($0) }.result)
            }
        } catch {
            // As the tool ends on an error: its last line, and a failed job.
            print("Error: \(error)")
            fflush(nil)
            exit(1)
        }
    }

    /// `bottleneck run` of the file with its Slurm jobs run by `testRunsTheStageOfItsJob`: a script standing for the
    /// tool, which hands its arguments to a child of this test bundle.
    private func runOnSlurm(_ yaml: String) throws -> (outcomes: [PipelineRunner.StageOutcome], log: [String]) {
        let tool = folder.appendingPathComponent("bottleneck-job")
        try """
            #!/bin/sh
            export \(Self.jobArgumentsVariable)="$(printf '%s\\n' "$@")"
            exec '\(Bundle.main.executableURL!.path)' BottleneckTests.SlurmTests/testRunsTheStageOfItsJob
            """.write(to: tool, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: tool.path)
        var messages: [String] = []
        let outcomes = try SlurmExecutor(runner: try PipelineRunner(pipeline: try parse(yaml)), tool: tool.path).run { messages.append($0) }
        return (outcomes, messages)
    }

    private func parse(_ yaml: String) throws -> Pipeline {
        let file = folder.appendingPathComponent("pipeline-\(UUID().uuidString).yaml")
        try yaml.write(to: file, atomically: true, encoding: .utf8)
        return try Pipeline(contentsOf: file.path, backbones: PipelineTests.backbones)
    }

    /// Extract, train-head and a Markdown report on the fixture network, under `out` in the test's folder.
    private func fixturePipeline(images: String, out: String, executor: String) -> String {
        """
        name: slurm-fixture
        images: \(images)
        weights: \(Fixtures.path("network/narrow_vgg16_legacy.pth"))
        backbone: vgg16-narrow16
        layer: fc7
        image_size: 32
        out: \(folder.appendingPathComponent(out).path)
        \(executor)
        stages:
          - stage: extract
            batch_size: 4
          - stage: train-head
            epochs: 3
          - stage: report
            formats: [md]
        """
    }

    /// The merged cache holds the single process's rows: paths, labels, splits, classes, fingerprint and every bit.
    private func assertSameCache(_ mergedPath: String, _ expectedPath: String, rows: Int,
                                 file: StaticString = #filePath, line: UInt = #line) throws {
        let merged = try FeatureCacheReader(path: mergedPath)
        let expected = try FeatureCacheReader(path: expectedPath)
        XCTAssertEqual(merged.count, rows, file: file, line: line)
        XCTAssertEqual(merged.paths, expected.paths, file: file, line: line)
        XCTAssertEqual(merged.labels, expected.labels, file: file, line: line)
        XCTAssertEqual(merged.splits, expected.splits, file: file, line: line)
        XCTAssertEqual(merged.classes, expected.classes, file: file, line: line)
        XCTAssertEqual(merged.fingerprint, expected.fingerprint, file: file, line: line)
        XCTAssertEqual(try merged.readRows(0..<merged.count).data.map(\.bitPattern),
                       try expected.readRows(0..<expected.count).data.map(\.bitPattern), "merged /features differ",
                       file: file, line: line)
    }

    /// The head's metrics.csv without its wall-time column.
    private func headMetrics(in run: String) throws -> [String] {
        try String(contentsOf: folder.appendingPathComponent("\(run)/head/metrics.csv"), encoding: .utf8)
            .split(separator: "\n").map { $0.split(separator: ",").dropLast().joined(separator: ",") }
    }

    private func headSummary(in run: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("\(run)/head/summary.json"))) as! [String: Any]
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
        try runChild("/usr/bin/env", arguments, environment: ["SLURM_CONF": cluster.appendingPathComponent("slurm.conf").path],
                     in: directory, timeout: timeout, logFolder: folder.path)
    }
}
