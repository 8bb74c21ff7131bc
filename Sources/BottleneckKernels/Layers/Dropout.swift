/// torchvision's `nn.Dropout(p)`: identity in evaluation; in training each element is
/// zeroed with probability p and the survivors scaled by 1/(1-p).
package struct Dropout: Sendable {
    package let probability: Float

    /// The factors of four neighbours for each pattern of their four keep bits, so that applying a mask
    /// is one table load and one vector multiply per four values, with no branch on a coin flip.
    private let factorsOfKeptBits: [SIMD4<Float>]

    package init(probability: Float = 0.5) {
        precondition(probability >= 0 && probability < 1, "dropout probability must be in [0, 1)")
        self.probability = probability
        let scale = 1 / (1 - probability)
        factorsOfKeptBits = (0..<16).map { bits in SIMD4<Float>((0..<4).map { bits >> $0 & 1 == 1 ? scale : 0 }) }
    }

    /// x [any] -> x [same]. Evaluation mode: unchanged.
    package func forwardEvaluation(_ x: Tensor) -> Tensor { x }

    /// x [any] -> x [same] in place, mask [same]: the factor each element was multiplied by
    /// (0 or 1/(1-p)), kept for `backward`.
    package func forwardTraining(_ x: inout Tensor, mask: inout Tensor, generator: inout SeededGenerator) {
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
    package func forwardTraining(_ source: UnsafeBufferPointer<Float>, into destination: UnsafeMutableBufferPointer<Float>,
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
        let dropBelow = UInt32(min(Double(probability) * 4_294_967_296, Double(UInt32.max)))
        factorsOfKeptBits.withUnsafeBufferPointer { table in
            for groupStart in stride(from: 0, to: count, by: 64) {
                var kept = ~Self.droppedBits(below: dropBelow, generator: &generator)
                let groupEnd = min(groupStart + 64, count)
                var index = groupStart
                while index + 4 <= groupEnd {
                    let factors = table[Int(truncatingIfNeeded: kept & 15)]
                    let values = UnsafeRawPointer(input + index).loadUnaligned(as: SIMD4<Float>.self)
                    UnsafeMutableRawPointer(output + index).storeBytes(of: values * factors, as: SIMD4<Float>.self)
                    if let factorsOut = mask?.baseAddress {
                        UnsafeMutableRawPointer(factorsOut + index).storeBytes(of: factors, as: SIMD4<Float>.self)
                    }
                    kept >>= 4
                    index += 4
                }
                for tail in index..<groupEnd {
                    let factor = table[Int(truncatingIfNeeded: kept & 1)][0]
                    output[tail] = input[tail] * factor
                    mask?[tail] = factor
                    kept >>= 1
                }
            }
        }
    }

    /// 64 independent coin flips, bit i set when element i is dropped: u_i < `below` for 64 uniform
    /// 32-bit u_i, so P(drop) is p to 2⁻³². The u_i are compared bit-serially, most significant bit
    /// first, all 64 at once: each 64-bit draw supplies the next bit of every u_i, and drawing stops as
    /// soon as every comparison is settled. That takes one draw for p = 0.5, two for 0.25, and about
    /// seven on average for any p, against 32 if each u_i were drawn whole: the masks of cached rows
    /// cost little more than their copy.
    @inline(__always)
    private static func droppedBits(below threshold: UInt32, generator: inout SeededGenerator) -> UInt64 {
        var dropped: UInt64 = 0
        var tied: UInt64 = ~0
        var remaining = threshold
        var bit: UInt32 = 1 << 31
        // Once the threshold's remaining bits are all zero, a u_i still tied with it is not below it.
        while tied != 0 && remaining != 0 {
            let draw = generator.next()
            if remaining & bit != 0 {
                dropped |= tied & ~draw
                tied &= draw
                remaining &= ~bit
            } else {
                tied &= ~draw
            }
            bit >>= 1
        }
        return dropped
    }

    /// dy [any], mask [same] from the training forward -> dx [same] in dy's storage: dx = dy · mask.
    package func backward(gradOutput dy: inout Tensor, mask: Tensor) {
        precondition(dy.shape == mask.shape, "dropout backward: gradient \(dy.shape) vs mask \(mask.shape)")
        mask.data.withUnsafeBufferPointer { factors in
            dy.data.withUnsafeMutableBufferPointer { gradients in
                let (factors, gradients) = (factors.baseAddress!, gradients.baseAddress!)
                parallelForChunks(mask.count) { chunk in
                    for index in chunk { gradients[index] *= factors[index] }
                }
            }
        }
    }
}
