import Foundation
import BottleneckKernels

/// `bottleneck bench head`: training samples per second of a head on cached features, through the
/// trainer train-head runs (shuffled gather, dropout, forward, loss, backward, SGD with momentum), and
/// the figure the cache exists for: one cached epoch against one epoch of the frozen network run
/// from the images, measured in the same process.
package struct HeadBenchmark: Sendable {
    /// The defaults are PyTorch's reference (pipelines/bench/torch_reference.py head).
    package var rows = 20_000
    package var features = 4096
    package var classes = 10
    package var batchSize = 64
    package var dropout = 0.5
    /// Timed epochs after one untimed; the median is reported.
    package var epochs = 3
    package var threads = availableCores
    /// The frozen network's forward pass to compare with; nil skips it.
    package var forward: ForwardBenchmark? = {
        var forward = ForwardBenchmark.full(batchSize: 8, layer: "fc7", iterations: 1)
        forward.warmup = 1
        return forward
    }()

    package init() {}

    /// Small sizes and the tiny forward network: checks the benchmark runs, measures nothing.
    package static func quick() -> HeadBenchmark {
        var benchmark = HeadBenchmark()
        benchmark.rows = 2_000
        benchmark.epochs = 2
        benchmark.forward = ForwardBenchmark.quick()
        return benchmark
    }

    package struct Result: Sendable {
        /// Median over the timed epochs of training rows per second of optimizer steps.
        package var samplesPerSecond: Double
        var epochSeconds: [Double]
        package var forwardImagesPerSecond: Double?

        /// How many times faster a cached epoch is than one through the frozen network.
        package var speedup: Double? { forwardImagesPerSecond.map { samplesPerSecond / $0 } }
    }

    package func run(progress: (String) -> Void = { _ in }) throws -> Result {
        // Features like fc7's (half of them 0, as after a ReLU), labels uniform; 1 000 more rows validate.
        let validationRows = 1_000
        var generator = SeededGenerator(seed: 1)
        let data = Tensor(shape: [rows + validationRows, features]) { values in
            for index in values.indices { values[index] = max(0, 2 * generator.nextUnitFloat() - 1) }
        }
        let labels = (0..<(rows + validationRows)).map { _ in Int32(generator.next() % UInt64(classes)) }
        var config = VGGConfig.vgg16
        config.hidden = features
        config.classes = classes
        let cut = try CutPoint("fc7", in: config)
        var settings = HeadTrainingSettings()
        settings.epochs = epochs + 1
        settings.batchSize = batchSize
        settings.dropout = dropout
        settings.patience = 0
        settings.threads = threads
        let network = try HeadNetwork.initial(config: config, cut: cut, dropout: Float(dropout), seed: 0,
                                              weights: .random(seed: 0), fingerprint: WeightsIdentity.random(seed: 0).fingerprint)
        let trainer = try HeadTrainer(network: network, settings: settings)
        let featureRows = try FeatureRows(features: data, stem: trainer.applyStem)
        let split = TrainingSplit(rule: .init(source: .folder, seed: 0, validationFraction: 0), trainRows: Array(0..<rows),
                                  validationRows: Array(rows..<(rows + validationRows)))
        var epochSeconds: [Double] = []
        _ = try trainer.train(rows: featureRows, split: split, labels: labels, classes: (0..<classes).map { "class\($0)" }) { record in
            // A trainer times its steps; only records read back from metrics.csv lack the figure.
            let seconds = record.trainSeconds!
            progress(String(format: "epoch %d%@: %.3f s, %.0f samples/s", record.epoch, record.epoch == 1 ? " (untimed)" : "",
                            seconds, Double(rows) / seconds))
            if record.epoch > 1 { epochSeconds.append(seconds) }
        }
        let median = epochSeconds.sorted()[epochSeconds.count / 2]
        let forwardRate = try forward.map { forward in
            progress("forward: \(forward.config.name), \(forward.imageSize) px, batch \(forward.batchSize), cut \(forward.layer)")
            return try forward.run(progress: progress).imagesPerSecond
        }
        return Result(samplesPerSecond: Double(rows) / median, epochSeconds: epochSeconds, forwardImagesPerSecond: forwardRate)
    }
}
