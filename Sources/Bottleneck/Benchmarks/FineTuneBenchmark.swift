import Foundation
import BottleneckKernels

/// `bottleneck bench finetune`: full fine-tuning steps (forward, cross-entropy, backward, SGD with
/// momentum) on random data, as `torch_reference.py finetune` times torch's.
package struct FineTuneBenchmark: Sendable {
    package var config: VGGConfig
    package var batchSize: Int
    package var imageSize: Int
    package var iterations: Int
    var warmup: Int
    /// The highest frozen layer; nil: everything trains.
    package var freezeThrough: String?
    /// Whether to time each layer's phases (`--per-layer`).
    package var perLayer = false

    /// VGG16 with a 10-class head at 224 px, as the torch reference.
    package static func full(batchSize: Int = 8, iterations: Int = 3, freezeThrough: String? = nil) -> FineTuneBenchmark {
        var config = VGGConfig.vgg16
        config.classes = 10
        return FineTuneBenchmark(config: config, batchSize: batchSize, imageSize: 224, iterations: iterations, warmup: 1,
                                 freezeThrough: freezeThrough)
    }

    /// A network small enough to finish in a second, to check the benchmark itself runs.
    package static func quick(freezeThrough: String? = nil) -> FineTuneBenchmark {
        FineTuneBenchmark(config: VGGConfig.vgg16.narrowed(by: 4, hidden: 256, classes: 10), batchSize: 4, imageSize: 64,
                          iterations: 3, warmup: 1, freezeThrough: freezeThrough)
    }

    package struct Result: Sendable {
        package var imagesPerSecond: Double
        var secondsPerStep: [Double]
        package var peakResidentBytes: Int
        package var trainableParameters: Int
        /// Each layer's seconds per step, the mean over the timed steps; nil unless `perLayer`.
        package var profile: LayerProfile?
    }

    package func run(progress: (String) -> Void = { _ in }) throws -> Result {
        let frozenThrough = try freezeThrough.map { try CutPoint($0, in: config).position } ?? -1
        var network = try FineTuneNetwork(VGG.randomlyInitialized(config: config, seed: 0), dropout: 0.5, frozenThrough: frozenThrough)
        var generator = SeededGenerator(seed: 1)
        let images = Tensor(shape: [batchSize, 3, imageSize, imageSize]) { values in
            for index in values.indices { values[index] = generator.nextNormal() }
        }
        let labels = (0..<batchSize).map { Int32($0 % config.classes) }
        var optimizer = SGD(momentum: 0.9)
        var timings: [Double] = []
        let profile = perLayer ? StepProfile(layers: config.layers.count) : nil
        for iteration in 0..<(warmup + iterations) {
            let start = ContinuousClock.now
            let outcome = network.trainStep(images: images, labels: labels, optimizer: &optimizer, learningRate: { _ in 1e-3 },
                                            profile: iteration >= warmup ? profile : nil) { row, position in
                TrainingRandomness.dropoutGenerator(seed: 0, epoch: iteration, row: row, layerPosition: position)
            }
            let seconds = start.secondsElapsed
            guard outcome.loss.isFinite else { throw TrainingError(.diverged, "the benchmark's loss became \(outcome.loss.mean)") }
            if iteration >= warmup {
                timings.append(seconds)
                progress(String(format: "step %d/%d: %.3f s (%.2f img/s), loss %.4f", iteration - warmup + 1, iterations,
                                seconds, Double(batchSize) / seconds, outcome.loss.mean))
            }
        }
        let median = timings.sorted()[timings.count / 2]
        return Result(imagesPerSecond: Double(batchSize) / median, secondsPerStep: timings,
                      peakResidentBytes: ResourceUsage.peakResidentBytes, trainableParameters: network.trainableParameterCount,
                      profile: profile.map { profile in
                          LayerProfile(profile, steps: iterations, layers: config.layers,
                                       stepSeconds: timings.reduce(0, +) / Double(iterations))
                      })
    }
}
