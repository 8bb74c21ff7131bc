import Foundation

/// 2-D convolution, torchvision's `nn.Conv2d` with bias, lowered to gemm through im2col, or
/// through Winograd F(4x4, 3x3) for 3x3 / stride 1 / padding 1 layers where that is faster. Backward: the
/// parameter gradients through the same lowering as the forward (Winograd's or im2col tiles), the input gradient as
/// a forward of the flipped kernels.
package struct Conv2D: Sendable {
    /// [outChannels, inChannels, kernel, kernel]
    package var weight: Tensor {
        didSet { winogradFilters = WinogradFilterCache() }
    }
    /// [outChannels]
    package var bias: Tensor
    package let kernel: Int
    package let stride: Int
    package let padding: Int

    /// The Winograd-transformed weights, made on the first Winograd forward; replaced (emptied) with
    /// every change of `weight`, so a forward never sees filters of older weights.
    private var winogradFilters = WinogradFilterCache()

    /// How `forward` lowers the convolution.
    package enum Algorithm: String, Sendable, CaseIterable {
        /// Winograd for 3x3 / stride 1 / padding 1 layers with enough input channels to pay off
        /// (measured: conv1_1's 3 channels run faster through im2col), im2col for the rest.
        case auto
        case im2col
        /// Winograd for every 3x3 / stride 1 / padding 1 layer; other shapes still use im2col.
        case winograd
    }

    /// The algorithm in force for forwards run inside `Conv2D.$algorithm.withValue(...) { }`; task-local
    /// so a test or benchmark comparing paths does not change the algorithm of concurrent work.
    @TaskLocal package static var algorithm: Algorithm = .auto

    /// Fewest input channels for which `.auto` picks Winograd (measured at 112 px, batch 8, 64 outputs:
    /// 4 channels 7.1 ms im2col against 9.1 Winograd, 8 channels 13.6 against 11.3).
    static let winogradMinimumInputChannels = 8

    /// The lowering this layer's forward runs under the current `Conv2D.algorithm`: `.im2col` or `.winograd`.
    var resolvedAlgorithm: Algorithm {
        Self.resolvedAlgorithm(kernel: kernel, stride: stride, padding: padding, inChannels: inChannels)
    }

    /// The lowering of a convolution of this shape under the current `Conv2D.algorithm`.
    static func resolvedAlgorithm(kernel: Int, stride: Int, padding: Int, inChannels: Int) -> Algorithm {
        guard kernel == 3, stride == 1, padding == 1 else { return .im2col }
        switch algorithm {
        case .auto: return inChannels >= winogradMinimumInputChannels ? .winograd : .im2col
        case .im2col, .winograd: return algorithm
        }
    }

    package var inChannels: Int { weight.shape[1] }
    package var outChannels: Int { weight.shape[0] }

    package init(weight: Tensor, bias: Tensor, stride: Int = 1, padding: Int = 1) {
        precondition(weight.rank == 4 && weight.shape[2] == weight.shape[3], "conv weight must be [out, in, k, k]")
        precondition(bias.shape == [weight.shape[0]], "conv bias must be [out]")
        self.weight = weight
        self.bias = bias
        self.kernel = weight.shape[2]
        self.stride = stride
        self.padding = padding
    }

    package func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        ((height + 2 * padding - kernel) / stride + 1, (width + 2 * padding - kernel) / stride + 1)
    }

    /// Bytes of im2col buffer per tile: small enough to stay in cache between im2col and gemm.
    static let tileBytes = 4 << 20

    /// x [N, Cin, H, W] -> y [N, Cout, Ho, Wo], with ReLU applied in the same pass when `fusingReLU`.
    /// The output is cut into tiles (one image, a band of output rows); each core takes tiles
    /// in turn: col [Cin*k*k, band] = im2col(x[n], rows); y[n][:, band] = weight · col + bias.
    package func forward(_ x: Tensor, fusingReLU: Bool = false) -> Tensor {
        forward(x, fusingReLU: fusingReLU, mask: nil)
    }

    /// As `forward(_:fusingReLU:)`, each output then zeroed where `mask` [N, Cout, Ho, Wo] is not > 0.
    private func forward(_ x: Tensor, fusingReLU: Bool, mask: UnsafePointer<Float>?) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inChannels,
                     "conv expects [N, \(inChannels), H, W], got \(x.shape)")
        if resolvedAlgorithm == .winograd {
            return Winograd.convolve(x, filters: winogradFilters.filters(for: weight), bias: bias, fusingReLU: fusingReLU,
                                     mask: mask)
        }
        let (batch, height, width) = (x.shape[0], x.shape[2], x.shape[3])
        let (outHeight, outWidth) = outputSize(height: height, width: width)
        let (outChannels, plane, patch) = (self.outChannels, outHeight * outWidth, inChannels * kernel * kernel)
        let rowsPerTile = max(1, min(outHeight, Self.tileBytes / (patch * outWidth * MemoryLayout<Float>.size)))
        let tilesPerImage = (outHeight + rowsPerTile - 1) / rowsPerTile
        let tiles = batch * tilesPerImage
        let workers = min(tiles, availableCores)
        var columns = Self.scratch(count: workers * patch * rowsPerTile * outWidth)
        return Tensor(shape: [batch, outChannels, outHeight, outWidth]) { out in
            x.data.withUnsafeBufferPointer { input in
                weight.data.withUnsafeBufferPointer { weights in
                    bias.data.withUnsafeBufferPointer { biases in
                        columns.withUnsafeMutableBufferPointer { columnBuffer in
                            let shared = (input.baseAddress!, weights.baseAddress!, biases.baseAddress!,
                                                            columnBuffer.baseAddress!, out.baseAddress!)
                            BLASThreads.withSingleThreadedGemm {
                                parallelFor(workers) { worker in
                                    let (input, weights, biases, columnBase, out) = shared
                                    let col = columnBase + worker * patch * rowsPerTile * outWidth
                                    for tile in Swift.stride(from: worker, to: tiles, by: workers) {
                                        let image = tile / tilesPerImage
                                        let firstRow = (tile % tilesPerImage) * rowsPerTile
                                        let rows = min(rowsPerTile, outHeight - firstRow)
                                        let band = rows * outWidth
                                        im2col(input + image * inChannels * height * width, height: height, width: width,
                                               outputRows: firstRow..<(firstRow + rows), into: col)
                                        let offset = image * outChannels * plane + firstRow * outWidth
                                        sgemm(m: outChannels, n: band, k: patch, a: weights, b: col, c: out + offset, ldc: plane)
                                        addBias(biases, to: out + offset, channels: outChannels, count: band, rowStride: plane,
                                                fusingReLU: fusingReLU, mask: mask.map { $0 + offset })
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// x [N, Cin, H, W] (the forward's input), dy [N, Cout, Ho, Wo] -> dWeight [Cout, Cin, k, k] = Σ dy · colᵀ,
    /// dBias [Cout] = Σ dy over images and positions. Overwrites (does not accumulate into) the two gradients.
    ///
    /// Tiled like the forward: each core takes (image, band of output rows) tiles in turn, im2cols the band
    /// and adds dy_band [Cout, band] · col [patch, band]ᵀ to a dW of its own with a single-threaded gemm;
    /// the per-core partials are summed at the end. A layer with fewer tiles than cores (conv5 at batch 8: one per
    /// image) has its images cut into bands until every core has one.
    package func parameterGradients(input x: Tensor, gradOutput dy: Tensor, weight gradWeight: inout Tensor,
                                   bias gradBias: inout Tensor) {
        if resolvedAlgorithm == .winograd {
            return Winograd.filterGradient(input: x, gradOutput: dy, weight: &gradWeight, bias: &gradBias)
        }
        let (batch, height, width) = (x.shape[0], x.shape[2], x.shape[3])
        let (outHeight, outWidth) = outputSize(height: height, width: width)
        let (outChannels, plane, patch) = (self.outChannels, outHeight * outWidth, inChannels * kernel * kernel)
        precondition(x.rank == 4 && x.shape[1] == inChannels, "conv backward expects x [N, \(inChannels), H, W], got \(x.shape)")
        precondition(dy.shape == [batch, outChannels, outHeight, outWidth],
                     "conv backward: input \(x.shape) but gradient \(dy.shape)")
        let bandsForAllCores = (availableCores + batch - 1) / batch
        let rowsPerTile = max(1, min(outHeight / bandsForAllCores, Self.tileBytes / (patch * outWidth * MemoryLayout<Float>.size)))
        let tilesPerImage = (outHeight + rowsPerTile - 1) / rowsPerTile
        let tiles = batch * tilesPerImage
        let workers = min(tiles, availableCores)
        let weightCount = outChannels * patch
        // Worker 0 accumulates straight into gradWeight; the others into their own slices of this. Each zeroes its
        // own in the parallel region: zeroed up front, they would be a serial pass over the weights per worker.
        var partialWeights = Self.scratch(count: (workers - 1) * weightCount)
        var partialBiases = [Double](repeating: 0, count: workers * outChannels)
        var columns = Self.scratch(count: workers * patch * rowsPerTile * outWidth)
        if gradWeight.shape != weight.shape { gradWeight = Tensor(zeros: weight.shape) }
        x.data.withUnsafeBufferPointer { input in
            dy.data.withUnsafeBufferPointer { gradOut in
                gradWeight.data.withUnsafeMutableBufferPointer { gradWeights in
                    partialWeights.withUnsafeMutableBufferPointer { partials in
                        partialBiases.withUnsafeMutableBufferPointer { biasSums in
                            columns.withUnsafeMutableBufferPointer { columnBuffer in
                                let shared = (input.baseAddress!, gradOut.baseAddress!, gradWeights.baseAddress!,
                                                                partials.baseAddress, biasSums.baseAddress!, columnBuffer.baseAddress!)
                                BLASThreads.withSingleThreadedGemm {
                                    parallelFor(workers) { worker in
                                        let (input, gradOut, gradWeights, partials, biasSums, columnBase) = shared
                                        let target = worker == 0 ? gradWeights : partials! + (worker - 1) * weightCount
                                        let biasTarget = biasSums + worker * outChannels
                                        let col = columnBase + worker * patch * rowsPerTile * outWidth
                                        target.update(repeating: 0, count: weightCount)
                                        for tile in Swift.stride(from: worker, to: tiles, by: workers) {
                                            let image = tile / tilesPerImage
                                            let firstRow = (tile % tilesPerImage) * rowsPerTile
                                            let band = min(rowsPerTile, outHeight - firstRow) * outWidth
                                            im2col(input + image * inChannels * height * width, height: height, width: width,
                                                   outputRows: firstRow..<(firstRow + band / outWidth), into: col)
                                            let gradBand = gradOut + image * outChannels * plane + firstRow * outWidth
                                            sgemm(transposeB: true, m: outChannels, n: patch, k: band,
                                                  a: gradBand, lda: plane, b: col, ldb: band, beta: 1, c: target)
                                            for channel in 0..<outChannels {
                                                let row = gradBand + channel * plane
                                                var sum: Float = 0
                                                for index in 0..<band { sum += row[index] }
                                                biasTarget[channel] += Double(sum)
                                            }
                                        }
                                    }
                                }
                                // In worker order for every element, so the sum is the same on any number of threads.
                                let (gradWeights, partials) = (gradWeights.baseAddress!, partials.baseAddress)
                                parallelForChunks(workers > 1 ? weightCount : 0) { chunk in
                                    for worker in 1..<workers {
                                        let partial = partials! + (worker - 1) * weightCount
                                        for index in chunk { gradWeights[index] += partial[index] }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        gradBias = Tensor(shape: [outChannels]) { biases in
            for channel in 0..<outChannels {
                var sum = 0.0
                for worker in 0..<workers { sum += partialBiases[worker * outChannels + channel] }
                biases[channel] = Float(sum)
            }
        }
    }

    /// dy [N, Cout, Ho, Wo] -> dx [N, Cin, H, W], the transposed convolution of dy. For stride 1 that is
    /// itself a convolution: of dy, padded by k-1-padding, with the kernels flipped in both axes and the
    /// channel axes swapped, so it runs through `forward` and gets its tiling (and Winograd) for free.
    ///
    /// `reluOutput` [N, Cin, H, W]: this layer's input is that ReLU's output, and dx is the ReLU's backward too, kept
    /// where the output is > 0 (as `ReLU.backward`), in the same pass.
    package func inputGradient(gradOutput dy: Tensor, throughReLUWithOutput reluOutput: Tensor? = nil) -> Tensor {
        precondition(stride == 1, "conv input gradient is implemented for stride 1 (VGG's), not \(stride)")
        precondition(dy.rank == 4 && dy.shape[1] == outChannels, "conv backward expects dy [N, \(outChannels), Ho, Wo], got \(dy.shape)")
        let (inChannels, outChannels, kernel) = (self.inChannels, self.outChannels, self.kernel)
        let transposedPadding = kernel - 1 - padding
        func convolve(mask: UnsafePointer<Float>?) -> Tensor {
            let bias = Tensor(zeros: [inChannels])
            if Self.resolvedAlgorithm(kernel: kernel, stride: 1, padding: transposedPadding, inChannels: outChannels) == .winograd {
                // Transformed straight from the weights, without the tensor of turned filters that im2col needs.
                let filters = Winograd.transformFilters(weight, transposingAndFlipping: true)
                return Winograd.convolve(dy, filters: filters, bias: bias, fusingReLU: false, mask: mask)
            }
            return Conv2D(weight: transposedTurnedWeight(), bias: bias, stride: 1, padding: transposedPadding)
                .forward(dy, fusingReLU: false, mask: mask)
        }
        guard let reluOutput else { return convolve(mask: nil) }
        let (height, width) = (dy.shape[2] + 2 * transposedPadding - kernel + 1, dy.shape[3] + 2 * transposedPadding - kernel + 1)
        precondition(reluOutput.shape == [dy.shape[0], inChannels, height, width],
                     "conv backward: ReLU output \(reluOutput.shape) for gradient \(dy.shape)")
        return reluOutput.data.withUnsafeBufferPointer { convolve(mask: $0.baseAddress!) }
    }

    /// weight [Cout, Cin, k, k] -> [Cin, Cout, k, k], each filter turned by 180°: the input gradient's convolution.
    private func transposedTurnedWeight() -> Tensor {
        let (inChannels, outChannels, taps) = (self.inChannels, self.outChannels, kernel * kernel)
        return Tensor(shape: [inChannels, outChannels, kernel, kernel]) { turned in
            weight.data.withUnsafeBufferPointer { weights in
                let (weights, turned) = (weights.baseAddress!, turned.baseAddress!)
                parallelForChunks(inChannels, minimumParallelCount: 64) { inputs in
                    for input in inputs {
                        for output in 0..<outChannels {
                            let source = weights + (output * inChannels + input) * taps
                            let target = turned + (input * outChannels + output) * taps
                            for tap in 0..<taps { target[tap] = source[taps - 1 - tap] }
                        }
                    }
                }
            }
        }
    }

    /// Floats for buffers whose every element is written before it is read (im2col columns, per-worker partial
    /// sums the worker zeroes), left unzeroed: zeroing them here is a serial pass the parallel region then repeats.
    private static func scratch(count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }
    }

    /// image [Cin, H, W] -> col [(ci, ky, kx), outputRows × Wo]. Padding positions are written
    /// as zeros, so the buffer needs no clearing.
    func im2col(_ image: UnsafePointer<Float>, height: Int, width: Int, outputRows: Range<Int>,
                into col: UnsafeMutablePointer<Float>) {
        let outWidth = outputSize(height: height, width: width).width
        let rowLength = outputRows.count * outWidth
        for channel in 0..<inChannels {
            let plane = image + channel * height * width
            for ky in 0..<kernel {
                for kx in 0..<kernel {
                    let row = col + ((channel * kernel + ky) * kernel + kx) * rowLength
                    // Valid ox satisfy 0 <= ox*stride + kx - padding < width.
                    let firstValid = min(outWidth, max(0, (padding - kx + stride - 1) / stride))
                    let lastValid = max(firstValid, min(outWidth, (width + padding - kx + stride - 1) / stride))
                    for (bandRow, oy) in outputRows.enumerated() {
                        let iy = oy * stride + ky - padding
                        let destination = row + bandRow * outWidth
                        guard iy >= 0 && iy < height else {
                            destination.update(repeating: 0, count: outWidth)
                            continue
                        }
                        let source = plane + iy * width + kx - padding
                        destination.update(repeating: 0, count: firstValid)
                        if stride == 1 {
                            (destination + firstValid).update(from: source + firstValid, count: lastValid - firstValid)
                        } else {
                            for ox in firstValid..<lastValid { destination[ox] = source[ox * stride] }
                        }
                        (destination + lastValid).update(repeating: 0, count: outWidth - lastValid)
                    }
                }
            }
        }
    }

    /// y[c, 0..<count] += bias[c] for each channel row, then max(0, ·) when fusing ReLU, then 0 where `mask`
    /// (laid out as y) is not > 0.
    func addBias(_ biases: UnsafePointer<Float>, to output: UnsafeMutablePointer<Float>, channels: Int, count: Int,
                 rowStride: Int, fusingReLU: Bool, mask: UnsafePointer<Float>?) {
        for channel in 0..<channels {
            let row = output + channel * rowStride
            let value = biases[channel]
            if fusingReLU {
                for index in 0..<count { row[index] = max(row[index] + value, 0) }
            } else {
                for index in 0..<count { row[index] += value }
            }
            if let mask {
                let maskRow = mask + channel * rowStride
                for index in 0..<count where !(maskRow[index] > 0) { row[index] = 0 }
            }
        }
    }
}
