import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct FinetuneBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finetune",
        abstract: "Images per second and peak RSS of full fine-tuning steps (random weights and data, no files needed).",
        discussion: """
        Full size by default: VGG16 with a 10-class head, 224 px, batch 8, SGD with momentum 0.9: what \
        'python3 pipelines/bench/torch_reference.py finetune' times. Peak RSS is the whole process's, so run one \
        variant per command to compare them. Measure beside PyTorch in the same session: the machine is noisy.

        Examples:
          bottleneck bench finetune
          bottleneck bench finetune --freeze-through conv4_3
          bottleneck bench finetune --freeze-through fc7
        """)

    @Option(parsing: .unconditional, help: "Images per step.") var batchSize = 8
    @Option(parsing: .unconditional, help: "Timed steps; the median is reported.") var iterations = 3
    @Option(help: ArgumentHelp("Freeze this layer and all below it (conv4_3, fc7).", valueName: "LAYER")) var freezeThrough: String?
    @Flag(help: "A tiny network at 64 px, to check the benchmark runs (seconds, not a measurement).") var quick = false
    @Flag(help: "Also print each layer's forward, input-gradient, weight-gradient and optimizer time per step.") var perLayer = false
    @OptionGroup var threads: ThreadsOption
    @OptionGroup var sweep: ThreadsSweepFlag

    func run() throws {
        threads.apply()
        var benchmark = quick ? FineTuneBenchmark.quick(freezeThrough: freezeThrough)
            : FineTuneBenchmark.full(batchSize: batchSize, iterations: iterations, freezeThrough: freezeThrough)
        if quick { benchmark.batchSize = min(batchSize, benchmark.batchSize) }
        printErr("bench finetune: \(benchmark.config.name), \(benchmark.imageSize) px, batch \(benchmark.batchSize), "
                 + "frozen through \(freezeThrough ?? "nothing"), BLAS core \(BLASRuntime.coreName), \(BLASRuntime.threads) threads")
        if sweep.threadsSweep { return try sweep.sweep(upTo: threads.threads) { try benchmark.run { printErr("  " + $0) }.imagesPerSecond } }
        benchmark.perLayer = perLayer
        let result = try benchmark.run { printErr("  " + $0) }
        print(String(format: "finetune step: %.2f img/s (frozen through %@, %d trainable parameters), peak RSS %@",
                     result.imagesPerSecond, freezeThrough ?? "nothing", result.trainableParameters,
                     result.peakResidentBytes.formattedBytes))
        if let profile = result.profile { print(profile.table) }
    }
}
