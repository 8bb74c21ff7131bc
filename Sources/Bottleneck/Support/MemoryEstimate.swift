import Foundation
import BottleneckKernels

/// What a run through the frozen network (extract, predict, evaluate) will hold, checked before anything
/// is allocated: a batch size typed with one zero too many is refused with the figure, not met by the
/// kernel's OOM killer (or a failed allocation) minutes later.
enum MemoryEstimate {
    /// `--batch-size` outside this is refused outright, whatever the memory.
    static let batchSizes = 1...65536

    /// "--batch-size must be between 1 and 65536 (got 0)", or nil when it is.
    static func batchSizeProblem(_ batchSize: Int) -> String? {
        batchSizes.contains(batchSize) ? nil
            : "--batch-size must be between \(batchSizes.lowerBound) and \(batchSizes.upperBound) (got \(batchSize))"
    }

    /// The most one file's contents may make bottleneck hold: a file's own sizes (a dataspace, a shape) can claim far
    /// more than it stores, and a claim beyond this is damage, not data.
    static let fileReadLimitBytes = Int(clamping: ProcessInfo.processInfo.physicalMemory / 2)

    /// MemAvailable from /proc/meminfo; nil where there is none.
    static func availableBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
              let kilobytes = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
        return kilobytes * 1024
    }
}
