import ArgumentParser
import Bottleneck
import BottleneckKernels

/// `--threads`, shared by every command that computes: the most threads the process works on at once (parallel
/// regions and OpenBLAS together), so that N jobs can share a machine. Results do not depend on it.
struct ThreadsOption: ParsableArguments {
    @Option(parsing: .unconditional, help: ArgumentHelp("Threads to work on: the kernels' and OpenBLAS's together (default: all \(availableCores) cores).",
                               valueName: "N"))
    var threads = availableCores

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
    }

    /// Bounds the process to `threads`: first thing in a command's `run`, before anything runs in parallel, so
    /// that no more helper threads are ever started.
    func apply() { ThreadBudget.limit(to: threads) }
}

/// `--threads-sweep`, shared by the benches that take it.
struct ThreadsSweepFlag: ParsableArguments {
    @Flag(help: "Run the benchmark with 1, 2, 4, … up to --threads threads: img/s, speedup and parallel efficiency each.")
    var threadsSweep = false

    /// The sweep's table after measuring with `measure` at each thread count.
    func sweep(upTo threads: Int, _ measure: () throws -> Double) rethrows {
        let sweep = try ThreadSweep(upTo: threads, progress: { printErr($0) }, measure: measure)
        print(sweep.table)
    }
}
