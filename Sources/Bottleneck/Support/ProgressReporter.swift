import Foundation
import BottleneckKernels

/// Progress of a long job on stderr: a redrawn bar when stderr is a terminal,
/// a plain line every `plainInterval` seconds otherwise (logs, batch schedulers).
final class ProgressReporter: @unchecked Sendable {
    private let label: String
    private let total: Int
    private let unit: String
    private let isTerminal: Bool
    private let plainInterval: Double
    private let start = ContinuousClock.now
    private var lastPrinted: ContinuousClock.Instant?
    private var drewBar = false

    package init(label: String, total: Int, unit: String = "img", plainInterval: Double = 10) {
        self.label = label
        self.total = total
        self.unit = unit
        self.isTerminal = isatty(STDERR_FILENO) == 1
        self.plainInterval = plainInterval
    }

    /// `done` counts work of this run only, so the rate and ETA are honest after a resume.
    package func update(done: Int, extra: String = "") {
        let now = ContinuousClock.now
        let elapsed = start.secondsElapsed
        let due = { (interval: Duration) in self.lastPrinted.map { now - $0 >= interval } ?? true }
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let remaining = rate > 0 ? Double(total - done) / rate : .infinity
        let fraction = total > 0 ? Double(done) / Double(total) : 1
        let figures = String(format: "%d/%d %@, %.2f %@/s, ETA %@", done, total, label, rate, unit,
                             Self.duration(remaining)) + (extra.isEmpty ? "" : ", " + extra)
        if isTerminal {
            guard due(.milliseconds(100)) || done == total else { return }
            let width = 30
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            FileHandle.standardError.write(Data("\r\u{1B}[2K[\(bar)] \(figures)".utf8))
            drewBar = true
        } else {
            guard due(.seconds(plainInterval)) || done == total else { return }
            FileHandle.standardError.write(Data(String(format: "[%3.0f%%] %@\n", fraction * 100, figures).utf8))
        }
        lastPrinted = now
    }

    /// Ends the bar's line so that what follows starts on a fresh one.
    package func finish() {
        if drewBar { FileHandle.standardError.write(Data("\n".utf8)) }
        drewBar = false
    }

    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "--" }
        let whole = Int(seconds.rounded())
        if whole >= 3600 { return String(format: "%dh%02dm", whole / 3600, whole / 60 % 60) }
        if whole >= 60 { return String(format: "%dm%02ds", whole / 60, whole % 60) }
        return "\(whole)s"
    }
}
