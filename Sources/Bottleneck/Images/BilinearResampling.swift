import BottleneckKernels

/// Pillow's `Image.resize(size, Image.BILINEAR)` on 8-bit RGB, value for value
/// (Pillow's src/libImaging/Resample.c): a triangle filter whose support widens
/// with the downscale factor (the antialiasing), weights normalised in double
/// then rounded to 22-bit fixed point, one pass per axis, each rounding and
/// clipping to uint8, a pass skipped when its dimension keeps its size, and
/// Pillow 13's choice of which pass runs first.
extension RGBImage {
    func resizedBilinearAntialias(width newWidth: Int, height newHeight: Int) -> RGBImage {
        resampledRegion(width: newWidth, height: newHeight, columns: 0..<newWidth, rows: 0..<newHeight)
    }

    /// `columns` x `rows` of this image resized to `newWidth` x `newHeight`,
    /// computing only that part: every output pixel depends on its own
    /// coordinates alone, so the values equal cropping the full resize.
    /// With the size unchanged this is a plain crop.
    func resampledRegion(width newWidth: Int, height newHeight: Int, columns: Range<Int>, rows: Range<Int>) -> RGBImage {
        precondition(columns.lowerBound >= 0 && columns.upperBound <= newWidth && rows.lowerBound >= 0 && rows.upperBound <= newHeight,
                     "region \(columns) x \(rows) outside a \(newWidth)x\(newHeight) image")
        guard !columns.isEmpty, !rows.isEmpty else { return RGBImage(width: columns.count, height: rows.count, pixels: []) }
        let horizontal = newWidth == width ? nil : ResamplingAxis(inputSize: width, outputSize: newWidth, outputs: columns)
        let vertical = newHeight == height ? nil : ResamplingAxis(inputSize: height, outputSize: newHeight, outputs: rows)

        guard let horizontal else {
            return withPixelWindow { $0.verticalPass(vertical, rows: rows, columns: columns) }
        }
        guard let vertical else {
            return withPixelWindow { $0.horizontalPass(horizontal, rows: rows) }
        }
        // Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height loses more
        // than twice as many pixels as the width; the uint8 rounding between passes makes the order visible.
        let heightLoss = height - newHeight
        if heightLoss > 0 && heightLoss > 2 * (width - newWidth) {
            let columnsRead = horizontal.inputSpan
            let intermediate = withPixelWindow { $0.verticalPass(vertical, rows: rows, columns: columnsRead) }
            return intermediate.withPixelWindow(firstColumn: columnsRead.lowerBound, firstRow: rows.lowerBound) {
                $0.horizontalPass(horizontal, rows: rows)
            }
        }
        // Like Pillow, the first pass only covers what the second one reads.
        let rowsRead = vertical.inputSpan
        let intermediate = withPixelWindow { $0.horizontalPass(horizontal, rows: rowsRead) }
        return intermediate.withPixelWindow(firstColumn: columns.lowerBound, firstRow: rowsRead.lowerBound) {
            $0.verticalPass(vertical, rows: rows, columns: columns)
        }
    }

    /// This image seen as the part of a larger one whose top-left pixel is at (`firstColumn`, `firstRow`).
    fileprivate func withPixelWindow<Result>(firstColumn: Int = 0, firstRow: Int = 0,
                                             _ body: (PixelWindow) -> Result) -> Result {
        pixels.withUnsafeBufferPointer { buffer in
            body(PixelWindow(origin: buffer.baseAddress!, bytesPerRow: bytesPerRow, firstColumn: firstColumn, firstRow: firstRow))
        }
    }
}

/// Pillow's fixed-point weights for one axis of a bilinear resize, for the outputs in `outputs` only.
struct ResamplingAxis {
    /// Pillow's PRECISION_BITS for 8-bit images: 32 - 8 bits of result - 2 bits of headroom.
    static let fractionBits: Int32 = 22
    /// Accumulators start at one half so the final shift rounds.
    static let half: Int32 = 1 << (fractionBits - 1)

    let outputs: Range<Int>
    /// Per output (indexed from `outputs.lowerBound`): the first input it reads and how many.
    let firstInput: [Int]
    let tapCount: [Int]
    /// `maximumTaps` weights per output, unused ones zero.
    let weights: [Int32]
    let maximumTaps: Int

    init(inputSize: Int, outputSize: Int, outputs: Range<Int>) {
        let scale = Double(inputSize) / Double(outputSize)
        let filterScale = max(scale, 1)
        let support = filterScale // the triangle's support is 1, stretched when downscaling
        let inverseFilterScale = 1 / filterScale
        let maximumTaps = Int(support.rounded(.up)) * 2 + 1
        var firstInput = [Int](repeating: 0, count: outputs.count)
        var tapCount = [Int](repeating: 0, count: outputs.count)
        var weights = [Int32](repeating: 0, count: outputs.count * maximumTaps)
        var raw = [Double](repeating: 0, count: maximumTaps)
        for (slot, output) in outputs.enumerated() {
            // The operation order below is Pillow's; it decides the last bit of each weight.
            let center = (Double(output) + 0.5) * scale
            let first = max(Int(center - support + 0.5), 0)
            let end = min(Int(center + support + 0.5), inputSize)
            var total = 0.0
            for tap in 0..<(end - first) {
                let distance = abs((Double(tap + first) - center + 0.5) * inverseFilterScale)
                raw[tap] = distance < 1 ? 1 - distance : 0
                total += raw[tap]
            }
            for tap in 0..<(end - first) {
                let normalized = total != 0 ? raw[tap] / total : raw[tap]
                weights[slot * maximumTaps + tap] = Int32(0.5 + normalized * Double(1 << Self.fractionBits))
            }
            firstInput[slot] = first
            tapCount[slot] = end - first
        }
        self.outputs = outputs
        self.firstInput = firstInput
        self.tapCount = tapCount
        self.weights = weights
        self.maximumTaps = maximumTaps
    }

    /// The inputs any of the outputs reads.
    var inputSpan: Range<Int> {
        let last = outputs.count - 1
        return firstInput[0]..<(firstInput[last] + tapCount[last])
    }

    @inline(__always)
    static func clip(_ accumulator: Int32) -> UInt8 {
        UInt8(clamping: accumulator >> fractionBits)
    }
}

/// Interleaved RGB rows in memory holding part of an image: the image itself or a first pass's output.
private struct PixelWindow {
    /// The pixel at (`firstColumn`, `firstRow`) of the image.
    let origin: UnsafePointer<UInt8>
    let bytesPerRow: Int
    let firstColumn: Int
    let firstRow: Int

    func pixel(column: Int, row: Int) -> UnsafePointer<UInt8> {
        origin + (row - firstRow) * bytesPerRow + (column - firstColumn) * 3
    }

    /// The horizontal pass for the axis's output columns, on image rows `rows`.
    func horizontalPass(_ axis: ResamplingAxis, rows: Range<Int>) -> RGBImage {
        RGBImage(width: axis.outputs.count, height: rows.count) { target in
            axis.firstInput.withUnsafeBufferPointer { firstInput in
                axis.tapCount.withUnsafeBufferPointer { tapCount in
                    axis.weights.withUnsafeBufferPointer { weights in
                        var output = target.baseAddress!
                        for row in rows {
                            for slot in 0..<firstInput.count {
                                let slotWeights = weights.baseAddress! + slot * axis.maximumTaps
                                var input = pixel(column: firstInput[slot], row: row)
                                var red = ResamplingAxis.half, green = ResamplingAxis.half, blue = ResamplingAxis.half
                                for tap in 0..<tapCount[slot] {
                                    let weight = slotWeights[tap]
                                    red &+= Int32(input[0]) &* weight
                                    green &+= Int32(input[1]) &* weight
                                    blue &+= Int32(input[2]) &* weight
                                    input += 3
                                }
                                output[0] = ResamplingAxis.clip(red)
                                output[1] = ResamplingAxis.clip(green)
                                output[2] = ResamplingAxis.clip(blue)
                                output += 3
                            }
                        }
                    }
                }
            }
        }
    }

    /// The vertical pass for the axis's output rows, on image columns `columns`;
    /// without an axis (height unchanged) a copy of `rows`.
    func verticalPass(_ axis: ResamplingAxis?, rows: Range<Int>, columns: Range<Int>) -> RGBImage {
        let rowBytes = columns.count * 3
        guard let axis else {
            return RGBImage(width: columns.count, height: rows.count) { target in
                for (index, row) in rows.enumerated() {
                    (target.baseAddress! + index * rowBytes).update(from: pixel(column: columns.lowerBound, row: row), count: rowBytes)
                }
            }
        }
        var accumulators = [Int32](repeating: 0, count: rowBytes)
        return RGBImage(width: columns.count, height: rows.count) { target in
            accumulators.withUnsafeMutableBufferPointer { sums in
                axis.weights.withUnsafeBufferPointer { weights in
                    for slot in 0..<rows.count {
                        let slotWeights = weights.baseAddress! + slot * axis.maximumTaps
                        sums.update(repeating: ResamplingAxis.half)
                        // Row by row, so the inner loop runs along contiguous bytes and vectorizes.
                        for tap in 0..<axis.tapCount[slot] {
                            let input = pixel(column: columns.lowerBound, row: axis.firstInput[slot] + tap)
                            let weight = slotWeights[tap]
                            for index in 0..<rowBytes {
                                sums[index] &+= Int32(input[index]) &* weight
                            }
                        }
                        let output = target.baseAddress! + slot * rowBytes
                        for index in 0..<rowBytes {
                            output[index] = ResamplingAxis.clip(sums[index])
                        }
                    }
                }
            }
        }
    }
}
