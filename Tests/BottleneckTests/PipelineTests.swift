@testable import Bottleneck
import Foundation
import XCTest
@testable import BottleneckKernels

/// Pipeline files: errors that point at the line, and the demo pipeline at fixture size (the narrow
/// VGG16 at 32 px on a subset of data/shapes) run end to end, reused when nothing changed, rerun by --force
/// and by a changed input; `bottleneck run` killed mid-extract and mid-finetune continues where it was.
final class PipelineTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bottleneck-pipeline-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    /// Tests/Fixtures/network's VGG16 with every width divided by 16 and 64 hidden units: a whole pipeline in seconds.
    static let fixtureBackbone = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)

    /// The backbones the tests' pipelines may name: torchvision's and the fixture network, which `bottleneck run` refuses.
    static let backbones = VGGConfig.torchvision + [fixtureBackbone]

    private func parse(_ yaml: String) throws -> Pipeline {
        try Pipeline(yaml: yaml, path: "pipelines/x.yaml", backbones: Self.backbones)
    }

    private func assertRefused(_ yaml: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(yaml), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(expected), "\(error)", file: file, line: line)
        }
    }

    private let valid = """
        images: data/shapes
        stages:
          - stage: extract
          - stage: train-head
            epochs: 3
        """

    func testSlurmKeysAreReadAndBadOnesRefusedWithTheLine() throws {
        let slurm = valid + "\nexecutor: slurm\nslurm:\n  shards: 4\n  partition: cpu\n  time: 1-02:00:00\n  cpus_per_task: 8\n"
            + "  mem: 4G\n  max_wait: \"90\"\n"
        guard case .slurm(let settings) = try parse(slurm).executor else { return XCTFail("not on Slurm") }
        XCTAssertEqual(settings.shards, 4)
        XCTAssertEqual(settings.partition, "cpu")
        XCTAssertEqual(settings.time, "1-02:00:00")
        XCTAssertEqual(settings.cpusPerTask, 8)
        XCTAssertEqual(settings.memory, "4G")
        XCTAssertEqual(settings.maxWaitSeconds, 90 * 60)
        XCTAssertEqual(settings.logs, "runs/x/slurm-logs")
        XCTAssertEqual(try parse(slurm).extractShardCount, 4)
        guard case .local = try parse(valid).executor else { return XCTFail("not local") }

        assertRefused(valid + "\nexecutor: lsf\n", "pipelines/x.yaml:6: unknown executor 'lsf' (local or slurm)")
        assertRefused(valid + "\nslurm:\n  shards: 2\n", "pipelines/x.yaml:7: 'slurm' settings are read only with 'executor: slurm'")
        assertRefused(valid + "\nexecutor: slurm\nslurm:\n  shard: 2\n",
                      "pipelines/x.yaml:8: unknown key 'shard' in slurm (did you mean 'shards'?)")
        assertRefused(valid + "\nexecutor: slurm\nslurm:\n  shards: 0\n", "pipelines/x.yaml:8: shards must be between 1 and 100000, not 0")
        assertRefused(valid + "\nexecutor: slurm\nslurm:\n  time: 2h\n",
                      "pipelines/x.yaml:8: time must be a Slurm time limit (MINUTES, HH:MM:SS or DAYS-HH:MM:SS), got '2h'")
        assertRefused(valid + "\nexecutor: slurm\nslurm:\n  mem: lots\n", "pipelines/x.yaml:8: mem must be a size")
        assertRefused(valid + "\nexecutor: slurm\nslurm:\n  max_wait: 0\n", "pipelines/x.yaml:8: max_wait must be a positive Slurm time")
        assertRefused(valid + "\nexecutor: slurm\nslurm:\n  cpus_per_task: 0\n", "pipelines/x.yaml:8: cpus_per_task must be at least 1")
        assertRefused(valid + "\nexecutor: slurm\nslurm: 4\n", "pipelines/x.yaml:7: slurm must be a mapping")
    }

    func testSlurmTimesAreSlurmsFormats() {
        XCTAssertEqual(SlurmTime.seconds("30"), 1800)
        XCTAssertEqual(SlurmTime.seconds("30:15"), 1815)
        XCTAssertEqual(SlurmTime.seconds("02:00:00"), 7200)
        XCTAssertEqual(SlurmTime.seconds("1-12"), 129_600)
        XCTAssertEqual(SlurmTime.seconds("1-00:30"), 88_200)
        XCTAssertEqual(SlurmTime.seconds("1-00:00:10"), 86_410)
        XCTAssertEqual([90, 7200, 86_410].map(SlurmTime.text), ["00:01:30", "02:00:00", "1-00:00:10"])
        for bad in ["", "2h", "1:2:3:4", "-5", "1-", "a-1", "1--2", ":"] { XCTAssertNil(SlurmTime.seconds(bad), bad) }
    }

    func testValidFileGivesStagesWithDefaults() throws {
        let pipeline = try parse(valid)
        XCTAssertEqual(pipeline.name, "x")
        XCTAssertEqual(pipeline.layer, "fc7")
        XCTAssertEqual(pipeline.outputRoot, "runs/x")
        XCTAssertEqual(pipeline.stages.map(\.name), ["extract", "head"])
        guard case .trainHead(let settings) = pipeline.stages[1].settings else { return XCTFail("not train-head") }
        XCTAssertEqual(settings.epochs, 3)
        XCTAssertEqual(settings.batchSize, HeadTrainingSettings().batchSize)
    }

    /// The inputs no stage makes (the image folder, a weights file) must be there, refused at their line; the cache and
    /// the runs that later stages read are made by earlier ones and not looked for.
    func testMissingImagesAndWeightsAreRefusedAtTheirLine() throws {
        let images = folder.appendingPathComponent("images").path
        let stages = "stages:\n  - stage: extract\n  - stage: train-head\n  - stage: report\n"
        let missingImages = try parse("name: x\nimages: \(images)\n" + stages)
        XCTAssertThrowsError(try missingImages.checkInputsExist()) { error in
            XCTAssertEqual("\(error)", "pipelines/x.yaml:2: images: \(images) does not exist "
                           + "(the image folder, relative to the directory the command runs from)")
        }
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        XCTAssertNoThrow(try missingImages.checkInputsExist())
        XCTAssertNoThrow(try parse("images: \(images)\nweights: random:3\n" + stages).checkInputsExist())
        XCTAssertThrowsError(try parse("images: \(images)\n\nweights: \(images)/vgg16.pth\n" + stages).checkInputsExist()) { error in
            XCTAssertEqual("\(error)", "pipelines/x.yaml:3: weights: \(images)/vgg16.pth does not exist "
                           + "(a weights file, random or random:SEED)")
        }
        let file = folder.appendingPathComponent("file.jpg").path
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data()))
        XCTAssertThrowsError(try parse("images: \(file)\n" + stages).checkInputsExist()) { error in
            XCTAssertTrue("\(error)".hasPrefix("pipelines/x.yaml:1: images: \(file) is not a folder"), "\(error)")
        }
    }

    func testInvalidYAMLNamesTheLine() {
        assertRefused("images: data/shapes\nstages:\n  - stage: extract\n   batch_size: 4\n", "pipelines/x.yaml:4: invalid YAML")
        assertRefused("images: [data\n", "pipelines/x.yaml:2: invalid YAML")
        assertRefused("", "pipelines/x.yaml: the file is empty")
    }

    func testUnknownKeysNameTheLineAndTheClosestKey() {
        assertRefused(valid.replacingOccurrences(of: "epochs: 3", with: "epoch: 3"),
                      "pipelines/x.yaml:5: unknown key 'epoch' in stage head (did you mean 'epochs'?)")
        assertRefused("imags: data\n" + valid, "pipelines/x.yaml:1: unknown key 'imags' in the pipeline (did you mean 'images'?)")
        assertRefused(valid.replacingOccurrences(of: "train-head", with: "train_head"),
                      "pipelines/x.yaml:4: unknown stage kind 'train_head' (did you mean 'train-head'?)")
        assertRefused(valid + "\n    optimizer: adm",
                      "pipelines/x.yaml:6: 'optimizer' must be one of sgd, adam, adamw, got 'adm' (did you mean 'adam'?)")
        assertRefused(valid + "\n    epochs: 4", "pipelines/x.yaml:6: 'epochs' is given twice (first on line 5)")
    }

    func testBadValuesAndOrderAreRefusedWithTheLine() {
        assertRefused(valid.replacingOccurrences(of: "epochs: 3", with: "epochs: many"),
                      "pipelines/x.yaml:5: 'epochs' must be a whole number, got 'many'")
        assertRefused(valid.replacingOccurrences(of: "epochs: 3", with: "epochs: 0"),
                      "pipelines/x.yaml:4: stage head: epochs must be at least 1")
        assertRefused("images: d\nlayer: fc9\nstages:\n  - stage: extract\n", "pipelines/x.yaml:2:")
        assertRefused(valid.replacingOccurrences(of: "epochs: 3", with: "momentum: -0.5"),
                      "pipelines/x.yaml:4: stage head: momentum must be in [0, 1), got -0.5")
        assertRefused(valid.replacingOccurrences(of: "epochs: 3", with: "backbone_lr_mult: -1"),
                      "pipelines/x.yaml:5: unknown key 'backbone_lr_mult' in stage head")
        assertRefused(valid + "\n  - stage: full-finetune\n    backbone_lr_mult: -1\n",
                      "pipelines/x.yaml:6: stage finetune: backbone_lr_mult must be a number >= 0, got -1.0")
        assertRefused("images: d\nstages:\n  - stage: train-head\n", "pipelines/x.yaml:3: train-head trains on the feature cache")
        assertRefused(valid + "\n  - stage: full-finetune\n    init_head: hed\n",
                      "pipelines/x.yaml:7: init_head names a train-head stage above this one (head), not 'hed'")
        assertRefused(valid + "\n  - stage: train-head\n", "pipelines/x.yaml:6: two stages are named 'head'")
        assertRefused(valid + "\n  - stage: full-finetune\n    freeze_through: conv9_9\n", "pipelines/x.yaml:7: freeze_through:")
        assertRefused("images: d\nstages:\n  - stage: extract\n  - stage: report\n", "pipelines/x.yaml:4: a report compares training runs")
        assertRefused(valid + "\n  - stage: full-finetune\n    split_seed: 1\n  - stage: report\n",
                      "pipelines/x.yaml:8: the report compares runs validated on the same images, but stage head holds out "
                      + "val_fraction 0.2 with split_seed 0 and stage finetune val_fraction 0.2 with split_seed 1: "
                      + "give every training stage the same")
        XCTAssertNoThrow(try parse(valid + "\n    split_seed: 1\n  - stage: full-finetune\n    split_seed: 1\n  - stage: report\n"))
        XCTAssertThrowsError(try PipelineRunner(pipeline: try parse(valid), force: ["haed"])) { error in
            XCTAssertTrue("\(error)".contains("--force haed: pipelines/x.yaml has no such stage "
                                              + "(its stages: extract, head) (did you mean 'head'?)"),
                          "\(error)")
        }
    }

    /// A copy of part of data/shapes, so that the test can add an image.
    private func sampleImages(into name: String = "shapes") throws -> String {
        try Fixtures.sampleImages(into: folder.appendingPathComponent(name))
    }

    /// pipelines/demo.yaml's stages on the test suite's narrow network at 32 px.
    private func demoAtFixtureSize(images: String, headEpochs: Int = 4) -> String {
        """
        name: demo-fixture
        images: \(images)
        weights: \(Fixtures.path("network/narrow_vgg16_legacy.pth"))
        backbone: vgg16-narrow16
        layer: fc7
        image_size: 32
        out: \(folder.appendingPathComponent("runs").path)
        stages:
          - stage: extract
            batch_size: 8
          - stage: train-head
            epochs: \(headEpochs)
            optimizer: adam
          - stage: full-finetune
            epochs: 1
            freeze_through: conv3_3
            batch_size: 6
          - stage: report
        """
    }

    private func run(_ yaml: String, force: [String] = []) throws -> (outcomes: [PipelineRunner.StageOutcome], log: [String]) {
        var messages: [String] = []
        let outcomes = try PipelineRunner(pipeline: try parse(yaml), force: force).run { messages.append($0) }
        return (outcomes, messages)
    }

    func testDemoPipelineRunsEndToEndThenReusesWhatIsUpToDate() throws {
        let images = try sampleImages()
        let yaml = demoAtFixtureSize(images: images)
        let first = try run(yaml)
        XCTAssertEqual(first.outcomes.map(\.name), ["extract", "head", "finetune", "report"])
        XCTAssertEqual(first.outcomes.map(\.reused), [false, false, false, false])
        let root = folder.appendingPathComponent("runs").path
        for file in ["features-fc7.h5", "head/summary.json", "finetune/summary.json", "report.html", "report.md", ".stages/head.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/" + file), file)
        }
        let cache = try FeatureCacheReader(path: root + "/features-fc7.h5")
        XCTAssertEqual(cache.count, 21)
        XCTAssertEqual(cache.activationShape, [64])
        XCTAssertEqual(cache.fingerprint.backbone, "vgg16-narrow16")

        // The report holds the runs' own numbers.
        let html = try String(contentsOfFile: root + "/report.html", encoding: .utf8)
        for run in ["head", "finetune"] {
            let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(root)/\(run)/summary.json")))
                as! [String: Any]
            XCTAssertTrue(html.contains(String(format: "%.4f", summary["best_val_accuracy"] as! Double)), run)
        }

        let second = try run(yaml)
        XCTAssertEqual(second.outcomes.map(\.reused), [true, true, true, true])
        XCTAssertTrue(second.log.contains("head: up to date (\(root)/head/summary.json), reused"), "\(second.log)")

        // --force reruns one stage; the report reads its new output, the fine-tuning does not read it.
        let forced = try run(yaml, force: ["train-head"])
        XCTAssertEqual(forced.outcomes.map(\.reused), [true, false, true, false])

        // Changed settings rerun that stage; a new image reruns everything that depends on the images.
        XCTAssertEqual(try run(demoAtFixtureSize(images: images, headEpochs: 2)).outcomes.map(\.reused), [true, false, true, false])
        let added = URL(fileURLWithPath: images).appendingPathComponent("train/discs/added.jpg")
        try FileManager.default.copyItem(atPath: URL(fileURLWithPath: images).appendingPathComponent("val/discs")
            .appendingPathComponent(try FileManager.default.contentsOfDirectory(atPath: images + "/val/discs").sorted()[0]).path,
                                         toPath: added.path)
        let rerun = try run(demoAtFixtureSize(images: images, headEpochs: 2))
        XCTAssertEqual(rerun.outcomes.map(\.reused), [false, false, false, false])
        XCTAssertTrue(rerun.outcomes[0].result.hasPrefix("22 images (1 extracted, 21 reused,"), rerun.outcomes[0].result)
        XCTAssertEqual(try FeatureCacheReader(path: root + "/features-fc7.h5").count, 22)

        // A touched image: extract looks again and finds the same bytes, so the cache and the head stay as they were;
        // the fine-tuning reads the images themselves and reruns.
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: 5)], ofItemAtPath: added.path)
        let touched = try run(demoAtFixtureSize(images: images, headEpochs: 2))
        XCTAssertEqual(touched.outcomes.map(\.reused), [false, true, false, false])
        XCTAssertTrue(touched.outcomes[0].result.hasPrefix("22 images (0 extracted, 22 reused, 0 changed, 0 removed, 0 failed)"),
                      touched.outcomes[0].result)
    }

    // MARK: interrupted and failed runs

    /// A pipeline of the given stages on the fixture network at 32 px.
    private func fixturePipeline(images: String, out: String, weights: String = Fixtures.path("network/narrow_vgg16_legacy.pth"),
                                 imageSize: Int = 32, stages: String) -> String {
        """
        name: interrupted
        images: \(images)
        weights: \(weights)
        backbone: vgg16-narrow16
        image_size: \(imageSize)
        out: \(folder.appendingPathComponent(out).path)
        stages:
        \(stages)
        """
    }

    private let extractOnly = "  - stage: extract\n    batch_size: 2"

    /// The pipeline file `testRunsThePipelineOfItsParent` runs, in the child process `startRun` starts.
    private static let childPipelineVariable = "BOTTLENECK_TEST_CHILD_PIPELINE"

    /// What `bottleneck run FILE` does, on the fixture network, which the tool refuses: `startRun` runs this test
    /// alone in a child process of the test bundle. Run by the suite, it has no file and is skipped.
    func testRunsThePipelineOfItsParent() throws {
        guard let file = ProcessInfo.processInfo.environment[Self.childPipelineVariable] else {
            throw XCTSkip("runs only as the child process of a test that kills it")
        }
        let pipeline = try Pipeline(contentsOf: file, backbones: Self.backbones)
        _ = try PipelineRunner(pipeline: pipeline, force: []).run { print($0) }
    }

    /// `bottleneck run FILE` on the fixture network as a child process, its output in a log file beside it.
    private func startRun(_ yaml: String) throws -> Process {
        let file = folder.appendingPathComponent("pipeline-\(UUID().uuidString).yaml")
        try yaml.write(to: file, atomically: true, encoding: .utf8)
        let process = Process()
        // On Linux the test bundle is an executable that runs the tests its arguments name.
        process.executableURL = Bundle.main.executableURL
        process.arguments = ["BottleneckTests.PipelineTests/testRunsThePipelineOfItsParent"]
        process.environment = ProcessInfo.processInfo.environment.merging([Self.childPipelineVariable: file.path]) { $1 }
        let log = file.deletingPathExtension().appendingPathExtension("log")
        guard FileManager.default.createFile(atPath: log.path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        process.standardOutput = try FileHandle(forWritingTo: log)
        process.standardError = process.standardOutput
        try process.run()
        return process
    }

    /// Waits for `condition` while the child runs, then kills it with SIGKILL.
    private func killHard(_ process: Process, once condition: () -> Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        // Generous: the child needs seconds; this only keeps a broken run from hanging the suite.
        let giveUp = Date().addingTimeInterval(300)
        while !condition() {
            guard process.isRunning else {
                return XCTFail("bottleneck run exited (\(process.terminationStatus)) before it got there", file: file, line: line)
            }
            guard Date() < giveUp else {
                process.terminate()
                return XCTFail("bottleneck run never got there", file: file, line: line)
            }
            usleep(20_000)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .uncaughtSignal, file: file, line: line)
    }

    private func readFeatures(_ path: String) throws -> (paths: [String], labels: [Int32], bits: [UInt32]) {
        let cache = try FeatureCacheReader(path: path)
        return (cache.paths, cache.labels, try cache.readRows(0..<cache.count).data.map(\.bitPattern))
    }

    func testKilledExtractContinuesFromItsJournalAndAFailedRunKeepsTheCache() throws {
        let images = try sampleImages()
        try FileManager.default.copyItem(atPath: images + "/val/discs/"
                                             + FileManager.default.contentsOfDirectory(atPath: images + "/val/discs").sorted()[0],
                                         toPath: images + "/train/discs/zz.jpg")
        let yaml = fixturePipeline(images: images, out: "runs", stages: extractOnly)
        let cache = folder.appendingPathComponent("runs/features-fc7.h5").path
        // Killed once two of its eleven batches are durable (a FIFO cannot hold it: it is refused, never opened blocking).
        try killHard(try startRun(yaml), once: { ((try? CacheInspection(path: cache))?.journal?.rows ?? 0) >= 4 })
        XCTAssertFalse(FileManager.default.fileExists(atPath: cache))

        let resumed = try run(yaml)
        let recovered = try XCTUnwrap(resumed.log.lazy.compactMap { line in
            line.hasPrefix("resuming: ") ? Int(line.dropFirst("resuming: ".count).prefix { $0.isNumber }) : nil
        }.first, "\(resumed.log)")
        XCTAssertTrue((4..<22).contains(recovered), "\(recovered) rows recovered")
        XCTAssertEqual(resumed.outcomes[0].result.prefix { $0 != ")" },
                       "22 images (22 extracted, 0 reused, 0 changed, 0 removed, 0 failed; "
                       + "\(recovered) of them recovered from an interrupted run")

        // The same bytes as one uninterrupted run over the same images.
        let reference = folder.appendingPathComponent("reference").path
        try FileManager.default.copyItem(atPath: images, toPath: reference)
        _ = try run(fixturePipeline(images: reference, out: "reference-runs", stages: extractOnly))
        let expected = try readFeatures(folder.appendingPathComponent("reference-runs/features-fc7.h5").path)
        let actual = try readFeatures(cache)
        XCTAssertEqual(actual.paths, expected.paths)
        XCTAssertEqual(actual.labels, expected.labels)
        XCTAssertEqual(actual.bits, expected.bits)

        // A mistyped folder fails before anything is deleted: the next good run finds the stage up to date.
        let record = folder.appendingPathComponent("runs/.stages/extract.json").path
        let recordBefore = try Data(contentsOf: URL(fileURLWithPath: record))
        XCTAssertThrowsError(try run(fixturePipeline(images: images + "-typo", out: "runs", stages: extractOnly)))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: record)), recordBefore)
        XCTAssertEqual(try readFeatures(cache).bits, expected.bits)
        XCTAssertEqual(try run(yaml).outcomes.map(\.reused), [true])
    }

    func testCacheOfOtherPreprocessingIsStartedAfresh() throws {
        let images = try sampleImages()
        _ = try run(fixturePipeline(images: images, out: "runs", stages: extractOnly))
        let larger = try run(fixturePipeline(images: images, out: "runs", imageSize: 48, stages: extractOnly))
        XCTAssertTrue(larger.log.contains { $0.hasPrefix("extract: ") && $0.contains("was made with")
                                            && $0.hasSuffix("; starting the cache afresh") },
                      "\(larger.log)")
        let cache = try FeatureCacheReader(path: folder.appendingPathComponent("runs/features-fc7.h5").path)
        XCTAssertEqual(cache.count, 21)
        XCTAssertEqual(try Preprocessing(jsonDescription: cache.fingerprint.preprocess).crop, 48)
    }

    /// A setting found wrong only when its stage runs is named as the file spells it.
    func testSettingRefusedWhileRunningNamesTheKey() throws {
        let yaml = fixturePipeline(images: try sampleImages(), out: "runs",
                                   stages: extractOnly + "\n  - stage: train-head\n    train_from: fc6")
        XCTAssertThrowsError(try run(yaml)) { error in
            XCTAssertTrue("\(error)".hasPrefix("pipelines/x.yaml: stage head: train_from fc6: not a fully connected layer above the cut"),
                          "\(error)")
        }
    }

    func testKilledFinetuneContinuesFromItsCheckpointOnlyWithTheSameKey() throws {
        let images = try sampleImages()
        let finetune = "  - stage: full-finetune\n    epochs: 3\n    freeze_through: conv3_3\n    batch_size: 6"
        let yaml = fixturePipeline(images: images, out: "runs", stages: finetune)
        let runs = folder.appendingPathComponent("runs").path
        // Killed once the first epoch's checkpoint is written, while a later epoch runs.
        try killHard(try startRun(yaml), once: { FileManager.default.fileExists(atPath: runs + "/finetune/checkpoint.h5") })
        XCTAssertFalse(FileManager.default.fileExists(atPath: runs + "/.stages/finetune.json"))
        try FileManager.default.copyItem(atPath: runs, toPath: runs + "-other-weights")

        let resumed = try run(yaml)
        XCTAssertTrue(resumed.log.contains("finetune: continuing the interrupted run from \(runs)/finetune/checkpoint.h5"),
                      "\(resumed.log)")
        XCTAssertTrue(resumed.log.contains { $0.contains("resuming after epoch") && $0.contains("of 3") }, "\(resumed.log)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: runs + "/.stages/finetune.started.json"))

        // The same model as one uninterrupted run.
        let reference = try sampleImages(into: "reference")
        _ = try run(fixturePipeline(images: reference, out: "reference-runs", stages: finetune))
        let expected = try StateDictFile.open(path: folder.appendingPathComponent("reference-runs/finetune/model.h5").path)
        let actual = try StateDictFile.open(path: runs + "/finetune/model.h5")
        XCTAssertEqual(actual.entries.map(\.key), expected.entries.map(\.key))
        for entry in expected.entries {
            XCTAssertEqual(try actual.tensor(entry.key), try expected.tensor(entry.key), entry.key)
        }

        // Other weights, same settings: the job alone would continue; the pipeline starts over.
        let otherWeights = try run(fixturePipeline(images: images, out: "runs-other-weights", weights: "random:3", stages: finetune))
        XCTAssertTrue(otherWeights.log.contains(
            "finetune: \(runs)-other-weights/finetune/checkpoint.h5 was left by a run with other settings or inputs; starting over"),
                      "\(otherWeights.log)")
        XCTAssertFalse(otherWeights.log.contains { $0.hasPrefix("resuming") }, "\(otherWeights.log)")
    }

    func testToolRefusesTheFixtureNetwork() {
        XCTAssertThrowsError(try Pipeline(yaml: "images: d\nbackbone: vgg16-narrow16\nstages:\n  - stage: extract\n",
                                          path: "p.yaml")) { error in
            XCTAssertEqual("\(error)", "p.yaml:2: unknown backbone 'vgg16-narrow16' (vgg11, vgg13, vgg16 or vgg19)")
        }
    }

    func testShippedPipelinesAreValid() throws {
        let repository = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        for name in ["demo", "realistic", "slurm"] {
            let pipeline = try Pipeline(contentsOf: repository.appendingPathComponent("pipelines/\(name).yaml").path)
            XCTAssertEqual(pipeline.stages.map(\.kind), [.extract, .trainHead, .fullFinetune, .report], name)
            XCTAssertEqual(pipeline.extractShardCount, name == "slurm" ? 4 : 1, name)
        }
        let views = try Pipeline(contentsOf: repository.appendingPathComponent("pipelines/views.yaml").path)
        XCTAssertEqual(views.stages.map(\.kind), [.extract, .trainHead, .trainHead, .fullFinetune, .report])
        guard case .extract(_, _, let count) = views.stages[0].settings, case .trainHead(let plain) = views.stages[1].settings,
              case .trainHead(let augmented) = views.stages[2].settings else { return XCTFail("\(views.stages)") }
        XCTAssertEqual([count], [4])
        XCTAssertEqual([plain.views, augmented.views], [.evalOnly, .augmented])
    }

    /// `views:` on the extract stage caches augmented views, on a train-head stage picks them or the eval views;
    /// the two heads differ, the report tells them apart, and another count reruns the extraction.
    func testViewsKeysCacheViewsAndChooseThemPerHead() throws {
        let images = try sampleImages()
        func pipeline(views: Int) -> String {
            fixturePipeline(images: images, out: "runs", stages: """
              - stage: extract
                batch_size: 8
                views: \(views)
              - stage: train-head
                name: plain
                views: none
                epochs: 2
              - stage: train-head
                name: augmented
                epochs: 2
              - stage: report
            """)
        }
        let first = try run(pipeline(views: 2))
        XCTAssertEqual(first.outcomes.map(\.reused), [false, false, false, false])
        let root = folder.appendingPathComponent("runs").path
        XCTAssertEqual(try FeatureCacheReader(path: root + "/features-fc7.h5").fingerprint.views, 2)
        let plain = try TrainedModel(contentsOf: root + "/plain/model.h5").stateDict
        let augmented = try TrainedModel(contentsOf: root + "/augmented/model.h5").stateDict
        XCTAssertNotEqual(plain.map(\.tensor.data), augmented.map(\.tensor.data))
        let report = try String(contentsOfFile: root + "/report.md", encoding: .utf8)
        XCTAssertTrue(report.contains("2 augmented views"), report)
        XCTAssertEqual(try run(pipeline(views: 3)).outcomes.map(\.reused), [false, false, false, false])

        XCTAssertThrowsError(try parse(pipeline(views: -1))) { XCTAssertTrue("\($0)".contains("views"), "\($0)") }
        XCTAssertThrowsError(try parse(pipeline(views: ExtractionJob.mostViews + 1))) {
            XCTAssertTrue("\($0)".contains("views must be between 0 and 1000"), "\($0)")
        }
    }
}
