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

    /// An upper estimate of the bytes a forward of `batchSize` images needs: fine-tuning's estimate with every
    /// layer frozen (parameters, the largest activations alive at once, the fixed overhead), or only the fixed
    /// overhead without a network (`--layer input`), plus the decoder's batches of `imageShape` (two buffered
    /// and one being filled).
    static func inferenceBytes(config: VGGConfig?, imageShape: [Int], batchSize: Int) -> Int {
        let network = config.map {
            FineTuneNetwork.estimatedStepBytes(config: $0, imageSize: imageShape.last ?? 0, batchSize: batchSize,
                                               frozenThrough: Int.max, optimizerCopies: 0)
        } ?? FineTuneNetwork.fixedOverheadBytes
        return network + (BatchDecoder.capacity + 1) * batchSize * imageShape.reduce(1, *) * MemoryLayout<Float>.size
    }

    /// The one-line refusal when a forward of `batchSize` images through `config` (nil: no network) needs
    /// more than `limit` (nil: MemAvailable), else nil.
    static func refusal(forward config: VGGConfig?, imageShape: [Int], batchSize: Int, limit: Int?) -> String? {
        let needed = inferenceBytes(config: config, imageShape: imageShape, batchSize: batchSize)
        guard let available = limit ?? availableBytes(), needed > available else { return nil }
        return "a batch of \(batchSize) images needs about \(needed.formattedBytes), but only \(available.formattedBytes) "
            + "is available; use a smaller --batch-size"
    }
}
