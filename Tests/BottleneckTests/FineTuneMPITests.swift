@testable import Bottleneck
import Foundation
import XCTest
@testable import BottleneckKernels

/// Data-parallel full-finetune: `mpirun -n 2` ranks of this test bundle (testRankOfAnMPIRun, the fixture network
/// at 32 px on the tiny image folder) against one process with the same global batch. Batches of 5 over 12
/// training images are 3 steps an epoch, split 3 + 2 and the last 1 + 1 between the ranks (1 + 0 with 11). Augmentation and
/// dropout stay on: their draws are per image (TrainingRandomness), so the ranks' slices are the single batch.
extension FineTuneTests {
    private static let rankImagesVariable = "BOTTLENECK_TEST_RANK_IMAGES"
    private static let rankOutVariable = "BOTTLENECK_TEST_RANK_OUT"
    private static let rankEpochsVariable = "BOTTLENECK_TEST_RANK_EPOCHS"
    private static let rankResumeVariable = "BOTTLENECK_TEST_RANK_RESUME"
    /// Rank 1 stops answering once it has logged this epoch, as a rank whose node hangs would.
    private static let rankHangVariable = "BOTTLENECK_TEST_RANK_HANG_AFTER_EPOCH"
    private static let rankTimeoutVariable = "BOTTLENECK_TEST_RANK_TIMEOUT"
    private static let parallelBatchSize = 5
    /// Seconds: each mpirun needs a few on 2 cores; this only keeps a broken run from hanging the suite.
    private static let mpirunTimeout: TimeInterval = 120
    /// max |parallel - single| / max |single| per tensor. The runs differ only in the order of float32 sums: a
    /// batch's gradient is two partial sums (over 3 and 2 images, in gemms blocked for those sizes) added by
    /// MPI_Allreduce instead of one sum over 5, and the dlogits are scaled by 1/N in two roundings. Measured here:
    /// weights ≤ 6e-8, biases ≤ 3e-6 (a conv bias's gradient sums 5 × 32 × 32 terms, and the biases start at 0, so
    /// their scale is only the 3 updates themselves). With the sum taken out of trainStep (each rank stepping on its
    /// own images) every weight is off by 2e-5 or more and every bias by 0.27 or more: 1e-5 lies between.
    private static let parityTolerance: Float = 1e-5

    func testTwoMPIRanksTrainTheModelOfOneProcess() throws {
        let images = try tinyImageFolder()
        // 11 training images: the last batch is 1 image, so rank 1 joins that step's sums with none of its own.
        let discs = "\(images)/train/discs"
        try FileManager.default.removeItem(atPath: "\(discs)/\(try FileManager.default.contentsOfDirectory(atPath: discs).sorted()[0])")
        let (single, parallel) = try oneProcessAndTwoRanks(images: images, epochs: 1)
        try assertSameModel(parallel, single)
        // Rank 0 wrote the run as one process does, and the other rank nothing besides it.
        XCTAssertEqual(try runFiles(parallel), try runFiles(single))
        XCTAssertEqual(try metricsLines(parallel).count, 2)
    }

    /// A rank that stops answering ends the job at the collective timeout with epoch 1's checkpoint, and the
    /// same mpirun with --resume ends with the model of one uninterrupted process.
    func testMPIRunWithAHungRankFailsResumably() throws {
        let images = try tinyImageFolder()
        let single = try oneProcessRun(images: images, epochs: 2)
        let parallel = try temporaryDirectory()
        let hung = try mpirun(images: images, out: parallel, epochs: 2, extra: [Self.rankHangVariable: "1", Self.rankTimeoutVariable: "3"])
        XCTAssertNotEqual(hung.status, 0, hung.output)
        XCTAssertTrue(hung.output.contains("waited 3.0 seconds for the other ranks"), hung.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: parallel + "/checkpoint.h5"), hung.output)

        let resumed = try mpirun(images: images, out: parallel, epochs: 2, extra: [Self.rankResumeVariable: "1"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        try assertSameModel(parallel, single)
        XCTAssertEqual(try metricsLines(parallel).count, 3)
    }

    /// Each rank reads only its share of the images, yet rank 0's summary lists every unreadable one, as one
    /// process's does. (Their batches differ from one process's: a rank fills a failed image's place from its next.)
    func testMPIRunReportsTheImagesAnyRankCouldNotRead() throws {
        let images = try tinyImageFolder()
        // One in each class folder of both splits, so both ranks meet some.
        for folder in try ["train", "val"].flatMap({ split in
            try FileManager.default.contentsOfDirectory(atPath: "\(images)/\(split)").map { "\(images)/\(split)/\($0)" }
        }) {
            try Data("not an image".utf8).write(to: URL(fileURLWithPath: folder + "/broken.jpg"))
        }
        let (single, parallel) = try oneProcessAndTwoRanks(images: images, epochs: 1)
        func reported(_ run: String) throws -> [String: Any] {
            let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/summary.json")))
            let fields = summary as! [String: Any]
            return ["failed": fields["failed_images"] as! [String], "val": fields["val_images"] as! Int, "train": fields["train_images"] as! Int]
        }
        let expected = try reported(single)
        XCTAssertEqual((expected["failed"] as! [String]).count, 6)
        XCTAssertEqual(try reported(parallel) as NSDictionary, expected as NSDictionary)
    }

    /// The same ranks started by Slurm's `srun --mpi=pmix` inside a job step of the one-node cluster the Slurm tests
    /// use, as on a cluster: OpenMPI finds its peers through Slurm's PMIx instead of mpirun's.
    func testSrunRanksTrainTheModelOfOneProcess() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/slurmctld") else {
            throw XCTSkip("Slurm is not installed (apt-get install slurm-wlm, as .ci/run does)")
        }
        guard getuid() == 0 else { throw XCTSkip("the one-node Slurm runs as root (slurmd starts each job as its user)") }
        let images = try tinyImageFolder()
        let single = try oneProcessRun(images: images, epochs: 1)
        let cluster = try temporaryDirectory()
        let script = Fixtures.root.deletingLastPathComponent().appendingPathComponent("slurm/one-node-cluster.sh").path
        // The script's watchdog stops the cluster when this process exits, should the stop below never run.
        let started = try runChild(script, ["start", cluster, "\(getpid())"], timeout: 60, logFolder: cluster)
        guard started.status == 0 else { throw TestFailure("the one-node Slurm did not start:\n\(started.output)") }
        defer { _ = try? runChild(script, ["stop", cluster], timeout: 60, logFolder: cluster) }
        let parallel = try temporaryDirectory()
        let ranks = try launchRanks("/usr/bin/srun", ["--mpi=pmix", "-n", "2", "-c", "1"], images: images, out: parallel,
                                    epochs: 1, extra: ["SLURM_CONF": cluster + "/slurm.conf"])
        XCTAssertEqual(ranks.status, 0, ranks.output)
        try assertSameModel(parallel, single)
        XCTAssertEqual(try runFiles(parallel), try runFiles(single))
    }

    /// One rank of the runs above: skipped unless one of them started it under mpirun.
    func testRankOfAnMPIRun() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let images = environment[Self.rankImagesVariable], let out = environment[Self.rankOutVariable],
              let epochs = environment[Self.rankEpochsVariable].flatMap(Int.init) else {
            throw XCTSkip("runs only as a rank that an MPI test starts under mpirun")
        }
        // Two ranks on two cores.
        ThreadBudget.limit(to: 1)
        let timeout = environment[Self.rankTimeoutVariable].flatMap(Double.init) ?? Self.mpirunTimeout
        let group = try ProcessGroup(collectiveTimeout: .seconds(timeout))
        // Ranks that did not find each other would each train alone on the whole batch, the single process's model.
        XCTAssertEqual(group.size, 2, "the launcher's ranks did not join one world")
        var rank = job(images: images, out: out, epochs: epochs)
        rank.settings.batchSize = Self.parallelBatchSize
        rank.resume = environment[Self.rankResumeVariable] != nil
        rank.group = group
        let hangAfter = environment[Self.rankHangVariable].flatMap(Int.init)
        _ = try rank.run { line in
            if group.rank == 1, let hangAfter, line.hasPrefix(String(format: "epoch %3d ", hangAfter)) {
                while true { sleep(60) }
            }
        }
        group.finish()
    }

    // MARK: helpers

    /// The run folder of one process on `images` with the ranks' settings.
    private func oneProcessRun(images: String, epochs: Int) throws -> String {
        let single = try temporaryDirectory()
        var oneProcess = job(images: images, out: single, epochs: epochs)
        oneProcess.settings.batchSize = Self.parallelBatchSize
        _ = try oneProcess.run { _ in }
        return single
    }

    /// The run folders of one process and of two MPI ranks (which must succeed) with the same settings.
    private func oneProcessAndTwoRanks(images: String, epochs: Int,
                                       file: StaticString = #filePath, line: UInt = #line) throws -> (single: String, parallel: String) {
        let single = try oneProcessRun(images: images, epochs: epochs)
        let parallel = try temporaryDirectory()
        let ranks = try mpirun(images: images, out: parallel, epochs: epochs)
        XCTAssertEqual(ranks.status, 0, ranks.output, file: file, line: line)
        return (single, parallel)
    }

    /// `mpirun -n 2` of testRankOfAnMPIRun, its stdout and stderr together; killed past `mpirunTimeout`.
    private func mpirun(images: String, out: String, epochs: Int,
                        extra: [String: String] = [:]) throws -> (status: Int32, output: String) {
        guard let mpirun = ProcessInfo.processInfo.environment["PATH"]?.split(separator: ":")
            .map({ "\($0)/mpirun" }).first(where: FileManager.default.isExecutableFile(atPath:)) else {
            throw XCTSkip("mpirun is not installed (apt-get install openmpi-bin, as .ci/run does)")
        }
        return try launchRanks(mpirun, ["-n", "2", "--oversubscribe", "--allow-run-as-root"], images: images, out: out,
                               epochs: epochs, extra: extra)
    }

    /// Two ranks of testRankOfAnMPIRun started by `launcher` with `arguments`, their stdout and stderr together;
    /// killed past `mpirunTimeout`.
    private func launchRanks(_ launcher: String, _ arguments: [String], images: String, out: String, epochs: Int,
                             extra: [String: String] = [:]) throws -> (status: Int32, output: String) {
        // On Linux the test bundle is an executable that runs the tests its arguments name.
        try runChild(launcher, arguments + [Bundle.main.executableURL!.path, "BottleneckTests.FineTuneTests/testRankOfAnMPIRun"],
                     environment: [Self.rankImagesVariable: images, Self.rankOutVariable: out,
                                   Self.rankEpochsVariable: "\(epochs)"].merging(extra) { $1 },
                     timeout: Self.mpirunTimeout, logFolder: try temporaryDirectory())
    }

    private func assertSameModel(_ parallel: String, _ single: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = try StateDictFile.open(path: single + "/model.h5")
        let actual = try StateDictFile.open(path: parallel + "/model.h5")
        XCTAssertEqual(actual.entries.map(\.key), expected.entries.map(\.key), file: file, line: line)
        for entry in expected.entries {
            let difference = try actual.tensor(entry.key).relativeDifference(to: try expected.tensor(entry.key))
            XCTAssertLessThanOrEqual(difference, Self.parityTolerance, entry.key, file: file, line: line)
        }
    }

    private func runFiles(_ run: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: run).sorted()
    }

    private func metricsLines(_ run: String) throws -> [String] {
        try String(contentsOfFile: run + "/metrics.csv", encoding: .utf8).split(separator: "\n").map(String.init)
    }
}
