import BottleneckKernels

/// `--threads-sweep` of the benches: the same measurement under thread budgets of 1, 2, 4, … up to a maximum, with
/// each budget's speedup over one thread divided by its threads (parallel efficiency: 100% is perfect scaling).
package struct ThreadSweep: Sendable {
    package struct Point: Sendable {
        package var threads: Int
        package var imagesPerSecond: Double
        package var efficiency: Double
    }

    package var points: [Point]

    /// 1, 2, 4, … below `maximum`, then `maximum`.
    package static func threadCounts(upTo maximum: Int) -> [Int] {
        Array(sequence(first: 1) { $0 * 2 }.prefix { $0 < maximum }) + [maximum]
    }

    /// `measure()`'s images per second under each budget up to `maximum` threads; the budget is `maximum` after.
    package init(upTo maximum: Int, progress: (String) -> Void = { _ in }, measure: () throws -> Double) rethrows {
        ThreadBudget.limit(to: maximum)
        startParallelHelpers()
        defer { ThreadBudget.limit(to: maximum) }
        points = []
        for threads in Self.threadCounts(upTo: maximum) {
            ThreadBudget.limit(to: threads)
            progress("\(threads) thread\(threads == 1 ? "" : "s"):")
            let rate = try measure()
            points.append(Point(threads: threads, imagesPerSecond: rate,
                                efficiency: rate / ((points.first?.imagesPerSecond ?? rate) * Double(threads))))
        }
    }

    package var table: String {
        (["threads      img/s  speedup  efficiency"] + points.map { point in
            String(format: "%7d %10.2f %7.2fx %10.0f%%", point.threads, point.imagesPerSecond,
                   point.imagesPerSecond / points[0].imagesPerSecond, 100 * point.efficiency)
        }).joined(separator: "\n")
    }
}
