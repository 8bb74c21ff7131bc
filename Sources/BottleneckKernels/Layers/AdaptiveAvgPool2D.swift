/// torchvision's `nn.AdaptiveAvgPool2d(size)`: output cell i averages input rows
/// floor(i*H/size) ..< ceil((i+1)*H/size), and likewise for columns. When the input is
/// smaller than the output (a 32 px image gives a 1x1 pool5), cells repeat input values.
package struct AdaptiveAvgPool2D: Sendable {
    package let outputHeight: Int
    package let outputWidth: Int

    package init(outputSize: Int = 7) {
        self.outputHeight = outputSize
        self.outputWidth = outputSize
    }

    static func window(_ index: Int, input: Int, output: Int) -> Range<Int> {
        (index * input / output)..<(((index + 1) * input + output - 1) / output)
    }

    /// Calls body(output cell index, its input rows, its input columns) for every cell of an output plane.
    @inline(__always)
    private func forEachCell(inputHeight: Int, inputWidth: Int, _ body: (Int, Range<Int>, Range<Int>) -> Void) {
        for oy in 0..<outputHeight {
            let rows = Self.window(oy, input: inputHeight, output: outputHeight)
            for ox in 0..<outputWidth {
                body(oy * outputWidth + ox, rows, Self.window(ox, input: inputWidth, output: outputWidth))
            }
        }
    }

    /// x [N, C, H, W] -> y [N, C, outputHeight, outputWidth]
    package func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "adaptive average pool expects [N, C, H, W], got \(x.shape)")
        let (planes, height, width) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3])
        let (outHeight, outWidth) = (outputHeight, outputWidth)
        if height == outHeight && width == outWidth { return x }
        return Tensor(shape: [x.shape[0], x.shape[1], outHeight, outWidth]) { out in
            x.data.withUnsafeBufferPointer { input in
                for plane in 0..<planes {
                    let inPlane = input.baseAddress! + plane * height * width
                    let outPlane = out.baseAddress! + plane * outHeight * outWidth
                    forEachCell(inputHeight: height, inputWidth: width) { cell, rows, columns in
                        var sum: Float = 0
                        for iy in rows {
                            for ix in columns { sum += inPlane[iy * width + ix] }
                        }
                        outPlane[cell] = sum / Float(rows.count * columns.count)
                    }
                }
            }
        }
    }

    /// dy [N, C, outputHeight, outputWidth], the forward's input shape [N, C, H, W] -> dx [N, C, H, W]:
    /// each output cell's gradient spread evenly over its window. Windows overlap when the input is
    /// smaller than the output (1x1 -> 7x7 gives all 49 gradients to the one input), so dx accumulates.
    package func backward(gradOutput dy: Tensor, inputShape: [Int]) -> Tensor {
        precondition(inputShape.count == 4 && dy.shape == [inputShape[0], inputShape[1], outputHeight, outputWidth],
                     "adaptive average pool backward: input \(inputShape) but gradient \(dy.shape)")
        let (planes, height, width) = (inputShape[0] * inputShape[1], inputShape[2], inputShape[3])
        let (outHeight, outWidth) = (outputHeight, outputWidth)
        if height == outHeight && width == outWidth { return dy }
        var dx = Tensor(zeros: inputShape)
        dy.data.withUnsafeBufferPointer { gradOut in
            dx.data.withUnsafeMutableBufferPointer { gradIn in
                for plane in 0..<planes {
                    let gradOutPlane = gradOut.baseAddress! + plane * outHeight * outWidth
                    let gradInPlane = gradIn.baseAddress! + plane * height * width
                    forEachCell(inputHeight: height, inputWidth: width) { cell, rows, columns in
                        let share = gradOutPlane[cell] / Float(rows.count * columns.count)
                        for iy in rows {
                            for ix in columns { gradInPlane[iy * width + ix] += share }
                        }
                    }
                }
            }
        }
        return dx
    }
}
