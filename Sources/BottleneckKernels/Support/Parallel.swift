import Foundation
import Synchronization

/// The cores `parallelFor` spreads over, read once: Foundation's `activeProcessorCount` reads the cgroup
/// files on every call (16 µs here, 7% of a head's training step when the optimizer asked for it).
package let availableCores = ProcessInfo.processInfo.activeProcessorCount

/// Runs `body(i)` for i in 0..<count on up to `ThreadBudget.threads` cores. The body writes disjoint parts of
/// buffers it captured as unsafe pointers; callers guarantee that disjointness. Which core runs
/// which i varies, so a body's result must depend on i alone.
@inline(__always)
package func parallelFor(_ count: Int, _ body: (Int) -> Void) {
    ParallelRegions.shared.run(count, body)
}

/// Starts `parallelFor`'s helpers now, one per extra thread of the current budget: a caller about to lower the
/// budget for a while (a thread sweep) keeps them for when it raises it again.
package func startParallelHelpers() {
    _ = ParallelRegions.shared
}

/// Calls body on contiguous chunks of 0..<count: one per core when `count` reaches `minimumParallelCount` (below,
/// a second core does not pay for starting a region), else one chunk. For elementwise work, whose result does not
/// depend on the chunks. Bodies should take raw pointers out of their buffers first: a loop that reads them through
/// the closure's captures reloads them after every store and is not vectorised.
package func parallelForChunks(_ count: Int, minimumParallelCount: Int = 1 << 14, _ body: (Range<Int>) -> Void) {
    let workers = count >= minimumParallelCount ? availableCores : 1
    parallelFor(workers) { worker in body((worker * count / workers)..<((worker + 1) * count / workers)) }
}

/// The threads behind `parallelFor`: one helper per extra thread of the budget when first used, kept awake for a short while after each
/// region, so that the many short regions of a training step (a head's step is ~0.3 ms with three of
/// them) start within a microsecond. `DispatchQueue.concurrentPerform` wakes its threads through the
/// kernel every time: two 16 µs halves took 48 µs there, 17 µs here.
///
/// A region started while another runs (a nested `parallelFor`, or a second thread's) runs its
/// indices on the calling thread, in order. A region seats at most `ThreadBudget.threads - 1` helpers.
final class ParallelRegions: Sendable {
    static let shared = ParallelRegions(helpers: ThreadBudget.threads - 1)

    /// Polls of `generation` before a helper sleeps: some tens of microseconds, longer than the gaps
    /// between the regions of a training step, far shorter than anything a user would notice as load.
    private static let spinsBeforeSleep = 50_000
    /// Polls of a region's completion before the caller yields its core (to a helper it may be waiting for
    /// when the machine is busy).
    private static let spinsBeforeYield = 1_000

    private let helpers: Int
    /// Incremented when a region starts; helpers watch it.
    private let generation = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)
    private let current = Mutex<Region?>(nil)

    private init(helpers: Int) {
        self.helpers = helpers
        for index in 0..<helpers {
            let thread = Thread { [unowned self] in self.helperLoop() }
            thread.name = "bottleneck-parallel-\(index + 1)"
            thread.start()
        }
    }

    func run(_ count: Int, _ body: (Int) -> Void) {
        let seats = min(helpers, ThreadBudget.threads - 1, count - 1)
        guard seats > 0, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            for index in 0..<count { body(index) }
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        withoutActuallyEscaping(body) { body in
            withUnsafePointer(to: body) { body in
                let region = Region(count: count, seats: seats, body: UnsafeRawPointer(body))
                current.withLock { $0 = region }
                generation.add(1, ordering: .sequentiallyConsistent)
                for _ in 0..<min(sleepers.load(ordering: .sequentiallyConsistent), seats) { wake.signal() }
                region.work()
                var spins = 0
                while region.finished.load(ordering: .acquiring) < count {
                    spins += 1
                    if spins % Self.spinsBeforeYield == 0 { sched_yield() }
                }
                current.withLock { $0 = nil }
            }
        }
    }

    private func helperLoop() {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                guard spins >= Self.spinsBeforeSleep else { continue }
                // Counted as a sleeper before the last look, so a region started after that look signals.
                sleepers.add(1, ordering: .sequentiallyConsistent)
                if generation.load(ordering: .sequentiallyConsistent) == seen { wake.wait() }
                sleepers.subtract(1, ordering: .sequentiallyConsistent)
                spins = 0
            }
            seen = generation.load(ordering: .acquiring)
            // A helper late for a region may find the next one, or none, or a full one: all are fine.
            if let region = current.withLock({ $0 }), region.takeSeat() { region.work() }
        }
    }
}

/// One `parallelFor` call: indices handed out one at a time to whichever thread asks.
private final class Region: Sendable {
    let count: Int
    /// The caller's `(Int) -> Void`, alive until `finished` reaches `count`; a helper holding a finished
    /// region never calls it, because every index is taken.
    nonisolated(unsafe) let body: UnsafeRawPointer
    let next = Atomic<Int>(0)
    let finished = Atomic<Int>(0)
    /// Helpers that may still join.
    private let seats: Atomic<Int>

    init(count: Int, seats: Int, body: UnsafeRawPointer) {
        self.count = count
        self.seats = Atomic(seats)
        self.body = body
    }

    /// Whether a helper may work on this region: true for the first `seats` that ask.
    func takeSeat() -> Bool {
        seats.subtract(1, ordering: .relaxed).newValue >= 0
    }

    /// Runs indices until none are left.
    func work() {
        var done = 0
        while true {
            let index = next.add(1, ordering: .relaxed).oldValue
            guard index < count else { break }
            call(index)
            done += 1
        }
        if done > 0 { finished.add(done, ordering: .releasing) }
    }

    /// Not inlined, so any copy of the body made to call it is released before `finished` tells the
    /// caller it may return (and check that the body did not escape).
    @inline(never)
    private func call(_ index: Int) {
        body.assumingMemoryBound(to: ((Int) -> Void).self).pointee(index)
    }
}
