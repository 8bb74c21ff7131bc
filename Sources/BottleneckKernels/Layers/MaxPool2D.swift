/// Max pooling, torchvision's `nn.MaxPool2d(kernel, stride)` without padding, floor mode.
package struct MaxPool2D: Sendable {
    package let kernel: Int
    package let stride: Int

    package init(kernel: Int = 2, stride: Int = 2) {
        self.kernel = kernel
        self.stride = stride
    }

    package func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        ((height - kernel) / stride + 1, (width - kernel) / stride + 1)
    }

    /// x [N, C, H, W] -> y [N, C, (H-k)/s+1, (W-k)/s+1]
    package func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "max pool expects [N, C, H, W], got \(x.shape)")
        let (planes, height, width) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3])
        let (outHeight, outWidth) = outputSize(height: height, width: width)
        precondition(outHeight > 0 && outWidth > 0, "max pool input \(height)x\(width) is smaller than its kernel")
        let (kernel, stride) = (self.kernel, self.stride)
        return Tensor(shape: [x.shape[0], x.shape[1], outHeight, outWidth]) { out in
            x.data.withUnsafeBufferPointer { input in
                let source = input.baseAddress!
                let destination = out.baseAddress!
                parallelFor(planes) { plane in
                    let inPlane = source + plane * height * width
                    let outPlane = destination + plane * outHeight * outWidth
                    for oy in 0..<outHeight {
                        for ox in 0..<outWidth {
                            var best = -Float.infinity
                            for ky in 0..<kernel {
                                let row = inPlane + (oy * stride + ky) * width + ox * stride
                                for kx in 0..<kernel where row[kx] > best || row[kx].isNaN { best = row[kx] }
                            }
                            outPlane[oy * outWidth + ox] = best
                        }
                    }
                }
            }
        }
    }

    /// x [N, C, H, W] (the forward's input), dy [N, C, Ho, Wo] -> dx [N, C, H, W]: each output's gradient
    /// goes to the input it took, found again by the forward's scan rather than kept from it (an index
    /// tensor would be as large as half the input). The scan is torch's CPU kernel: row-major, a value
    /// replaces the best when greater or NaN, so a tie goes to the earliest element and a NaN to the last
    /// NaN; a window of only -inf gives its first element.
    ///
    /// `throughReLU`: x is a ReLU's output, and dx is that ReLU's backward too, a gradient reaching only inputs
    /// > 0 (as `ReLU.backward`): one pass over the network's largest activations instead of two.
    package func backward(input x: Tensor, gradOutput dy: Tensor, throughReLU: Bool = false) -> Tensor {
        let (planes, height, width) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3])
        let (outHeight, outWidth) = outputSize(height: height, width: width)
        precondition(dy.shape == [x.shape[0], x.shape[1], outHeight, outWidth],
                     "max pool backward: input \(x.shape) but gradient \(dy.shape)")
        let (kernel, stride) = (self.kernel, self.stride)
        // Windows that tile the plane (kernel == stride, VGG's) write each of their inputs, the gradient or 0, so only
        // the rows and columns past the last window need zeroing; overlapping windows add into a zeroed plane. Each
        // plane is zeroed by the core that fills it: zeroed up front, pool1's 100 MB would be a serial pass.
        let tiling = kernel == stride
        let (coveredHeight, coveredWidth) = (outHeight * stride, outWidth * stride)
        return Tensor(shape: x.shape) { gradIn in
            x.data.withUnsafeBufferPointer { input in
                dy.data.withUnsafeBufferPointer { gradOut in
                    let shared = (input.baseAddress!, gradOut.baseAddress!, gradIn.baseAddress!)
                    parallelFor(planes) { plane in
                        let (input, gradOut, gradIn) = shared
                        let inPlane = input + plane * height * width
                        let gradInPlane = gradIn + plane * height * width
                        if tiling {
                            for row in 0..<coveredHeight where coveredWidth < width {
                                (gradInPlane + row * width + coveredWidth).initialize(repeating: 0, count: width - coveredWidth)
                            }
                            (gradInPlane + coveredHeight * width).initialize(repeating: 0, count: (height - coveredHeight) * width)
                        } else {
                            gradInPlane.initialize(repeating: 0, count: height * width)
                        }
                        let gradOutPlane = gradOut + plane * outHeight * outWidth
                        for oy in 0..<outHeight {
                            for ox in 0..<outWidth {
                                var best = -Float.infinity
                                var bestIndex = oy * stride * width + ox * stride
                                for ky in 0..<kernel {
                                    let rowStart = (oy * stride + ky) * width + ox * stride
                                    for kx in 0..<kernel where inPlane[rowStart + kx] > best || inPlane[rowStart + kx].isNaN {
                                        best = inPlane[rowStart + kx]
                                        bestIndex = rowStart + kx
                                    }
                                }
                                let gradient = throughReLU && !(best > 0) ? 0 : gradOutPlane[oy * outWidth + ox]
                                if tiling {
                                    for ky in 0..<kernel {
                                        (gradInPlane + (oy * stride + ky) * width + ox * stride).initialize(repeating: 0, count: kernel)
                                    }
                                    gradInPlane[bestIndex] = gradient
                                } else {
                                    gradInPlane[bestIndex] += gradient
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
