import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure throughput on this machine (build with -c release).",
        subcommands: [ForwardBench.self, HeadBench.self, FinetuneBench.self])
}

struct ForwardBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Images per second through the frozen VGG16 (random weights, no files needed).",
        discussion: """
        Full size by default: VGG16, 224 px, batch 8, cut at fc7 (30.9 GFLOP per image). \
        Compare with PyTorch on the same machine in the same session: the machine is noisy.

        Example: bottleneck bench forward --batch-size 16 --layer pool5
        """)

    @Option(parsing: .unconditional, help: "Images per batch.") var batchSize = 8
    @Option(help: "Cut layer: a name (conv4_3, pool5, fc7) or torchvision path (features.23).") var layer = "fc7"
    @Option(parsing: .unconditional, help: "Timed batches; the median is reported.") var iterations = 3
    @Flag(help: "Also print the median time of each layer and of the rest of the batch.") var perLayer = false
    @Option(help: "Convolution lowering: auto (per layer shape), im2col or winograd.") var algorithm = Conv2D.Algorithm.auto
    @Flag(help: "A tiny network at 64 px, to check the benchmark runs (seconds, not a measurement).") var quick = false
    @OptionGroup var threads: ThreadsOption
    @OptionGroup var sweep: ThreadsSweepFlag

    func run() throws {
        threads.apply()
        var benchmark = quick ? ForwardBenchmark.quick(layer: layer)
            : ForwardBenchmark.full(batchSize: batchSize, layer: layer, iterations: iterations)
        if quick { benchmark.batchSize = min(batchSize, benchmark.batchSize) }
        benchmark.algorithm = algorithm
        printErr("bench forward: \(benchmark.config.name), \(benchmark.imageSize) px, batch \(benchmark.batchSize), cut \(layer), "
                 + "conv \(algorithm), BLAS core \(BLASRuntime.coreName), \(BLASRuntime.threads) threads")
        if sweep.threadsSweep { return try sweep.sweep(upTo: threads.threads) { try benchmark.run { printErr("  " + $0) }.imagesPerSecond } }
        let result = try benchmark.run { printErr("  " + $0) }
        print(String(format: "forward: %.2f img/s, %.1f GFLOP/s effective (%.2f GFLOP/img), core %@, peak RSS %@",
                     result.imagesPerSecond, result.effectiveGigaflops, result.gigaflopsPerImage,
                     BLASRuntime.coreName, result.peakResidentBytes.formattedBytes))
        if perLayer { print(result.profile.table) }
    }
}

extension Conv2D.Algorithm: ExpressibleByArgument {}
