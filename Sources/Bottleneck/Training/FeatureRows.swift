import Foundation
import BottleneckKernels

/// The rows a head trains and validates on, as the part of the head that runs every step takes them:
/// each cached row after the head's frozen stem (the layers below its first dropout or trainable
/// layer give the same output every epoch, so they run once per row, as the cache's prefix did).
///
/// When the rows fit in the memory budget they are read once, in file order, and kept. Otherwise they
/// are streamed: a pass reads windows of whole chunks, each window as many rows as a quarter of the
/// budget holds (two are resident, so a batch may straddle a boundary, and each is at most one chunk
/// over). A training pass takes the chunks in a shuffled order and the rows of each window shuffled,
/// so every chunk is read once per pass, as `FeatureCacheReader` advises.
///
/// Rows with augmented views (`extract --views K`) keep them after the stem too, in memory (views are not streamed):
/// a training pass takes each such row as one of its K views, drawn by (seed, epoch, row), never its eval view, as
/// torchvision's training transform never gives the eval crop. Validation always takes the eval view.
final class FeatureRows {
    /// An order of rows, cut into windows that are loaded whole.
    struct Pass {
        fileprivate let id: Int
        let order: [Int]
        /// Window k covers order[windowEnds[k - 1] ..< windowEnds[k]].
        fileprivate let windowEnds: [Int]
        /// The epoch (from 0) that reads this pass, for messages.
        fileprivate let epoch: Int
        /// Per position, the augmented view it takes (-1: the eval view); nil when every position takes the eval view.
        fileprivate var views: [Int]?
    }

    /// Floats per row after the stem.
    let width: Int
    let isStreaming: Bool
    /// Rows per window when streaming (at least a batch), every row otherwise.
    let windowRows: Int

    private let cache: FeatureCacheReader?
    private let stem: (Tensor) -> Tensor
    /// Resident rows, `slotCapacity` per window slot (one slot when everything is in memory).
    private let storage: UnsafeMutableBufferPointer<Float>
    private let slotCapacity: Int
    /// Where each cache row sits in `storage`, -1 when it is not resident.
    private var slotOfRow: [Int32]
    private var resident: [(pass: Int, window: Int, rows: [Int])?] = [nil, nil]
    private var passCount = 0
    /// Augmented views per row that has them, and those rows' views after the stem, `views` blocks of `width` each.
    private let views: Int
    private let viewStorage: UnsafeMutableBufferPointer<Float>
    /// Per cache row, its block in `viewStorage`, -1 when its views are not loaded.
    private let viewBlockOfRow: [Int32]

    /// Rows of raw cache features read and put through the stem at a time: bounds the memory a
    /// pool5 row (25 088 floats, 100 kB) needs before the stem shrinks it.
    private static let loadBytes = 64 << 20

    /// Rows `needed` of `cache`, each put through `stem` (which maps [n, ...activation] to [n, width]), and the
    /// augmented views of those of `viewRows` that have them. Throws before training when a row holds NaN or infinity
    /// (and, streaming, when a pass finds one), and when views would have to be streamed.
    init(cache: FeatureCacheReader, needed: [Int], viewRows: [Int] = [], width: Int, stem: @escaping (Tensor) -> Tensor,
         memoryBudgetBytes: Int, batchSize: Int) throws {
        self.cache = cache
        self.stem = stem
        self.width = width
        slotOfRow = Array(repeating: -1, count: cache.count)
        let rowBytes = width * MemoryLayout<Float>.size
        let withViews = viewRows.filter { cache.viewBlockOfRow[$0] >= 0 }.sorted()
        views = withViews.isEmpty ? 0 : cache.fingerprint.views
        guard withViews.count * views * rowBytes <= memoryBudgetBytes / 2 else {
            throw TrainingError(.invalidInput, "\(cache.path): the \(views) augmented views of \(withViews.count) training rows "
                                + "take \((withViews.count * views * rowBytes).formattedBytes) after the head's frozen layers, "
                                + "over half the memory budget; raise --memory-budget-mb or train with --views none")
        }
        var blocks = [Int32](repeating: -1, count: cache.count)
        for (block, row) in withViews.enumerated() { blocks[row] = Int32(block) }
        viewBlockOfRow = blocks
        viewStorage = .allocate(capacity: withViews.count * views * width)
        isStreaming = needed.count * rowBytes > memoryBudgetBytes - withViews.count * views * rowBytes
        if isStreaming {
            windowRows = max(memoryBudgetBytes / (4 * rowBytes), batchSize)
            slotCapacity = windowRows + Self.blockRows(cache: cache, windowRows: windowRows)
            storage = .allocate(capacity: 2 * slotCapacity * width)
        } else {
            windowRows = needed.count
            slotCapacity = needed.count
            storage = .allocate(capacity: needed.count * width)
            // Every property is set, so a throw from here runs deinit, which frees the storage.
            try load(needed.sorted(), slot: 0, epoch: nil)
        }
        try loadViews(withViews)
    }

    /// Rows already in memory, [N, ...] (the benchmark's and the tests' own features): every row resident.
    init(features: Tensor, stem: @escaping (Tensor) -> Tensor) throws {
        cache = nil
        self.stem = stem
        let rows = features.shape[0]
        let transformed = stem(features)
        width = transformed.count / max(rows, 1)
        isStreaming = false
        windowRows = rows
        slotCapacity = rows
        storage = .allocate(capacity: transformed.count)
        _ = storage.initialize(from: transformed.data)
        slotOfRow = (0..<Int32(rows)).map { $0 }
        views = 0
        viewStorage = .allocate(capacity: 0)
        viewBlockOfRow = []
        if let bad = Self.firstNonFiniteRow(features) {
            throw TrainingError(.invalidInput, "row \(bad) of the features holds NaN or infinity")
        }
    }

    deinit {
        storage.deallocate()
        viewStorage.deallocate()
    }

    /// `rows` in the order `epoch` trains on them, each row with views as one of them.
    func trainingPass(_ rows: [Int], seed: UInt64, epoch: Int) -> Pass {
        var pass = orderedTrainingPass(rows, seed: seed, epoch: epoch)
        if views > 0 {
            pass.views = pass.order.map { row in
                viewBlockOfRow[row] < 0 ? -1 : TrainingRandomness.viewChoice(seed: seed, epoch: epoch, row: row, views: views)
            }
        }
        return pass
    }

    private func orderedTrainingPass(_ rows: [Int], seed: UInt64, epoch: Int) -> Pass {
        passCount += 1
        guard isStreaming else {
            return Pass(id: passCount, order: TrainingRandomness.shuffled(rows, seed: seed, epoch: epoch),
                        windowEnds: [rows.count], epoch: epoch)
        }
        var generator = SeededGenerator(seed: TrainingRandomness.seed(seed, .shuffle, UInt64(epoch)))
        var chunks = chunked(rows)
        chunks.shuffleReproducibly(using: &generator)
        return windowed(chunks, epoch: epoch) { $0.shuffleReproducibly(using: &generator) }
    }

    /// `rows` in file order, for validation.
    func evaluationPass(_ rows: [Int], epoch: Int) -> Pass {
        passCount += 1
        guard isStreaming else { return Pass(id: passCount, order: rows, windowEnds: [rows.count], epoch: epoch) }
        return windowed(chunked(rows), epoch: epoch) { _ in }
    }

    /// Pointers to the rows at `positions` of `pass` (valid until the next call), loading their windows.
    func rowPointers(_ pass: Pass, _ positions: Range<Int>) throws -> [UnsafePointer<Float>] {
        if isStreaming, !positions.isEmpty {
            let first = pass.windowEnds.firstIndex { $0 > positions.lowerBound }!
            let last = pass.windowEnds.firstIndex { $0 >= positions.upperBound }!
            precondition(last - first <= 1, "a batch spans more than two windows")
            for window in first...last { try makeResident(pass, window: window) }
        }
        let base = UnsafePointer(storage.baseAddress!)
        return positions.map { position in
            if let view = pass.views?[position], view >= 0 {
                return UnsafePointer(viewStorage.baseAddress!) + (Int(viewBlockOfRow[pass.order[position]]) * views + view) * width
            }
            let slot = Int(slotOfRow[pass.order[position]])
            precondition(slot >= 0, "row \(pass.order[position]) is not resident")
            return base + slot * width
        }
    }

    /// Rows read as a unit: a chunk of `/features`, or less when a chunk would not fit a window
    /// (a cache stored unchunked is one chunk).
    private static func blockRows(cache: FeatureCacheReader, windowRows: Int) -> Int {
        max(1, min(cache.chunkRows, windowRows))
    }

    /// The rows, grouped by the block of `/features` they are stored in, blocks in file order.
    private func chunked(_ rows: [Int]) -> [[Int]] {
        let chunkRows = Self.blockRows(cache: cache!, windowRows: windowRows)
        var chunks: [[Int]] = []
        for row in rows.sorted() {
            if let last = chunks.last?.last, last / chunkRows == row / chunkRows {
                chunks[chunks.count - 1].append(row)
            } else {
                chunks.append([row])
            }
        }
        return chunks
    }

    /// Chunks taken in order into windows of at least `windowRows` rows, each window's rows arranged by `arrange`.
    private func windowed(_ chunks: [[Int]], epoch: Int, arrange: (inout [Int]) -> Void) -> Pass {
        var order: [Int] = []
        var windowEnds: [Int] = []
        var window: [Int] = []
        for (index, chunk) in chunks.enumerated() {
            window += chunk
            if window.count >= windowRows || index == chunks.count - 1 {
                arrange(&window)
                order += window
                windowEnds.append(order.count)
                window.removeAll(keepingCapacity: true)
            }
        }
        return Pass(id: passCount, order: order, windowEnds: windowEnds, epoch: epoch)
    }

    private func makeResident(_ pass: Pass, window: Int) throws {
        let slot = window % 2
        if let current = resident[slot], current.pass == pass.id, current.window == window { return }
        for row in resident[slot]?.rows ?? [] { slotOfRow[row] = -1 }
        resident[slot] = nil
        let start = window == 0 ? 0 : pass.windowEnds[window - 1]
        let rows = pass.order[start..<pass.windowEnds[window]].sorted()
        try load(rows, slot: slot, epoch: pass.epoch)
        resident[slot] = (pass.id, window, rows)
    }

    /// Reads `rows` (ascending) from the cache through the stem into window slot `slot`.
    private func load(_ rows: [Int], slot: Int, epoch: Int?) throws {
        guard let cache else { return }
        let groupRows = max(1, Self.loadBytes / max(1, cache.rowSize * MemoryLayout<Float>.size))
        var next = slot * slotCapacity
        for groupStart in stride(from: 0, to: rows.count, by: groupRows) {
            let group = Array(rows[groupStart..<min(groupStart + groupRows, rows.count)])
            let raw = try cache.readRows(at: group)
            if let bad = Self.firstNonFiniteRow(raw) {
                throw TrainingError(.invalidInput, "\(cache.path): row \(group[bad]) (\(cache.paths[group[bad]])) holds NaN or "
                                    + "infinite features\(epoch.map { " (found streaming epoch \($0 + 1))" } ?? ""); "
                                    + "extract it again, or leave the image out")
            }
            let rowsOut = stem(raw)
            precondition(rowsOut.count == group.count * width, "the stem gives \(rowsOut.shape), expected [\(group.count), \(width)]")
            rowsOut.data.withUnsafeBufferPointer { values in
                (storage.baseAddress! + next * width).update(from: values.baseAddress!, count: values.count)
            }
            for row in group {
                slotOfRow[row] = Int32(next)
                next += 1
            }
        }
    }

    /// The augmented views of `rows` (ascending, each with views) through the stem into `viewStorage`, one row at a time.
    private func loadViews(_ rows: [Int]) throws {
        guard let cache, views > 0 else { return }
        var raw = Tensor(zeros: [views] + cache.activationShape)
        for (block, row) in rows.enumerated() {
            try raw.data.withUnsafeMutableBufferPointer { try cache.readViews(ofRow: row, into: $0) }
            if let bad = Self.firstNonFiniteRow(raw) {
                throw TrainingError(.invalidInput, "\(cache.path): augmented view \(bad + 1) of row \(row) (\(cache.paths[row])) holds "
                                    + "NaN or infinite features; extract it again, or train with --views none")
            }
            let viewsOut = stem(raw)
            precondition(viewsOut.count == views * width, "the stem gives \(viewsOut.shape), expected [\(views), \(width)]")
            viewsOut.data.withUnsafeBufferPointer { values in
                (viewStorage.baseAddress! + block * views * width).update(from: values.baseAddress!, count: values.count)
            }
        }
    }

    /// The first row of x [N, ...] holding a NaN or an infinity, nil when all are finite.
    private static func firstNonFiniteRow(_ x: Tensor) -> Int? {
        let rows = x.shape[0]
        guard rows > 0 else { return nil }
        let rowSize = x.count / rows
        return x.data.withUnsafeBufferPointer { values in
            // x - x is 0 for finite x and NaN otherwise: one sum per row instead of a test per value.
            (0..<rows).first { row in
                var sum: Float = 0
                for value in values[(row * rowSize)..<((row + 1) * rowSize)] { sum += value - value }
                return sum != 0
            }
        }
    }
}
