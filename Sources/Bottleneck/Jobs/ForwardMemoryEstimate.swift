import BottleneckKernels

/// The jobs' side of the memory check: what a forward through the network (extract, predict, evaluate) holds.
extension MemoryEstimate {
    /// An upper estimate of the bytes a forward of `batchSize` images needs: fine-tuning's estimate with every
    /// layer frozen (parameters, the largest activations alive at once, the fixed overhead), or only the fixed
    /// overhead without a network (`--layer input`), plus the decoder's batches of `imageShape` (two buffered
    /// and one being filled).
    static func inferenceBytes(config: VGGConfig?, imageShape: [Int], batchSize: Int) -> Int {
        let network = config.map {
            FineTuneNetwork.estimatedStepBytes(config: $0, imageSize: imageShape.last ?? 0, batchSize: batchSize,
                                               frozenThrough: Int.max, optimizerCopies: 0)
        } ?? FineTuneNetwork.fixedOverheadBytes
        return network + (BatchDecoder.capacity + 1) * batchSize * imageShape.reduce(1, *) * MemoryLayout<Float>.size
    }

    /// The one-line refusal when a forward of `batchSize` images through `config` (nil: no network) needs
    /// more than `limit` (nil: MemAvailable), else nil.
    static func refusal(forward config: VGGConfig?, imageShape: [Int], batchSize: Int, limit: Int?) -> String? {
        let needed = inferenceBytes(config: config, imageShape: imageShape, batchSize: batchSize)
        guard let available = limit ?? availableBytes(), needed > available else { return nil }
        return "a batch of \(batchSize) images needs about \(needed.formattedBytes), but only \(available.formattedBytes) "
            + "is available; use a smaller --batch-size"
    }
}
