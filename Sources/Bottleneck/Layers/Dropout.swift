/// torchvision's `nn.Dropout(p)`: identity in evaluation; in training each element is
/// zeroed with probability p and the survivors scaled by 1/(1-p).
public struct Dropout: Sendable {
    public let probability: Float

    public init(probability: Float = 0.5) {
        precondition(probability >= 0 && probability < 1, "dropout probability must be in [0, 1)")
        self.probability = probability
    }

    /// x [any] -> x [same]. Evaluation mode: unchanged.
    public func forwardEvaluation(_ x: Tensor) -> Tensor { x }

    /// x [any] -> x [same] in place, mask [same]: the factor each element was multiplied by
    /// (0 or 1/(1-p)), kept for `backward`.
    public func forwardTraining(_ x: inout Tensor, mask: inout Tensor, generator: inout SeededGenerator) {
        if mask.shape != x.shape { mask = Tensor(zeros: x.shape) }
        x.data.withUnsafeMutableBufferPointer { values in
            mask.data.withUnsafeMutableBufferPointer { factors in
                forwardTraining(UnsafeBufferPointer(values), into: values, mask: factors, generator: &generator)
            }
        }
    }

    /// source [count] -> destination [count], mask [count] when given. The buffers may be the same
    /// (in place) or the destination a row of a batch being gathered, so the trainer applies dropout
    /// while it copies cached features and never makes a second pass. Pass no mask when nothing below
    /// needs a gradient (the head on cached features).
    ///
    /// As torch: output = x · noise with noise = Bernoulli(1-p) / (1-p), so a dropped inf or NaN stays
    /// NaN; p = 0 copies the input and draws nothing.
    public func forwardTraining(_ source: UnsafeBufferPointer<Float>, into destination: UnsafeMutableBufferPointer<Float>,
                                mask: UnsafeMutableBufferPointer<Float>?, generator: inout SeededGenerator) {
        let count = source.count
        precondition(destination.count == count && (mask?.count ?? count) == count,
                     "dropout: source \(count), destination \(destination.count), mask \(mask?.count ?? count) values")
        guard count > 0 else { return }
        let (input, output) = (source.baseAddress!, destination.baseAddress!)
        guard probability > 0 else {
            if input != UnsafePointer(output) { output.update(from: input, count: count) }
            mask?.update(repeating: 1)
            return
        }
        if let factors = mask?.baseAddress {
            drawFactors(count: count, generator: &generator) { index, factor in
                output[index] = input[index] * factor
                factors[index] = factor
            }
        } else {
            drawFactors(count: count, generator: &generator) { index, factor in output[index] = input[index] * factor }
        }
    }

    /// Calls body(i, 0 or 1/(1-p)) for i in 0..<count, dropping with probability p. Each draw is 32 bits,
    /// so P(drop) is p to 2⁻³². The draws come from four streams seeded off `generator`, taken in turn:
    /// one stream's outputs depend on each other, four independent ones keep the core busy, and the
    /// dropout of a cached row costs little more than its copy.
    @inline(__always)
    private func drawFactors(count: Int, generator: inout SeededGenerator, _ body: (Int, Float) -> Void) {
        let dropBelow = UInt64(min(Double(probability) * 4_294_967_296, Double(UInt32.max)))
        let scaleBits = (1 / (1 - probability)).bitPattern
        // draw - dropBelow borrows into the high half exactly when the element is dropped, so the high
        // half, inverted, masks the scale to itself or to +0 without a branch: a branch on a coin flip
        // is mispredicted half the time and costs more than everything else here.
        @inline(__always) func factor(_ draw: UInt64) -> Float {
            Float(bitPattern: scaleBits & ~UInt32(truncatingIfNeeded: (draw &- dropBelow) >> 32))
        }
        @inline(__always) func emit(_ bits: UInt64, at index: Int) {
            body(index, factor(bits & 0xFFFF_FFFF))
            body(index + 1, factor(bits >> 32))
        }
        var streams = (SeededGenerator(seed: generator.next()), SeededGenerator(seed: generator.next()),
                       SeededGenerator(seed: generator.next()), SeededGenerator(seed: generator.next()))
        let blocks = count / 8
        for block in 0..<blocks {
            let (bits0, bits1, bits2, bits3) = (streams.0.next(), streams.1.next(), streams.2.next(), streams.3.next())
            emit(bits0, at: 8 * block)
            emit(bits1, at: 8 * block + 2)
            emit(bits2, at: 8 * block + 4)
            emit(bits3, at: 8 * block + 6)
        }
        for index in (8 * blocks)..<count { body(index, factor(streams.0.next() & 0xFFFF_FFFF)) }
    }

    /// dy [any], mask [same] from the training forward -> dx [same] in dy's storage: dx = dy · mask.
    public func backward(gradOutput dy: inout Tensor, mask: Tensor) {
        precondition(dy.shape == mask.shape, "dropout backward: gradient \(dy.shape) vs mask \(mask.shape)")
        mask.data.withUnsafeBufferPointer { factors in
            dy.data.withUnsafeMutableBufferPointer { gradients in
                for index in gradients.indices { gradients[index] *= factors[index] }
            }
        }
    }
}
