@testable import Bottleneck
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest
import BottleneckKernels

/// The report of two hand-written run directories (a head and a fine-tuning run with known numbers): its
/// HTML and Markdown are parsed back and must hold the figures of the runs' summary.json and metrics.csv.
final class ReportTests: XCTestCase {
    var folder: URL!
    static let classes = ["checkerboard", "discs", "stripes"]
    static let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 3)

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bottleneck-report-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    /// A finished run directory as train-head or full-finetune leaves it.
    /// A head's cache is `features-fc7.h5` in the test's folder: a real one when a test extracted it first
    /// (`extractCache()`), else 12,345 bytes of zeros that record no extraction time.
    private func writeRun(_ name: String, mode: TrainedModel.Mode, accuracies: [Double], epochSeconds: Double,
                          bestAccuracy: Double, bestLoss: Double = 0.4321, confusion: [[Int]],
                          weights: WeightsIdentity = .random(seed: 0),
                          validation: TrainingSplit.Record? = sampleValidation, cacheViews: Int = 0,
                          viewsSetting: String = "augmented") throws -> String {
        let directory = folder.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let cachePath = folder.appendingPathComponent("features-fc7.h5").path
        if !FileManager.default.fileExists(atPath: cachePath) { try Data(count: 12_345).write(to: URL(fileURLWithPath: cachePath)) }
        let config: [String: Any] = mode == .head
            ? ["command": "train-head", "head": ["cut_layer": "fc7"], "settings": ["epochs": accuracies.count, "views": viewsSetting],
               "cache": ["path": cachePath, "fingerprint": [
                   "schema": "bottleneck-cache/1", "backbone": Self.config.name, "layer": "fc7", "layer_path": "classifier.4",
                   "activation_shape": [64], "weights_sha256": "x", "weights_source": "random", "views": cacheViews,
                   "preprocess": Preprocessing(resize: 37, crop: 32).jsonDescription, "image_root": "/images", "tool_version": "0"]]]
            : ["command": "full-finetune", "network": ["frozen_through": "conv3_3"], "settings": ["image_size": 32]]
        try JSONSerialization.data(withJSONObject: config).write(to: directory.appendingPathComponent("config.json"))
        var metrics = "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
        for (index, accuracy) in accuracies.enumerated() {
            metrics += "\(index + 1),\(1.5 - accuracy),\(accuracy),\(1.2 - accuracy),\(accuracy),0.001,\(epochSeconds)\n"
        }
        try metrics.write(to: directory.appendingPathComponent("metrics.csv"), atomically: true, encoding: .utf8)
        var summary: [String: Any] = [
            "best_epoch": accuracies.firstIndex(of: accuracies.max()!)! + 1, "best_val_accuracy": bestAccuracy, "best_val_loss": bestLoss,
            "chance_accuracy": 1.0 / 3, "classes": Self.classes, "confusion_matrix": confusion, "wall_seconds": epochSeconds * 3 + 0.5,
            "epochs_run": accuracies.count, "model": directory.appendingPathComponent("model.h5").path,
            mode == .head ? "samples_per_second" : "train_images_per_second": mode == .head ? 9876.0 : 3.21,
            "per_class": Self.classes.enumerated().map { index, name in
                ["name": name, "precision": 0.5 + Double(index) / 10, "recall": 0.25, "f1": 0.3, "support": 8] as [String: Any]
            },
        ]
        if let validation {
            let encoder = JSONEncoder()
            encoder.keyEncodingStrategy = .convertToSnakeCase
            summary["split"] = try JSONSerialization.jsonObject(with: try encoder.encode(validation))
        }
        try JSONSerialization.data(withJSONObject: summary).write(to: directory.appendingPathComponent("summary.json"))
        let trained = mode == .head ? ["classifier.6"] : ["features.17", "classifier.6"]
        let stateDict: [(key: String, tensor: Tensor)] = [
            ("features.17.weight", Tensor(zeros: [32, 16, 3, 3])), ("features.17.bias", Tensor(zeros: [32])),
            ("classifier.6.weight", Tensor(zeros: [3, 64])), ("classifier.6.bias", Tensor(zeros: [3])),
        ]
        try TrainedModel(mode: mode, config: Self.config, classes: Self.classes, cut: try CutPoint("fc7", in: Self.config), cutName: "fc7",
                         weights: weights, preprocessing: Preprocessing(resize: 37, crop: 32), trainableLayers: trained,
                         dropout: 0.5, split: nil, stateDict: mode == .head ? Array(stateDict.suffix(2)) : stateDict)
            .save(to: directory.appendingPathComponent("model.h5").path)
        return directory.path
    }

    /// The 24 val/ images of the sample data, as both runs record them.
    private static let sampleValidation = TrainingSplit.Record(
        rule: .init(source: .folder, seed: 0, validationFraction: 0.2),
        validationPaths: classes.flatMap { name in (20..<28).map { "val/\(name)/\(name)_\($0).jpg" } })

    private func twoRuns(finetuneValidation: TrainingSplit.Record? = sampleValidation, finetuneAccuracy: Double = 0.625,
                         weights: WeightsIdentity = .random(seed: 0), allowDifferentValidation: Bool = false) throws -> Report {
        let head = try writeRun("head", mode: .head, accuracies: [0.5, 0.75, 0.7083], epochSeconds: 0.012, bestAccuracy: 0.75,
                                confusion: [[8, 0, 0], [2, 5, 1], [0, 3, 5]], weights: weights)
        let finetune = try writeRun("finetune", mode: .finetune, accuracies: [0.4583, finetuneAccuracy], epochSeconds: 41.5,
                                    bestAccuracy: finetuneAccuracy, bestLoss: 0.5, confusion: [[6, 2, 0], [1, 4, 3], [0, 3, 5]],
                                    weights: weights, validation: finetuneValidation)
        return try Report(title: "head <vs> finetune", runs: [try RunRecord(directory: head), try RunRecord(directory: finetune)],
                          allowDifferentValidation: allowDifferentValidation)
    }

    /// A head trained on a cache's augmented views says so where it says what was frozen; one trained with
    /// `--views none` on the same cache does not.
    func testHeadsOnAugmentedViewsAreLabelled() throws {
        let confusion = [[8, 0, 0], [0, 8, 0], [0, 0, 8]]
        let augmented = try writeRun("views", mode: .head, accuracies: [0.5], epochSeconds: 1, bestAccuracy: 0.5, confusion: confusion,
                                     cacheViews: 4)
        let evalOnly = try writeRun("eval-views", mode: .head, accuracies: [0.5], epochSeconds: 1, bestAccuracy: 0.5, confusion: confusion,
                                    cacheViews: 4, viewsSetting: "none")
        XCTAssertEqual(try RunRecord(directory: augmented).frozen, "through fc7 (cached, 4 augmented views)")
        XCTAssertEqual(try RunRecord(directory: evalOnly).frozen, "through fc7 (cached)")
    }

    func testRunRecordsReadTheRunDirectories() throws {
        let report = try twoRuns()
        let head = report.runs[0], finetune = report.runs[1]
        XCTAssertEqual(head.mode, .head)
        XCTAssertEqual(head.trainableParameters, 3 * 64 + 3)
        XCTAssertEqual(head.frozen, "through fc7 (cached)")
        XCTAssertEqual(head.cache?.bytes, 12_345)
        XCTAssertEqual(head.imageSize, 32)
        XCTAssertEqual(head.epochs.map(\.validationAccuracy), [0.5, 0.75, 0.7083])
        XCTAssertEqual(head.elapsedSeconds.last!, 0.036, accuracy: 1e-9)
        XCTAssertEqual(finetune.mode, .finetune)
        XCTAssertEqual(finetune.trainableParameters, 32 * 16 * 9 + 32 + 3 * 64 + 3)
        XCTAssertEqual(finetune.frozen, "through conv3_3")
        XCTAssertNil(finetune.cache)
        XCTAssertEqual(finetune.samplesPerSecond, 3.21)
        XCTAssertEqual(finetune.validation, Self.sampleValidation)
    }

    /// Accuracies on different images do not compare: refused, naming each run's validation set, unless
    /// asked for, and then the report says so first.
    func testRunsValidatedOnDifferentImagesAreRefusedOrFlagged() throws {
        let sameCount = TrainingSplit.Record(rule: .init(source: .hashed, seed: 1, validationFraction: 0.2),
                                             validationPaths: (0..<24).map { "discs/\($0).jpg" })
        XCTAssertThrowsError(try twoRuns(finetuneValidation: sameCount)) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("head: 24 rows (the folder's train/ and val/; paths sha256 "), message)
            XCTAssertTrue(message.contains("finetune: 24 rows (hashed split, seed 1, fraction 0.2; paths sha256 "), message)
            XCTAssertTrue(message.contains("--allow-different-validation"), message)
        }
        XCTAssertThrowsError(try twoRuns(finetuneValidation: nil)) { error in
            XCTAssertTrue("\(error)".contains("finetune: no record of its validation images"), "\(error)")
        }
        let flagged = try twoRuns(finetuneValidation: sameCount, allowDifferentValidation: true)
        XCTAssertTrue(flagged.html.contains("<p class=\"warning\">NOT COMPARABLE: the runs' validation images differ"), flagged.html)
        XCTAssertTrue(flagged.markdown.contains("\n> **NOT COMPARABLE: "), flagged.markdown)
        XCTAssertTrue(flagged.markdown.hasPrefix("# head <vs> finetune\n\n**No winner: the runs did not validate on the same images, "
                                                 + "so their accuracies do not compare.**\n\n> **NOT COMPARABLE: "), flagged.markdown)
        XCTAssertFalse(try twoRuns().markdown.contains("NOT COMPARABLE"))
        XCTAssertTrue(try twoRuns().markdown.contains("All runs validated on the same 24 images (the folder's train/ and val/)."))
    }

    /// The cells of every row of the HTML table with `class`, tags stripped.
    private func tableRows(_ html: String, class name: String) -> [[String]] {
        guard let start = html.range(of: "<table class=\"\(name)\">"),
              let end = html.range(of: "</table>", range: start.upperBound..<html.endIndex) else { return [] }
        let table = String(html[start.upperBound..<end.lowerBound])
        return table.components(separatedBy: "<tr>").dropFirst().map { row in
            row.components(separatedBy: "<td").dropFirst().map { cell in
                String(cell.drop { $0 != ">" }.dropFirst()).components(separatedBy: "</td>")[0]
                    .replacingOccurrences(of: "<[^>]+>", with: "", options: .regularExpression)
                    .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }.filter { !$0.isEmpty }
    }

    func testHTMLHoldsTheRunsNumbersAndIsSelfContained() throws {
        let report = try twoRuns()
        let html = report.html
        let rows = tableRows(html, class: "runs")
        XCTAssertEqual(rows.count, 2)
        XCTAssertEqual(rows[0], ["head", "train-head", "random weights", "through fc7 (cached)", "0.7500", "0.4321",
                                 "unknown (extraction not recorded)", "0.54 s", "3 (2)", "195", "9,876 samples/s", "12.3 kB"])
        XCTAssertEqual(rows[1], ["finetune", "full-finetune", "random weights", "through conv3_3", "0.6250", "0.5000", "2 min 05 s",
                                 "2 min 05 s", "2 (2)", "4,835", "3.21 img/s", "—"])
        XCTAssertTrue(html.contains("head &lt;vs&gt; finetune"))

        // Nothing is fetched: no scripts, stylesheets, images or fonts from anywhere.
        for outside in ["<script", "<link", "<img", "src=", "url(", "https:"] { XCTAssertFalse(html.contains(outside), outside) }

        // Four learning curves and two confusion matrices, each well-formed SVG.
        let svgs = html.components(separatedBy: "<svg").dropFirst().map { "<svg" + $0.components(separatedBy: "</svg>")[0] + "</svg>" }
        XCTAssertEqual(svgs.filter { $0.contains("class=\"chart\"") }.count, 4)
        let matrices = svgs.filter { $0.contains("class=\"matrix\"") }
        XCTAssertEqual(matrices.count, 2)
        for svg in svgs {
            let parser = XMLParser(data: Data(svg.utf8))
            XCTAssertTrue(parser.parse(), "\(parser.parserError.map { "\($0)" } ?? ""): \(svg.prefix(200))")
        }
        // The head's matrix holds its counts, row by row.
        let counts = matrices[0].components(separatedBy: "class=\"count").dropFirst().map {
            $0.drop { $0 != ">" }.dropFirst().prefix { $0 != "<" }
        }
        XCTAssertEqual(counts.map { Int($0)! }, [8, 0, 0, 2, 5, 1, 0, 3, 5])
        // Per-class precision of the head's summary.
        let classes = tableRows(html, class: "classes")
        XCTAssertEqual(classes[0], ["checkerboard", "0.500", "0.250", "0.300", "8"])
        XCTAssertEqual(classes[2], ["stripes", "0.700", "0.250", "0.300", "8"])
    }

    func testMarkdownHoldsTheSameNumbers() throws {
        let markdown = try twoRuns().markdown
        let tableLines = markdown.split(separator: "\n").filter { $0.hasPrefix("|") && !$0.hasPrefix("| ---") }
        let cells = tableLines.map { $0.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) } }
        XCTAssertEqual(cells[0].first, "run")
        XCTAssertEqual(cells[1], ["head", "train-head", "random weights", "through fc7 (cached)", "0.7500", "0.4321",
                                  "unknown (extraction not recorded)", "0.54 s", "3 (2)", "195", "9,876 samples/s", "12.3 kB"])
        XCTAssertEqual(cells[2][4], "0.6250")
        XCTAssertTrue(cells.contains(["discs", "2", "5", "1"]), "\(cells)")
        XCTAssertTrue(cells.contains(["2", "0.7500 (loss 0.4500, 24.0 ms)", "0.6250 (loss 0.5750, 1 min 23 s)"]), "\(cells)")
    }

    /// A real cache at `features-fc7.h5`, extracted (at the input layer: no network to load) from fixture images
    /// by `ExtractionJob`, which records the seconds it took in the file; returns them.
    private func extractCache(_ files: [String] = ["rgb_97x131.png", "gray_64x64.jpg", "rgba_64x64.png", "l_131x97.png"]) throws -> Double {
        for (index, file) in files.enumerated() {
            let target = folder.appendingPathComponent("images/\(Self.classes[index % 3])")
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            if !FileManager.default.fileExists(atPath: target.appendingPathComponent(file).path) {
                try FileManager.default.copyItem(atPath: Fixtures.path("images/" + file), toPath: target.appendingPathComponent(file).path)
            }
        }
        var job = ExtractionJob(imagesRoot: folder.appendingPathComponent("images").path,
                                outputPath: folder.appendingPathComponent("features-fc7.h5").path, weights: .random(seed: 0))
        job.layer = ExtractionJob.inputLayer
        job.preprocessing = Preprocessing(resize: 37, crop: 32)
        _ = try job.run { _ in }
        return try XCTUnwrap(try FeatureCacheReader(path: job.outputPath).extractionSeconds, "extract records its seconds in the cache")
    }

    /// A rerun that extracts more rows adds its seconds to those the cache records for the rows it reuses; one that
    /// finds nothing new leaves the cache, and its cost, as they were.
    func testExtractionSecondsAddUpOverReruns() throws {
        let first = try extractCache(["rgb_97x131.png", "gray_64x64.jpg"])
        let second = try extractCache(["rgb_97x131.png", "gray_64x64.jpg", "rgba_64x64.png"])
        XCTAssertGreaterThan(second, first)
        XCTAssertEqual(try extractCache(["rgb_97x131.png", "gray_64x64.jpg", "rgba_64x64.png"]), second)
    }

    /// The first lines answer freeze or fine-tune: the winner, its margin in accuracy points and loss, and what each
    /// approach cost from images to model, a head's including the extraction its cache records.
    func testHeadlineNamesTheWinnerItsMarginAndTheCostWithExtraction() throws {
        let extraction = try extractCache()
        XCTAssertGreaterThan(extraction, 0)
        let report = try twoRuns()
        XCTAssertEqual(report.runs[0].totalSeconds!, 0.536 + extraction, accuracy: 1e-9)
        let answer = "Freeze wins: head (train-head) beats finetune (full-finetune) by 12.5 accuracy points "
            + "(0.7500 vs 0.6250 validation accuracy; validation loss 0.4321 vs 0.5000)."
        let cost = "Cost from images to model: head \(Report.duration(0.536 + extraction)) (0.54 s training + "
            + "\(Report.duration(extraction)) extracting its cache); finetune 2 min 05 s (finetune took "
            + String(format: 125 / (0.536 + extraction) < 10 ? "%.1f" : "%.0f", 125 / (0.536 + extraction)) + "× as long as head)."
        let html = report.html, markdown = report.markdown
        let header = String(html[html.range(of: "<header>")!.lowerBound..<html.range(of: "</header>")!.lowerBound])
        XCTAssertTrue(header.contains("<p class=\"answer\"><strong>\(answer)</strong></p>"), header)
        XCTAssertTrue(header.contains("<p>\(cost)</p>"), header)
        XCTAssertTrue(markdown.hasPrefix("# head <vs> finetune\n\n**\(answer)**\n\n\(cost)\n\n"), markdown)

        let finetuneWins = try twoRuns(finetuneAccuracy: 0.7917).markdown
        XCTAssertTrue(finetuneWins.contains("**Fine-tune wins: finetune (full-finetune) beats head (train-head) by 4.2 accuracy points "
                                            + "(0.7917 vs 0.7500 validation accuracy; validation loss 0.5000 vs 0.4321).**"), finetuneWins)
    }

    /// A cache that does not record its extraction (made before caches did) leaves the head's total unknown, said plainly.
    func testAHeadWhoseCacheDoesNotRecordExtractionHasAnUnknownCost() throws {
        let report = try twoRuns()
        XCTAssertNil(report.runs[0].totalSeconds)
        XCTAssertTrue(report.markdown.contains("Cost from images to model: head 0.54 s training + extraction time unknown (its cache "
                                               + "features-fc7.h5 does not record it: made before caches did, or merged from shards); "
                                               + "finetune 2 min 05 s.\n"), report.markdown)
    }

    func testEqualAccuraciesAreATieAndASingleRunIsNoContest() throws {
        let tie = try twoRuns(finetuneAccuracy: 0.75).markdown
        XCTAssertTrue(tie.contains("**Tie between freeze and fine-tune: head (train-head) and finetune (full-finetune) both reach "
                                   + "0.7500 validation accuracy (validation loss 0.4321 vs 0.5000).**"), tie)
        XCTAssertFalse(tie.contains("wins"), tie)

        let head = try writeRun("head", mode: .head, accuracies: [0.5, 0.75], epochSeconds: 0.012, bestAccuracy: 0.75,
                                confusion: [[8, 0, 0], [2, 5, 1], [0, 3, 5]])
        let single = try Report(title: "one", runs: [try RunRecord(directory: head)])
        XCTAssertTrue(single.markdown.hasPrefix("# one\n\n**One run: head (train-head) reaches 0.7500 validation accuracy, loss 0.4321 "
                                                + "(chance 0.333). Nothing to compare it with: report it with a full-finetune run "
                                                + "validated on the same images to answer freeze or fine-tune.**"), single.markdown)
        XCTAssertTrue(single.html.contains("RANDOM WEIGHTS: the run starts from random weights."))
    }

    /// Runs of one approach name the best, and say they do not answer freeze or fine-tune.
    func testRunsOfOneApproachNameTheBestWithoutAnsweringTheQuestion() throws {
        let runs = try [("head", 0.75), ("head-b", 0.5)].map { name, accuracy in
            try RunRecord(directory: try writeRun(name, mode: .head, accuracies: [accuracy], epochSeconds: 0.012, bestAccuracy: accuracy,
                                                  confusion: [[8, 0, 0], [2, 5, 1], [0, 3, 5]]))
        }
        let markdown = try Report(title: "heads", runs: runs.reversed()).markdown
        XCTAssertTrue(markdown.hasPrefix("# heads\n\n**Best run: head (train-head) beats head-b (train-head) by 25.0 accuracy points "
                                         + "(0.7500 vs 0.5000 validation accuracy; validation loss 0.4321 vs 0.4321). Every run trains a "
                                         + "head on cached features, so this does not answer freeze or fine-tune: add a full-finetune run "
                                         + "on the same images.**"), markdown)
    }

    /// Random weights are on every run's badge and in the headline, with the way to the real ones; pretrained
    /// weights are named by file and sha256 prefix, and the headline does not warn.
    func testRandomWeightsAreBadgedAndWarnedOfAndPretrainedOnesNamed() throws {
        let random = try twoRuns()
        let warning = "RANDOM WEIGHTS: all runs start from random weights. A comparison on random weights is not "
            + "meaningful for ImageNet transfer; get the pretrained torchvision weights with 'bottleneck weights download' and train again."
        XCTAssertTrue(random.html.contains("<p class=\"warning\">\(warning)</p></section>"), random.html)
        XCTAssertTrue(random.markdown.contains("\n> **\(warning)**\n"), random.markdown)
        XCTAssertEqual(random.html.components(separatedBy: "<span class=\"badge weights random\">random weights</span>").count - 1,
                       4, "a badge in each run's table row and heading")

        try FileManager.default.removeItem(at: folder.appendingPathComponent("head"))
        try FileManager.default.removeItem(at: folder.appendingPathComponent("finetune"))
        let sha = "397923af" + String(repeating: "0", count: 56)
        let pretrained = try twoRuns(weights: WeightsIdentity(source: "/hub/checkpoints/vgg16-397923af.pth", fingerprint: sha))
        XCTAssertTrue(pretrained.html.contains("<span class=\"badge weights\">vgg16-397923af.pth · sha256 397923af</span>"))
        XCTAssertTrue(pretrained.markdown.contains("\nWeights: all runs start from vgg16-397923af.pth · sha256 397923af.\n"))
        XCTAssertFalse(pretrained.html.contains("RANDOM WEIGHTS"), "no random-weights warning")
        XCTAssertFalse(pretrained.html.contains("class=\"badge weights random\""), "no random-weights badge")
    }

    /// Every run its own hue, far apart on the colour wheel (the two runs of a mode were two shades of one hue);
    /// the mode is the line's dash: solid train-head, dashed full-finetune.
    func testEveryRunHasItsOwnColourAndTheModeIsTheDash() throws {
        var runs: [RunRecord] = []
        for (name, mode) in [("head", TrainedModel.Mode.head), ("finetune", .finetune), ("head-b", .head), ("finetune-b", .finetune)] {
            let run = try writeRun(name, mode: mode, accuracies: [0.5, 0.75], epochSeconds: 1, bestAccuracy: 0.75,
                                   confusion: [[8, 0, 0], [2, 5, 1], [0, 3, 5]])
            runs.append(try RunRecord(directory: run))
        }
        let html = try Report(title: "four", runs: runs).html
        let table = String(html[html.range(of: "<table class=\"runs\">")!.lowerBound...])
        let colours = table.components(separatedBy: "style=\"border-color:#").dropFirst().prefix(4).map { String($0.prefix(6)) }
        let hues = colours.map { hex -> Double in
            let value = Int(hex, radix: 16)!
            let (red, green, blue) = (Double(value >> 16) / 255, Double(value >> 8 & 255) / 255, Double(value & 255) / 255)
            return atan2(sqrt(3) * (green - blue), 2 * red - green - blue) * 180 / .pi
        }
        for first in hues.indices {
            for second in hues.indices where second > first {
                let apart = abs(hues[first] - hues[second]).truncatingRemainder(dividingBy: 360)
                XCTAssertGreaterThan(min(apart, 360 - apart), 30, "\(colours[first]) and \(colours[second]) look alike")
            }
        }
        let firstChart = html.components(separatedBy: "class=\"chart\"")[1].components(separatedBy: "</svg>")[0]
        let lines = firstChart.components(separatedBy: "<polyline").dropFirst()
        XCTAssertEqual(lines.map { $0.contains("stroke-dasharray") }, [false, true, false, true])
        XCTAssertEqual(lines.map { String($0.components(separatedBy: "stroke=\"#")[1].prefix(6)) }, colours)
    }

    /// metrics.csv is read by its header's names: columns in another order, or one more, read the same epochs.
    func testMetricsAreReadByColumnName() throws {
        let run = try writeRun("head", mode: .head, accuracies: [0.5, 0.75], epochSeconds: 0.5, bestAccuracy: 0.75,
                               confusion: [[8, 0, 0], [2, 5, 1], [0, 3, 5]])
        let asWritten = try RunRecord(directory: run).epochs
        try ("note,seconds,lr,val_acc,val_loss,train_acc,train_loss,epoch\nx,0.5,0.001,0.5,0.7,0.5,1.0,1\n"
             + "y,0.5,0.001,0.75,0.44999999999999996,0.75,0.75,2\n")
            .write(toFile: run + "/metrics.csv", atomically: true, encoding: .utf8)
        let reordered = try RunRecord(directory: run)
        XCTAssertEqual(reordered.epochs, asWritten)
        XCTAssertEqual(reordered.elapsedSeconds, [0.5, 1.0])
        XCTAssertNil(reordered.epochs[0].trainSeconds, "metrics.csv does not keep the steps' seconds")
    }

    func testAFolderWithoutSummaryIsRefused() throws {
        XCTAssertThrowsError(try RunRecord(directory: folder.path)) { error in
            XCTAssertTrue("\(error)".contains("no summary.json"), "\(error)")
        }
    }
}
