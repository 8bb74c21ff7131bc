import Foundation

/// 2-D convolution, torchvision's `nn.Conv2d` with bias, lowered to gemm through im2col.
public struct Conv2D: Sendable {
    /// [outChannels, inChannels, kernel, kernel]
    public var weight: Tensor
    /// [outChannels]
    public var bias: Tensor
    public let kernel: Int
    public let stride: Int
    public let padding: Int

    public var inChannels: Int { weight.shape[1] }
    public var outChannels: Int { weight.shape[0] }

    public init(weight: Tensor, bias: Tensor, stride: Int = 1, padding: Int = 1) {
        precondition(weight.rank == 4 && weight.shape[2] == weight.shape[3], "conv weight must be [out, in, k, k]")
        precondition(bias.shape == [weight.shape[0]], "conv bias must be [out]")
        self.weight = weight
        self.bias = bias
        self.kernel = weight.shape[2]
        self.stride = stride
        self.padding = padding
    }

    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        ((height + 2 * padding - kernel) / stride + 1, (width + 2 * padding - kernel) / stride + 1)
    }

    /// Bytes of im2col buffer per tile: small enough to stay in cache between im2col and gemm.
    static let tileBytes = 4 << 20

    /// x [N, Cin, H, W] -> y [N, Cout, Ho, Wo], with ReLU applied in the same pass when `fusingReLU`.
    /// The output is cut into tiles (one image, a band of output rows); each core takes tiles
    /// in turn: col [Cin*k*k, band] = im2col(x[n], rows); y[n][:, band] = weight · col + bias.
    public func forward(_ x: Tensor, fusingReLU: Bool = false) -> Tensor {
        precondition(x.rank == 4 && x.shape[1] == inChannels,
                     "conv expects [N, \(inChannels), H, W], got \(x.shape)")
        let (batch, height, width) = (x.shape[0], x.shape[2], x.shape[3])
        let (outHeight, outWidth) = outputSize(height: height, width: width)
        let (outChannels, plane, patch) = (self.outChannels, outHeight * outWidth, inChannels * kernel * kernel)
        let rowsPerTile = max(1, min(outHeight, Self.tileBytes / (patch * outWidth * MemoryLayout<Float>.size)))
        let tilesPerImage = (outHeight + rowsPerTile - 1) / rowsPerTile
        let tiles = batch * tilesPerImage
        let workers = min(tiles, ProcessInfo.processInfo.activeProcessorCount)
        var columns = [Float](repeating: 0, count: workers * patch * rowsPerTile * outWidth)
        return Tensor(shape: [batch, outChannels, outHeight, outWidth]) { out in
            x.data.withUnsafeBufferPointer { input in
                weight.data.withUnsafeBufferPointer { weights in
                    bias.data.withUnsafeBufferPointer { biases in
                        columns.withUnsafeMutableBufferPointer { columnBuffer in
                            let shared = UncheckedSendable((input.baseAddress!, weights.baseAddress!, biases.baseAddress!,
                                                            columnBuffer.baseAddress!, out.baseAddress!))
                            BLASThreads.withSingleThreadedGemm {
                                parallelFor(workers) { worker in
                                    let (input, weights, biases, columnBase, out) = shared.value
                                    let col = columnBase + worker * patch * rowsPerTile * outWidth
                                    for tile in Swift.stride(from: worker, to: tiles, by: workers) {
                                        let image = tile / tilesPerImage
                                        let firstRow = (tile % tilesPerImage) * rowsPerTile
                                        let rows = min(rowsPerTile, outHeight - firstRow)
                                        let band = rows * outWidth
                                        im2col(input + image * inChannels * height * width, height: height, width: width,
                                               outputRows: firstRow..<(firstRow + rows), into: col)
                                        let target = out + image * outChannels * plane + firstRow * outWidth
                                        sgemm(m: outChannels, n: band, k: patch, a: weights, b: col, c: target, ldc: plane)
                                        addBias(biases, to: target, channels: outChannels, count: band, rowStride: plane,
                                                fusingReLU: fusingReLU)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
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

    /// y[c, 0..<count] += bias[c] for each channel row, then max(0, ·) when fusing ReLU.
    func addBias(_ biases: UnsafePointer<Float>, to output: UnsafeMutablePointer<Float>, channels: Int, count: Int,
                 rowStride: Int, fusingReLU: Bool) {
        for channel in 0..<channels {
            let row = output + channel * rowStride
            let value = biases[channel]
            if fusingReLU {
                for index in 0..<count { row[index] = max(row[index] + value, 0) }
            } else {
                for index in 0..<count { row[index] += value }
            }
        }
    }
}
