import COpenBLAS
import Synchronization

/// How many threads the process's parallel work may run on at once: a `parallelFor` region's caller and helpers, and
/// OpenBLAS's threads. `--threads N` sets it, so that N jobs can share one machine without each spinning on every core.
///
/// The budget bounds who works, never how the work is cut: kernels cut by `availableCores` and the shapes, and a
/// region hands its pieces to whichever of its threads asks, so a result is the same bits under any budget.
/// (OpenBLAS's own multi-threaded gemms, the linear layers', may cut differently for a different thread count.)
package enum ThreadBudget {
    private static let current = Atomic<Int>(availableCores)

    package static var threads: Int { current.load(ordering: .relaxed) }

    /// Set before the first `parallelFor`, it also bounds the helper threads ever started, which then cap any
    /// larger budget set later; a smaller one set later lets fewer of the helpers join each region.
    package static func limit(to threads: Int) {
        precondition(threads >= 1, "a thread budget of \(threads)")
        current.store(threads, ordering: .relaxed)
        openblas_set_num_threads(Int32(threads))
    }
}
