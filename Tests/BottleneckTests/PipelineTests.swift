import Bottleneck
import Foundation
import XCTest

/// Pipeline files: errors that point at the line, and the demo pipeline at fixture size (the narrow
/// VGG16 at 32 px on a subset of data/shapes) run end to end, reused when nothing changed, rerun by --force
/// and by a changed input.
final class PipelineTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bottleneck-pipeline-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    private func parse(_ yaml: String) throws -> Pipeline {
        try Pipeline(yaml: yaml, path: "pipelines/x.yaml")
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
        assertRefused(valid + "\n    optimizer: adm", "pipelines/x.yaml:6: 'optimizer' must be one of sgd, adam, adamw, got 'adm' (did you mean 'adam'?)")
        assertRefused(valid + "\n    epochs: 4", "pipelines/x.yaml:6: 'epochs' is given twice (first on line 5)")
    }

    func testBadValuesAndOrderAreRefusedWithTheLine() {
        assertRefused(valid.replacingOccurrences(of: "epochs: 3", with: "epochs: many"),
                      "pipelines/x.yaml:5: 'epochs' must be a whole number, got 'many'")
        assertRefused(valid.replacingOccurrences(of: "epochs: 3", with: "epochs: 0"), "pipelines/x.yaml:4: stage head: epochs must be at least 1")
        assertRefused("images: d\nlayer: fc9\nstages:\n  - stage: extract\n", "pipelines/x.yaml:2:")
        assertRefused("images: d\nstages:\n  - stage: train-head\n", "pipelines/x.yaml:3: train-head trains on the feature cache")
        assertRefused(valid + "\n  - stage: full-finetune\n    init_head: hed\n",
                      "pipelines/x.yaml:7: init_head names a train-head stage above this one (head), not 'hed'")
        assertRefused(valid + "\n  - stage: train-head\n", "pipelines/x.yaml:6: two stages are named 'head'")
        assertRefused(valid + "\n  - stage: full-finetune\n    freeze_through: conv9_9\n", "pipelines/x.yaml:7: freeze_through:")
        assertRefused("images: d\nstages:\n  - stage: extract\n  - stage: report\n", "pipelines/x.yaml:4: a report compares training runs")
        XCTAssertThrowsError(try PipelineRunner(pipeline: try parse(valid), force: ["haed"])) { error in
            XCTAssertTrue("\(error)".contains("--force haed: pipelines/x.yaml has no such stage (its stages: extract, head) (did you mean 'head'?)"),
                          "\(error)")
        }
    }

    /// A copy of part of data/shapes, so that the test can add an image.
    private func sampleImages() throws -> String {
        let manager = FileManager.default
        let source = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("data/shapes")
        let target = folder.appendingPathComponent("shapes")
        for (split, count) in [("train", 5), ("val", 2)] {
            for name in ["checkerboard", "discs", "stripes"] {
                let into = target.appendingPathComponent("\(split)/\(name)")
                try manager.createDirectory(at: into, withIntermediateDirectories: true)
                let from = source.appendingPathComponent("\(split)/\(name)")
                for file in try manager.contentsOfDirectory(atPath: from.path).sorted().prefix(count) {
                    try manager.copyItem(at: from.appendingPathComponent(file), to: into.appendingPathComponent(file))
                }
            }
        }
        return target.path
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
            let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(root)/\(run)/summary.json"))) as! [String: Any]
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
        XCTAssertEqual(try FeatureCacheReader(path: root + "/features-fc7.h5").count, 22)
    }

    func testShippedPipelinesAreValid() throws {
        let repository = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        for name in ["demo", "realistic"] {
            let pipeline = try Pipeline(contentsOf: repository.appendingPathComponent("pipelines/\(name).yaml").path)
            XCTAssertEqual(pipeline.stages.map(\.kind), [.extract, .trainHead, .fullFinetune, .report], name)
        }
    }
}
