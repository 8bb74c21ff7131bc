import ArgumentParser
import Bottleneck
import BottleneckKernels

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Compare train-head and full-finetune runs: one self-contained HTML file, or Markdown.",
        discussion: """
        Reads each RUN_DIR's config.json, metrics.csv, summary.json and model.h5 attributes (and a head's cache), \
        and opens with the answer: freeze (a head on cached features) or fine-tune, which won on the shared \
        validation images, by how many accuracy points and how much loss, at what total time (a head's includes \
        the extraction its cache records), on which weights (random weights are flagged). Then a table of the runs \
        (mode, weights, best validation accuracy and loss, total and training time, epochs, frozen layers, \
        trainable parameters, throughput, cache size; cards on narrow screens), learning curves of validation accuracy and \
        loss against epoch and against wall-clock seconds (one colour-blind-safe colour per run; heads solid, \
        fine-tuning dashed), and each run's per-class precision and recall and confusion matrix. The HTML has its \
        CSS and SVG charts inline and fetches nothing: mail it, \
        attach it to CI, open it offline. --format md prints tables for terminals and CI logs.

        Runs that were not validated on the same images (their summary.json records how many and a digest of \
        their paths) are refused, naming each run's validation set: their accuracies would not compare. \
        --allow-different-validation writes the report anyway, with a warning at its top.

        Examples:
          bottleneck report runs/demo/head runs/demo/finetune --out report.html
          bottleneck report runs/demo/* --format md
          bottleneck report runs/pets-head runs/pets-ft --out pets.md --format md \\
            --title "pets: head vs fine-tune"
        """)

    @Argument(help: ArgumentHelp("Run directories written by train-head or full-finetune.", valueName: "RUN_DIR"))
    var runs: [String]
    @Option(help: ArgumentHelp("Write here (default: stdout for md, report.html for html). " + outputPolicy, valueName: "FILE"))
    var out: String?
    @Option(help: "html or md.") var format = ReportFormat.html
    @Option(help: "The report's heading.") var title = "bottleneck — head vs fine-tune"
    @Flag(help: "Compare runs validated on different images anyway (the report says so at its top).")
    var allowDifferentValidation = false

    func run() throws {
        let report = try Report(title: title, runs: try runs.map { try RunRecord(directory: $0) },
                                allowDifferentValidation: allowDifferentValidation)
        if format == .md && out == nil {
            print(report.markdown, terminator: "")
            return
        }
        let path = out ?? "report.html"
        try report.write(format: format, to: path)
        print("report: \(runs.count) runs; \(path)")
    }
}

extension ReportFormat: ExpressibleByArgument {}
