import Foundation
import BottleneckKernels

/// A report's file format: one self-contained HTML page, or Markdown.
package enum ReportFormat: String, CaseIterable, Sendable {
    case html, md
}

/// `bottleneck report`: train-head and full-finetune runs side by side, as one self-contained HTML file
/// (inline CSS and SVG, nothing fetched) or as Markdown for terminals and CI logs.
package struct Report: Sendable {
    package var title: String
    package var runs: [RunRecord]
    /// Set when runs validated on different images were compared anyway: the report says so at the top.
    private(set) var validationMismatch: String?

    /// Refuses runs that were not validated on the same images, whose accuracies would not compare, unless
    /// `allowDifferentValidation`.
    package init(title: String, runs: [RunRecord], allowDifferentValidation: Bool = false) throws {
        self.title = title
        self.runs = runs
        if let mismatch = Self.validationMismatch(runs) {
            guard allowDifferentValidation else {
                throw ReportError("\(mismatch); train them with the same --val-fraction and --split-seed on the same images, "
                                    + "or compare them anyway with 'bottleneck report --allow-different-validation'")
            }
            validationMismatch = mismatch
        }
    }

    /// What differs between the runs' validation sets; nil when every run recorded scoring the same images.
    static func validationMismatch(_ runs: [RunRecord]) -> String? {
        let records = runs.map(\.validation)
        let sets = Set(records.map { $0.map { "\($0.validationRows) \($0.validationPathsSha256)" } })
        guard sets.count > 1 || (runs.count > 1 && sets.contains(nil)) else { return nil }
        let each = zip(runs, records).map { run, record in
            "\(run.name): \(record?.description ?? "no record of its validation images (made before runs recorded them)")"
        }
        return "the runs' validation images differ or are not recorded, so their accuracies do not compare: "
            + each.joined(separator: ", ")
    }

    /// "All runs validated on the same 24 images (the folder's train/ and val/)."
    private var validationNote: String {
        if let validationMismatch { return "NOT COMPARABLE: \(validationMismatch)." }
        guard runs.count > 1, let record = runs.first?.validation else { return "" }
        return "All runs validated on the same \(record.validationRows) images (\(record.rule.description))."
    }

    package func write(format: ReportFormat, to path: String) throws {
        let text = format == .html ? html : markdown
        do {
            let folder = (path as NSString).deletingLastPathComponent
            if !folder.isEmpty { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }
            try DurableFiles.writeAtomically(Array(text.utf8), to: path)
        } catch let error as FileAccessError {
            throw ReportError("cannot write \(path): \(error.reason)")
        } catch {
            throw ReportError("cannot write \(path): \(error)")
        }
    }

    // MARK: - Figures, formatted once for both formats

    /// The question's columns first (accuracy, loss, cost), so a narrow screen shows them before the details.
    private struct Row {
        var cells: [String]
        static let header = ["run", "mode", "weights", "frozen", "best val accuracy", "best val loss", "total time",
                             "training time", "epochs (best)", "trainable parameters", "throughput", "cache"]
        static let weights = 2
        static let firstNumber = 4
        static let accuracy = 4
    }

    private func row(_ run: RunRecord) -> Row {
        let throughput = run.mode == .head ? Self.grouped(Int(run.samplesPerSecond.rounded())) + " samples/s"
            : String(format: "%.2f img/s", run.samplesPerSecond)
        let cache = run.cache.map { $0.bytes?.formattedBytes ?? "missing" } ?? "—"
        return Row(cells: [run.name, Self.modeName(run.mode), Verdict.weightsLabel(run), run.frozen,
                           String(format: "%.4f", run.bestValidationAccuracy), String(format: "%.4f", run.bestValidationLoss),
                           run.totalSeconds.map(Self.duration) ?? "unknown (extraction not recorded)", Self.duration(run.wallSeconds),
                           "\(run.epochs.count) (\(run.bestEpoch))", Self.grouped(run.trainableParameters), throughput, cache])
    }

    static func modeName(_ mode: RunRecord.Mode) -> String { mode == .head ? "train-head" : "full-finetune" }

    /// 1,234,567
    static func grouped(_ value: Int) -> String {
        let digits = String(value)
        return digits.enumerated().map { index, digit in
            (index > 0 && (digits.count - index) % 3 == 0 ? "," : "") + String(digit)
        }.joined()
    }

    /// "12.0 ms", "0.54 s", "45.9 s", "2 min 05 s": precise for a head's milliseconds, readable for a fine-tuning's minutes.
    package static func duration(_ seconds: Double) -> String {
        switch seconds {
        case ..<0.1: String(format: "%.1f ms", seconds * 1000)
        case ..<10: String(format: "%.2f s", seconds)
        case ..<60: String(format: "%.1f s", seconds)
        default: String(format: "%d min %02d s", Int(seconds) / 60, Int(seconds) % 60)
        }
    }

    private static func figure(_ value: Double?) -> String { value.map { String(format: "%.3f", $0) } ?? "—" }

    private var verdict: Verdict { Verdict(runs: runs, comparable: validationMismatch == nil) }

    // MARK: - Colors: one hue per run, the mode shown by the line (solid head, dashed fine-tuning)

    /// Okabe and Ito's colour-blind-safe palette, in an order that keeps neighbours apart; its yellow, faint on
    /// white, comes last. A ninth run reuses the first hue.
    static let palette = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
                          (0, 0, 0), (240, 228, 66)]

    private func color(of run: RunRecord) -> (red: Int, green: Int, blue: Int) {
        let index = runs.firstIndex { $0.directory == run.directory } ?? 0
        let (red, green, blue) = Self.palette[index % Self.palette.count]
        return (red, green, blue)
    }

    func cssColor(of run: RunRecord) -> String {
        let (red, green, blue) = color(of: run)
        return String(format: "#%02x%02x%02x", red, green, blue)
    }

    // MARK: - HTML

    /// A short line in the run's colour, solid for a head, dashed for fine-tuning: the run's mark in the curves.
    private func swatch(_ run: RunRecord) -> String {
        "<span class=\"swatch \(run.mode.rawValue)\" style=\"border-color:\(cssColor(of: run))\"></span>"
    }

    private func badges(_ run: RunRecord) -> String {
        "<span class=\"badge \(run.mode.rawValue)\">\(Self.modeName(run.mode))</span> "
            + "<span class=\"badge weights\(run.usesRandomWeights ? " random" : "")\">\(HTML.escape(Verdict.weightsLabel(run)))</span>"
    }

    package var html: String {
        let verdict = verdict
        var body = "<header><h1>\(HTML.escape(title))</h1>\n<section class=\"verdict\">"
            + "<p class=\"answer\"><strong>\(HTML.escape(verdict.answer))</strong></p>\n"
        if validationMismatch != nil { body += "<p class=\"warning\">\(HTML.escape(validationNote))</p>\n" }
        body += "<p>\(HTML.escape(verdict.cost))</p>\n"
            + "<p class=\"\(verdict.randomWeights ? "warning" : "note")\">\(HTML.escape(verdict.weights))</p></section>\n"
            + "<p class=\"meta\">\(runs.count) run\(runs.count == 1 ? "" : "s") · "
            + "generated \(ISO8601DateFormatter().string(from: Date())) by bottleneck \(BottleneckVersion.current)</p></header>\n"

        body += "<section><h2>Runs</h2>\n<div class=\"table-wrap\"><table class=\"runs\"><thead><tr>"
            + Row.header.map { "<th>\(HTML.escape($0))</th>" }.joined() + "</tr></thead><tbody>\n"
        let bestAccuracy = runs.map(\.bestValidationAccuracy).max()
        for run in runs {
            var cells = row(run).cells.map(HTML.escape)
            cells[0] = swatch(run) + cells[0]
            cells[1] = "<span class=\"badge \(run.mode.rawValue)\">\(cells[1])</span>"
            cells[Row.weights] = "<span class=\"badge weights\(run.usesRandomWeights ? " random" : "")\">\(cells[Row.weights])</span>"
            if run.bestValidationAccuracy == bestAccuracy && runs.count > 1 && validationMismatch == nil {
                cells[Row.accuracy] = "<strong>\(cells[Row.accuracy])</strong>"
            }
            // data-label names the cell where a narrow screen shows each run as a card instead of a table row.
            body += "<tr>" + cells.enumerated().map { index, cell in
                "<td data-label=\"\(HTML.escape(Row.header[index]))\"\(index >= Row.firstNumber ? " class=\"number\"" : "")>\(cell)</td>"
            }.joined() + "</tr>\n"
        }
        body += "</tbody></table></div>\n"
        if validationMismatch == nil && !validationNote.isEmpty {
            body += "<p class=\"note\">\(HTML.escape(validationNote))</p>\n"
        }
        if let chance = runs.first?.chanceAccuracy {
            body += "<p class=\"note\">Chance accuracy \(String(format: "%.3f", chance)) (\(runs.first!.classes.count) classes). "
                + "Total time is images to model: a head's training plus the extraction that made its cache (recorded in the "
                + "cache), a fine-tuning's training. Throughput counts training samples through optimizer steps.</p>\n"
        }
        body += "</section>\n"

        let legend = "<ul class=\"legend\">" + runs.map { run in
            "<li>\(swatch(run))\(HTML.escape(run.name)) <span class=\"mode\">\(Self.modeName(run.mode))</span></li>"
        }.joined() + "</ul>"
        body += "<section><h2>Learning curves</h2>\n<p class=\"note\">Validation after each epoch; one colour per run, "
            + "solid lines train-head, dashed full-finetune. Wall-clock axes are logarithmic and count training time from the "
            + "first epoch.</p>\n<div class=\"charts\">\n"
            + charts.map { "<figure>\(legend)\($0.svg)</figure>" }.joined(separator: "\n") + "\n</div></section>\n"

        body += "<section><h2>Per run</h2>\n"
        for run in runs {
            body += "<article class=\"run\"><h3>\(swatch(run))\(HTML.escape(run.name)) \(badges(run))</h3>\n"
                + "<p class=\"path\">\(HTML.escape(run.directory)) · \(run.imageSize) px · best epoch \(run.bestEpoch): "
                + String(format: "val accuracy %.4f, loss %.4f", run.bestValidationAccuracy, run.bestValidationLoss)
                + " · total \(HTML.escape(Verdict.cost(run)))</p>\n"
                + "<div class=\"run-body\"><table class=\"classes\"><thead><tr><th>class</th><th>precision</th><th>recall</th>"
                + "<th>f1</th><th>support</th></tr></thead><tbody>\n"
            for figures in run.perClass {
                body += "<tr><td>\(HTML.escape(figures.name))</td><td class=\"number\">\(Self.figure(figures.precision))</td>"
                    + "<td class=\"number\">\(Self.figure(figures.recall))</td><td class=\"number\">\(Self.figure(figures.f1))</td>"
                    + "<td class=\"number\">\(figures.support)</td></tr>\n"
            }
            body += "</tbody></table>\n<figure>"
                + ConfusionMatrixChart(classes: run.classes, counts: run.confusion, color: color(of: run)).svg
                + "<figcaption>confusion matrix, validation, best epoch</figcaption></figure></div></article>\n"
        }
        body += "</section>\n"
        return """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(HTML.escape(title))</title>
        <style>\(Self.style)</style>
        </head>
        <body><main>
        \(body)</main></body>
        </html>

        """
    }

    private var charts: [LineChart] {
        func series(_ value: (EpochRecord) -> Double, x: (RunRecord) -> [Double]) -> [LineChart.Series] {
            runs.map { run in
                LineChart.Series(name: run.name, color: cssColor(of: run),
                                 points: zip(x(run), run.epochs.map(value)).map { (x: $0, y: $1) },
                                 dashed: run.mode == .finetune)
            }
        }
        let accuracy = { (epoch: EpochRecord) in epoch.validationAccuracy }
        let loss = { (epoch: EpochRecord) in epoch.validationLoss }
        let epochNumber = { (run: RunRecord) in run.epochs.map { Double($0.epoch) } }
        let elapsed = { (run: RunRecord) in run.elapsedSeconds }
        return [
            LineChart(title: "Validation accuracy by epoch", xLabel: "epoch", yLabel: "val accuracy",
                      series: series(accuracy, x: epochNumber), yBounds: 0...1),
            LineChart(title: "Validation loss by epoch", xLabel: "epoch", yLabel: "val loss", series: series(loss, x: epochNumber)),
            LineChart(title: "Validation accuracy by wall-clock time", xLabel: "seconds of training (log scale)",
                      yLabel: "val accuracy", series: series(accuracy, x: elapsed), logarithmicX: true, yBounds: 0...1),
            LineChart(title: "Validation loss by wall-clock time", xLabel: "seconds of training (log scale)", yLabel: "val loss",
                      series: series(loss, x: elapsed), logarithmicX: true),
        ]
    }

    private static let style = """
    :root { --ink: #1d2430; --muted: #5b6573; --line: #dde2e8; }
    * { box-sizing: border-box; }
    body { margin: 0; background: #f5f7fa; color: var(--ink);
           font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", Helvetica, Arial, sans-serif; }
    main { max-width: 1200px; margin: 0 auto; padding: 28px 32px 48px; }
    h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
    h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
    h3 { font-size: 16px; margin: 0 0 4px; display: flex; align-items: center; gap: 8px; flex-wrap: wrap; }
    .meta, .note, .path, figcaption { color: var(--muted); font-size: 13px; }
    .note { margin: 10px 0 0; max-width: 900px; }
    .verdict { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.06); padding: 12px 16px; margin: 12px 0 8px;
               border-left: 4px solid #0072b2; }
    .verdict p { margin: 6px 0; max-width: 980px; }
    .verdict .answer { font-size: 17px; }
    .warning { margin: 10px 0 0; padding: 8px 12px; background: #fdecea; color: #8a1c12; border-left: 4px solid #c62828;
               font-weight: 600; }
    table { border-collapse: collapse; background: #fff; font-size: 13.5px; }
    th, td { padding: 7px 8px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
    th { background: #eef1f5; font-weight: 600; font-size: 12.5px; color: #3a4452; white-space: normal; vertical-align: bottom; }
    td.number { text-align: right; font-variant-numeric: tabular-nums; }
    .table-wrap { overflow-x: auto; }
    table.runs { width: 100%; box-shadow: 0 1px 2px rgba(0,0,0,.06); border-radius: 6px; }
    table.runs td { white-space: normal; min-width: 4em; }
    table.runs td.number { white-space: nowrap; }
    /* Should the table still be wider than the screen, the run's name stays in view while the figures scroll under it. */
    table.runs td:first-child, table.runs th:first-child { position: sticky; left: 0; z-index: 1; white-space: nowrap;
                                                           box-shadow: 1px 0 0 var(--line); }
    table.runs td:first-child { background: #fff; }
    .swatch { display: inline-block; width: 24px; height: 0; border-top: 3px solid; margin-right: 7px; vertical-align: 4px; }
    .swatch.finetune { border-top-style: dashed; }
    .badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600; white-space: nowrap;
             background: #eef1f5; color: #3a4452; border: 1px solid #c5ccd6; }
    .badge.finetune { border-style: dashed; }
    .badge.weights { background: #e8f4ec; color: #1d5e34; border-color: #b7d9c2; }
    .badge.weights.random { background: #fdecea; color: #8a1c12; border-color: #e6a39b; }
    .charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
    figure { margin: 0; background: #fff; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.06); padding: 8px; }
    ul.legend { list-style: none; margin: 0 0 2px; padding: 0 4px; display: flex; flex-wrap: wrap; gap: 2px 16px; font-size: 13px; }
    ul.legend .mode { color: var(--muted); }
    svg.chart { width: 100%; height: auto; display: block; }
    svg text { font-family: inherit; fill: var(--ink); }
    .chart-title { font-size: 14px; font-weight: 600; }
    .tick { font-size: 12px; fill: var(--muted); }
    .axis-label { font-size: 12px; fill: var(--muted); }
    .grid { stroke: #edf0f3; }
    .axis { stroke: #9aa4b1; }
    .count { font-size: 13px; font-variant-numeric: tabular-nums; }
    .count.light { fill: #fff; font-weight: 600; }
    .run { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.06); padding: 16px 18px; margin-bottom: 16px; }
    .run-body { display: flex; gap: 28px; align-items: flex-start; flex-wrap: wrap; margin-top: 10px; }
    .run figure { box-shadow: none; padding: 0; }
    .path { overflow-wrap: anywhere; }
    .empty { color: var(--muted); }
    @media (max-width: 1000px) { .charts { grid-template-columns: minmax(0, 640px); } main { padding: 20px 16px 40px; } }
    /* Below the width the whole table needs, each run is a card of label: value lines (side by side where they fit),
       so no column hides off-screen. */
    @media (max-width: 1220px) {
      table.runs, table.runs tr, table.runs td { display: block; width: 100%; }
      table.runs tbody { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 10px; }
      table.runs thead { display: none; }
      table.runs { background: none; box-shadow: none; }
      table.runs tr { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.06); padding: 4px 0; }
      table.runs td, table.runs td.number { display: flex; justify-content: space-between; align-items: baseline; gap: 12px;
                                            text-align: right; white-space: normal; padding: 4px 12px;
                                            border-bottom: 1px solid #f0f2f5; }
      table.runs td:last-child { border-bottom: none; }
      table.runs td::before { content: attr(data-label); color: var(--muted); text-align: left; font-size: 12.5px; }
      table.runs td:first-child { position: static; box-shadow: none; justify-content: flex-start; align-items: center; gap: 0;
                                  font-weight: 600; font-size: 15px; }
      table.runs td:first-child::before { content: none; }
    }
    /* Phones: the charts (560 units wide, drawn at about 0.6 scale) get text sized up to stay at least 11 px on screen. */
    @media (max-width: 700px) {
      .verdict { padding: 10px 12px; }
      .verdict .answer { font-size: 16px; }
      .run { padding: 12px 10px; }
      table.classes th, table.classes td { padding: 6px 5px; }
      svg.chart .tick, svg.chart .axis-label { font-size: 18px; }
      svg.chart .chart-title { font-size: 22px; }
      svg.chart .axis-label.y { display: none; }
    }
    """

    // MARK: - Markdown

    package var markdown: String {
        func table(_ header: [String], _ rows: [[String]]) -> String {
            let escaped = { (cell: String) in cell.replacingOccurrences(of: "|", with: "\\|") }
            return "| " + header.map(escaped).joined(separator: " | ") + " |\n|" + header.map { _ in " --- |" }.joined() + "\n"
                + rows.map { "| " + $0.map(escaped).joined(separator: " | ") + " |" }.joined(separator: "\n") + "\n"
        }
        let verdict = verdict
        var out = "# \(title)\n\n**\(verdict.answer)**\n\n"
        if validationMismatch != nil { out += "> **\(validationNote)**\n\n" }
        out += verdict.cost + "\n\n" + (verdict.randomWeights ? "> **\(verdict.weights)**" : verdict.weights) + "\n\n"
        out += table(Row.header, runs.map { row($0).cells }) + "\n"
        if validationMismatch == nil && !validationNote.isEmpty { out += validationNote + "\n\n" }
        if let chance = runs.first?.chanceAccuracy { out += String(format: "Chance accuracy %.3f.\n\n", chance) }

        out += "## Validation accuracy by epoch\n\n"
        let longest = runs.map(\.epochs.count).max() ?? 0
        let elapsed = runs.map(\.elapsedSeconds)
        out += table(["epoch"] + runs.map(\.name), (0..<longest).map { index in
            ["\(index + 1)"] + zip(runs, elapsed).map { run, elapsed in
                index < run.epochs.count
                    ? String(format: "%.4f (loss %.4f, %@)", run.epochs[index].validationAccuracy, run.epochs[index].validationLoss,
                             Self.duration(elapsed[index]))
                    : ""
            }
        }) + "\n"

        for run in runs {
            out += "## \(run.name) (\(Self.modeName(run.mode)), \(Verdict.weightsLabel(run)))\n\n"
            out += table(["class", "precision", "recall", "f1", "support"], run.perClass.map { figures in
                [figures.name, Self.figure(figures.precision), Self.figure(figures.recall), Self.figure(figures.f1), "\(figures.support)"]
            }) + "\n"
            out += "Confusion matrix (rows: true class, columns: predicted):\n\n"
            out += table(["true \\ predicted"] + run.classes, zip(run.classes, run.confusion).map { name, counts in
                [name] + counts.map(String.init)
            }) + "\n"
        }
        return out
    }
}
