import BottleneckKernels

/// One of `count` contiguous, nearly equal parts of a sorted list: "2/4" is the second quarter.
/// Parts are cut at whole batches, so that every shard runs the same batches as one process
/// would, and the merged cache has the same bytes (while no image fails to decode: a failure
/// shifts the later batches of a single run, and the merged rows then agree to float rounding).
package struct Shard: Sendable, Equatable, CustomStringConvertible {
    /// 1-based, as job arrays count.
    package let index: Int
    package let count: Int

    /// Far more processes than one extraction runs; the bound keeps a cache's hostile `shard` attribute from
    /// sizing merge's bookkeeping.
    static let maximumCount = 100_000

    package init(_ text: String) throws {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]), (1...Self.maximumCount).contains(count),
              (1...count).contains(index)
        else { throw FeatureCacheError(.invalidInput, "--shard \(text): expected I/N with 1 <= I <= N <= \(Self.maximumCount), e.g. 2/4") }
        self.index = index
        self.count = count
    }

    package init(index: Int, count: Int) {
        precondition((1...Self.maximumCount).contains(count) && (1...count).contains(index), "shard \(index)/\(count)")
        self.index = index
        self.count = count
    }

    package var description: String { "\(index)/\(count)" }

    func range(of total: Int, alignedTo batchSize: Int) -> Range<Int> {
        let batches = (total + batchSize - 1) / batchSize
        return min(total, (index - 1) * batches / count * batchSize)..<min(total, index * batches / count * batchSize)
    }
}
