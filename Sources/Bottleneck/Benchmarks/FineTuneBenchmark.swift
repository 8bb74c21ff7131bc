import Foundation

/// `bottleneck bench finetune`: full fine-tuning steps (forward, cross-entropy, backward, SGD with
/// momentum) on random data, as `torch_reference.py finetune` times torch's.
public struct FineTuneBenchmark: Sendable {
    public var config: VGGConfig
    public var batchSize: Int
    public var imageSize: Int
    public var iterations: Int
    public var warmup: Int
    /// The highest frozen layer; nil: everything trains.
    public var freezeThrough: String?

    /// VGG16 with a 10-class head at 224 px, as the torch reference.
    public static func full(batchSize: Int = 8, iterations: Int = 3, freezeThrough: String? = nil) -> FineTuneBenchmark {
        var config = VGGConfig.vgg16
        config.classes = 10
        return FineTuneBenchmark(config: config, batchSize: batchSize, imageSize: 224, iterations: iterations, warmup: 1,
                                 freezeThrough: freezeThrough)
    }

    /// A network small enough to finish in a second, to check the benchmark itself runs.
    public static func quick(freezeThrough: String? = nil) -> FineTuneBenchmark {
        FineTuneBenchmark(config: VGGConfig.vgg16.narrowed(by: 4, hidden: 256, classes: 10), batchSize: 4, imageSize: 64,
                          iterations: 3, warmup: 1, freezeThrough: freezeThrough)
    }

    public struct Result: Sendable {
        public var imagesPerSecond: Double
        public var secondsPerStep: [Double]
        public var peakResidentBytes: Int
        public var trainableParameters: Int
    }

    public func run(progress: (String) -> Void = { _ in }) throws -> Result {
        let frozenThrough = try freezeThrough.map { try CutPoint($0, in: config).position } ?? -1
        var network = try FineTuneNetwork(VGG.randomlyInitialized(config: config, seed: 0), dropout: 0.5, frozenThrough: frozenThrough)
        var generator = SeededGenerator(seed: 1)
        let images = Tensor(shape: [batchSize, 3, imageSize, imageSize]) { values in
            for index in values.indices { values[index] = generator.nextNormal() }
        }
        let labels = (0..<batchSize).map { Int32($0 % config.classes) }
        var optimizer = SGD(momentum: 0.9)
        var timings: [Double] = []
        for iteration in 0..<(warmup + iterations) {
            let start = ResourceUsage.now
            let outcome = network.trainStep(images: images, labels: labels, optimizer: &optimizer, learningRate: { _ in 1e-3 }) { row, position in
                TrainingRandomness.dropoutGenerator(seed: 0, epoch: iteration, row: row, layerPosition: position)
            }
            let seconds = ResourceUsage.now - start
            guard outcome.loss.isFinite else { throw TrainingError(.diverged, "the benchmark's loss became \(outcome.loss.mean)") }
            if iteration >= warmup {
                timings.append(seconds)
                progress(String(format: "step %d/%d: %.3f s (%.2f img/s), loss %.4f", iteration - warmup + 1, iterations,
                                seconds, Double(batchSize) / seconds, outcome.loss.mean))
            }
        }
        let median = timings.sorted()[timings.count / 2]
        return Result(imagesPerSecond: Double(batchSize) / median, secondsPerStep: timings,
                      peakResidentBytes: ResourceUsage.peakResidentBytes, trainableParameters: network.trainableParameterCount)
    }
}
