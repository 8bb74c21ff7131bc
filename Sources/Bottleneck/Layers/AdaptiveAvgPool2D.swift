/// torchvision's `nn.AdaptiveAvgPool2d(size)`: output cell i averages input rows
/// floor(i*H/size) ..< ceil((i+1)*H/size), and likewise for columns. When the input is
/// smaller than the output (a 32 px image gives a 1x1 pool5), cells repeat input values.
public struct AdaptiveAvgPool2D: Sendable {
    public let outputHeight: Int
    public let outputWidth: Int

    public init(outputSize: Int = 7) {
        self.outputHeight = outputSize
        self.outputWidth = outputSize
    }

    static func window(_ index: Int, input: Int, output: Int) -> Range<Int> {
        (index * input / output)..<(((index + 1) * input + output - 1) / output)
    }

    /// x [N, C, H, W] -> y [N, C, outputHeight, outputWidth]
    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "adaptive average pool expects [N, C, H, W], got \(x.shape)")
        let (planes, height, width) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3])
        let (outHeight, outWidth) = (outputHeight, outputWidth)
        if height == outHeight && width == outWidth { return x }
        return Tensor(shape: [x.shape[0], x.shape[1], outHeight, outWidth]) { out in
            x.data.withUnsafeBufferPointer { input in
                for plane in 0..<planes {
                    let inPlane = input.baseAddress! + plane * height * width
                    let outPlane = out.baseAddress! + plane * outHeight * outWidth
                    for oy in 0..<outHeight {
                        let rows = Self.window(oy, input: height, output: outHeight)
                        for ox in 0..<outWidth {
                            let columns = Self.window(ox, input: width, output: outWidth)
                            var sum: Float = 0
                            for iy in rows {
                                for ix in columns { sum += inPlane[iy * width + ix] }
                            }
                            outPlane[oy * outWidth + ox] = sum / Float(rows.count * columns.count)
                        }
                    }
                }
            }
        }
    }
}
