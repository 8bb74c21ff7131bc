/// Fully connected layer, torchvision's `nn.Linear`: y = x · weightᵀ + bias.
///
/// Every function has an `into:` form that writes a caller-owned tensor, so a training loop
/// keeps its activations and gradients across steps instead of allocating them per batch;
/// the target is reallocated only when its shape changes (a short last batch).
package struct Linear: Sendable {
    /// [outFeatures, inFeatures]
    package var weight: Tensor
    /// [outFeatures]
    package var bias: Tensor

    package var inFeatures: Int { weight.shape[1] }
    package var outFeatures: Int { weight.shape[0] }

    package init(weight: Tensor, bias: Tensor) {
        precondition(weight.rank == 2 && bias.shape == [weight.shape[0]], "linear needs weight [out, in], bias [out]")
        self.weight = weight
        self.bias = bias
    }

    /// x [N, inFeatures] (any shape whose trailing size is inFeatures per row) -> y [N, outFeatures]
    package func forward(_ x: Tensor) -> Tensor {
        var y = Tensor(zeros: [])
        forward(x, into: &y)
        return y
    }

    /// Rows of x per block when `GemmSplit.blocks` cuts a forward or an input gradient, and columns of
    /// dWeight per block of a parameter gradient: small enough for a block's operands to stay in a
    /// core's cache, large enough for OpenBLAS's kernels to run at speed (measured on a 64 × 4096 × 10 head).
    static let rowsPerBlock = 16
    static let columnsPerBlock = 1024

    /// x [N, inFeatures] (any shape whose trailing size is inFeatures per row) -> y [N, outFeatures]
    package func forward(_ x: Tensor, into y: inout Tensor, split: GemmSplit = .whole) {
        let batch = x.shape[0]
        precondition(x.count == batch * inFeatures, "linear expects [N, \(inFeatures)], got \(x.shape)")
        let (inFeatures, outFeatures) = (self.inFeatures, self.outFeatures)
        if y.shape != [batch, outFeatures] { y = Tensor(zeros: [batch, outFeatures]) }
        y.data.withUnsafeMutableBufferPointer { out in
            bias.data.withUnsafeBufferPointer { biases in
                for row in 0..<batch {
                    (out.baseAddress! + row * outFeatures).update(from: biases.baseAddress!, count: outFeatures)
                }
            }
            x.data.withUnsafeBufferPointer { input in
                weight.data.withUnsafeBufferPointer { weights in
                    let (input, weights, out) = (input.baseAddress!, weights.baseAddress!, out.baseAddress!)
                    split.forEachBlock(of: batch, blockSize: Self.rowsPerBlock) { rows in
                        sgemm(transposeB: true, m: rows.count, n: outFeatures, k: inFeatures,
                              a: input + rows.lowerBound * inFeatures, b: weights, beta: 1, c: out + rows.lowerBound * outFeatures)
                    }
                }
            }
        }
    }

    /// x [N, in], dy [N, out] -> dx [N, in] (nil unless `computingGradInput`), dWeight [out, in], dBias [out].
    /// Skip dx for the first trainable layer: nothing below it learns, and dx is the largest gemm.
    package func backward(input x: Tensor, gradOutput dy: Tensor, computingGradInput: Bool = true)
        -> (gradInput: Tensor?, gradWeight: Tensor, gradBias: Tensor) {
        var gradWeight = Tensor(zeros: [])
        var gradBias = Tensor(zeros: [])
        parameterGradients(input: x, gradOutput: dy, weight: &gradWeight, bias: &gradBias)
        guard computingGradInput else { return (nil, gradWeight, gradBias) }
        var gradInput = Tensor(zeros: [])
        inputGradient(gradOutput: dy, into: &gradInput)
        return (gradInput, gradWeight, gradBias)
    }

    /// x [N, in], dy [N, out] -> dWeight [out, in] = dyᵀ · x, dBias [out] = Σ_n dy[n, :].
    /// Overwrites (does not accumulate into) the two gradients.
    package func parameterGradients(input x: Tensor, gradOutput dy: Tensor,
                                   weight gradWeight: inout Tensor, bias gradBias: inout Tensor, split: GemmSplit = .whole) {
        let batch = x.shape[0]
        let (inFeatures, outFeatures) = (self.inFeatures, self.outFeatures)
        precondition(x.count == batch * inFeatures, "linear backward expects x [N, \(inFeatures)], got \(x.shape)")
        precondition(dy.shape == [batch, outFeatures], "linear backward expects dy [\(batch), \(outFeatures)], got \(dy.shape)")
        if gradWeight.shape != weight.shape { gradWeight = Tensor(zeros: weight.shape) }
        if gradBias.shape != bias.shape { gradBias = Tensor(zeros: bias.shape) }
        dy.data.withUnsafeBufferPointer { gradOut in
            x.data.withUnsafeBufferPointer { input in
                gradWeight.data.withUnsafeMutableBufferPointer { gradWeights in
                    let (gradOut, input, gradWeights) = (gradOut.baseAddress!, input.baseAddress!, gradWeights.baseAddress!)
                    split.forEachBlock(of: inFeatures, blockSize: Self.columnsPerBlock) { columns in
                        sgemm(transposeA: true, m: outFeatures, n: columns.count, k: batch, a: gradOut,
                              b: input + columns.lowerBound, ldb: inFeatures, c: gradWeights + columns.lowerBound, ldc: inFeatures)
                    }
                }
            }
            // A column sum of N×out values: a row-by-row vector add beats a gemm against a ones vector.
            gradBias.data.withUnsafeMutableBufferPointer { gradBiases in
                gradBiases.update(repeating: 0)
                for row in 0..<batch {
                    let gradRow = gradOut.baseAddress! + row * outFeatures
                    for column in 0..<outFeatures { gradBiases[column] += gradRow[column] }
                }
            }
        }
    }

    /// dy [N, out] -> dx [N, in] = dy · weight
    package func inputGradient(gradOutput dy: Tensor, into dx: inout Tensor, split: GemmSplit = .whole) {
        let batch = dy.shape[0]
        let (inFeatures, outFeatures) = (self.inFeatures, self.outFeatures)
        precondition(dy.shape == [batch, outFeatures], "linear backward expects dy [N, \(outFeatures)], got \(dy.shape)")
        if dx.shape != [batch, inFeatures] { dx = Tensor(zeros: [batch, inFeatures]) }
        dy.data.withUnsafeBufferPointer { gradOut in
            weight.data.withUnsafeBufferPointer { weights in
                dx.data.withUnsafeMutableBufferPointer { gradIn in
                    let (gradOut, weights, gradIn) = (gradOut.baseAddress!, weights.baseAddress!, gradIn.baseAddress!)
                    split.forEachBlock(of: batch, blockSize: Self.rowsPerBlock) { rows in
                        sgemm(m: rows.count, n: inFeatures, k: outFeatures, a: gradOut + rows.lowerBound * outFeatures,
                              b: weights, c: gradIn + rows.lowerBound * inFeatures)
                    }
                }
            }
        }
    }
}
