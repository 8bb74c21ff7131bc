import Foundation
import BottleneckKernels

/// `bottleneck bench forward`: the frozen network's throughput, the figure every
/// other job is measured against.
package struct ForwardBenchmark: Sendable {
    package var config: VGGConfig
    package var layer: String
    package var batchSize: Int
    package var imageSize: Int
    package var iterations: Int
    var warmup: Int
    /// The convolution lowering to time (`.auto` is what extraction runs).
    package var algorithm: Conv2D.Algorithm = .auto

    package static func full(batchSize: Int = 8, layer: String = "fc7", iterations: Int = 3) -> ForwardBenchmark {
        ForwardBenchmark(config: .vgg16, layer: layer, batchSize: batchSize, imageSize: 224, iterations: iterations, warmup: 1)
    }

    /// A network small enough to finish in a second, to check the benchmark itself runs.
    package static func quick(layer: String = "fc7") -> ForwardBenchmark {
        ForwardBenchmark(config: VGGConfig.vgg16.narrowed(by: 4, hidden: 256, classes: 10),
                         layer: layer, batchSize: 4, imageSize: 64, iterations: 3, warmup: 1)
    }

    package struct Result: Sendable {
        package var imagesPerSecond: Double
        package var gigaflopsPerImage: Double
        var secondsPerBatch: [Double]
        package var peakResidentBytes: Int
        /// Median seconds per batch of each layer, and the rest of the median batch.
        package var profile: LayerProfile

        package var effectiveGigaflops: Double { imagesPerSecond * gigaflopsPerImage }
    }

    package func run(progress: (String) -> Void = { _ in }) throws -> Result {
        let cut = try CutPoint(layer, in: config)
        let network = VGG.randomlyInitialized(config: config, through: cut, seed: 0)
        var generator = SeededGenerator(seed: 1)
        let input = Tensor(shape: [batchSize, 3, imageSize, imageSize]) { values in
            for index in values.indices { values[index] = generator.nextNormal() }
        }
        var timings: [Double] = []
        var layerTimings: [Int: [Double]] = [:]
        for iteration in 0..<(warmup + iterations) {
            let start = ContinuousClock.now
            _ = try Conv2D.$algorithm.withValue(algorithm) {
                try network.forward(input, through: cut) { layer, seconds in
                    if iteration >= warmup { layerTimings[layer.position, default: []].append(seconds) }
                }
            }
            let seconds = start.secondsElapsed
            if iteration >= warmup {
                timings.append(seconds)
                progress(String(format: "batch %d/%d: %.3f s (%.2f img/s)", iteration - warmup + 1, iterations,
                                seconds, Double(batchSize) / seconds))
            }
        }
        let median = timings.sorted()[timings.count / 2]
        return Result(imagesPerSecond: Double(batchSize) / median,
                      gigaflopsPerImage: Double(config.forwardFlops(through: cut, imageSize: imageSize)) / 1e9,
                      secondsPerBatch: timings,
                      peakResidentBytes: ResourceUsage.peakResidentBytes,
                      profile: LayerProfile(forward: layerTimings.keys.sorted().map { position in
                          let samples = layerTimings[position]!.sorted()
                          return (config.layers[position], samples[samples.count / 2])
                      }, stepSeconds: median))
    }
}

extension VGGConfig {
    /// Multiply-adds counted as two FLOPs, convs and linears only (VGG16 at 224 px: 30.9 GFLOP to fc8).
    func forwardFlops(through cut: CutPoint, imageSize: Int) -> Int {
        var size = imageSize
        var flops = 0
        for layer in layers.prefix(cut.position + 1) {
            switch layer.kind {
            case .conv(let inChannels, let outChannels): flops += 2 * inChannels * 9 * outChannels * size * size
            case .maxPool: size /= 2
            case .linear(let inFeatures, let outFeatures): flops += 2 * inFeatures * outFeatures
            default: break
            }
        }
        return flops
    }
}
