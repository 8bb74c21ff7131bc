import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct HeadBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "head",
        abstract: "Samples per second training a head on cached features, against the frozen network from images.",
        discussion: """
        PyTorch's reference sizes by default: 20 000 rows of 4096 features, 10 classes, batch 64, dropout 0.5, SGD \
        with momentum, through the same trainer as train-head (shuffled rows, masks per row). Then one batch of 8 \
        images through VGG16 to fc7 (random weights, 224 px), and the ratio of the two: how many times faster an \
        epoch on the cache is than an epoch through the frozen network. Compare with PyTorch in the same session:
        python3 pipelines/bench/torch_reference.py head

        Example: bottleneck bench head --threads 1
        """)

    @Option(parsing: .unconditional, help: "Cached rows per epoch.") var rows = 20_000
    @Option(parsing: .unconditional, help: "Features per row.") var features = 4096
    @Option(parsing: .unconditional, help: "Classes.") var classes = 10
    @Option(parsing: .unconditional, help: "Rows per optimizer step.") var batchSize = 64
    @Option(parsing: .unconditional, help: "Dropout probability on the cached features.") var dropout = 0.5
    @Option(parsing: .unconditional, help: "Timed epochs (after one untimed); the median is reported.") var epochs = 3
    @OptionGroup var threads: ThreadsOption
    @Flag(help: "Skip the forward pass through the frozen network (no ratio).") var noForward = false
    @Flag(help: "Small sizes and a tiny network: checks the benchmark runs (not a measurement).") var quick = false

    func run() throws {
        threads.apply()
        var benchmark = quick ? HeadBenchmark.quick() : HeadBenchmark()
        if !quick {
            benchmark.rows = rows
            benchmark.features = features
            benchmark.epochs = epochs
        }
        benchmark.classes = classes
        benchmark.batchSize = batchSize
        benchmark.dropout = dropout
        benchmark.threads = threads.threads
        if noForward { benchmark.forward = nil }
        printErr("bench head: \(benchmark.rows) x \(benchmark.features) cached features, \(benchmark.classes) classes, batch "
                 + "\(benchmark.batchSize), dropout \(benchmark.dropout), \(benchmark.threads) threads, BLAS core \(BLASRuntime.coreName)")
        let result = try benchmark.run { printErr("  " + $0) }
        print(String(format: "head: %.0f samples/s (one epoch of %d rows in %.3f s)", result.samplesPerSecond, benchmark.rows,
                     Double(benchmark.rows) / result.samplesPerSecond))
        if let forward = result.forwardImagesPerSecond, let speedup = result.speedup {
            print(String(format: "frozen network from images: %.2f img/s (one epoch of %d images in %.0f s)", forward, benchmark.rows,
                         Double(benchmark.rows) / forward))
            print(String(format: "cached epoch / uncached epoch: %.0fx faster", speedup))
        }
    }
}
