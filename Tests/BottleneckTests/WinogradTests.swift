import Dispatch
import XCTest
@testable import Bottleneck
@testable import BottleneckKernels

/// Winograd F(4x4, 3x3) against im2col and a direct convolution in Double. Tolerances are the
/// relative measure of the suite, max|diff| / max|reference|. F(4x4, 3x3) also rounds in its
/// transforms, whose terms are larger than the outputs: measured ≤ 1.4e-6 on these shapes (im2col
/// ≤ 9e-7), except 1.7e-5 for a single 1x1 pixel after ReLU, where the largest output is small
/// against the 17 x 9 terms summed into it. A wrong tile or edge shows up as errors near 1.
final class WinogradTests: XCTestCase {
    static let winogradTolerance: Float = 3e-5
    static let im2colTolerance: Float = 2e-6

    func testMatchesDirectConvolutionOnOddShapes() {
        var generator = SeededGenerator(seed: 7)
        let spatialSizes = [(1, 1), (2, 2), (5, 7), (13, 13), (14, 14), (17, 9)]
        let channelPairs = [(1, 4), (3, 17), (4, 1), (17, 3), (17, 17)]
        for (height, width) in spatialSizes {
            for (index, (inChannels, outChannels)) in channelPairs.enumerated() {
                for batch in [1, 3] {
                    let fusingReLU = (index + batch) % 2 == 0
                    let conv = Self.randomConv(inChannels: inChannels, outChannels: outChannels, using: &generator)
                    let x = Self.randomTensor([batch, inChannels, height, width], using: &generator)
                    let reference = Self.directConvolution(x, conv, fusingReLU: fusingReLU)
                    let winograd = Conv2D.$algorithm.withValue(.winograd) { conv.forward(x, fusingReLU: fusingReLU) }
                    let im2col = Conv2D.$algorithm.withValue(.im2col) { conv.forward(x, fusingReLU: fusingReLU) }
                    let shape = "x \(x.shape) -> \(outChannels) channels, ReLU \(fusingReLU)"
                    XCTAssertLessThanOrEqual(winograd.relativeDifference(to: reference), Self.winogradTolerance, shape)
                    XCTAssertLessThanOrEqual(im2col.relativeDifference(to: reference), Self.im2colTolerance, shape)
                    XCTAssertLessThanOrEqual(winograd.relativeDifference(to: im2col), Self.winogradTolerance, shape)
                }
            }
        }
    }

    /// Blocks of 16 tiles over 3 images of 5x6 tiles: blocks start and end inside tile rows and
    /// span images, the last is padded to whole groups, and there are more blocks than cores.
    func testSmallBlocksMatchIm2col() {
        var generator = SeededGenerator(seed: 11)
        let conv = Self.randomConv(inChannels: 6, outChannels: 5, using: &generator)
        let x = Self.randomTensor([3, 6, 18, 21], using: &generator)
        let winograd = Winograd.convolve(x, filters: Winograd.transformFilters(conv.weight), bias: conv.bias,
                                         fusingReLU: true, tilesPerBlock: 16)
        let im2col = Conv2D.$algorithm.withValue(.im2col) { conv.forward(x, fusingReLU: true) }
        XCTAssertLessThanOrEqual(winograd.relativeDifference(to: im2col), Self.winogradTolerance)
    }

    /// An image's output is the same bits in a batch of any size, among any batch-mates: an incremental
    /// feature cache joins rows extracted in different batches. conv2_1's channels at 20 px: 25 tiles an
    /// image, so a batch's blocks begin and end anywhere in an image, and the gemms are small enough for
    /// OpenBLAS's small-matrix kernel.
    func testAnImagesOutputDoesNotDependOnItsBatch() throws {
        try skipUnlessFeaturesAreBatchInvariant()
        var generator = SeededGenerator(seed: 13)
        let conv = Self.randomConv(inChannels: 64, outChannels: 128, using: &generator)
        let x = Self.randomTensor([16, 64, 20, 20], using: &generator)
        let whole = conv.forward(x, fusingReLU: true)
        for batch in [1, 3] {
            for first in stride(from: 0, to: 16, by: batch) {
                let images = first..<min(first + batch, 16)
                XCTAssertTrue(conv.forward(x.rows(images), fusingReLU: true).data == whole.rows(images).data,
                              "images \(images) in a batch of \(images.count) differ from the same in a batch of 16")
            }
        }
    }

    /// The input gradient's filters transformed from the weights directly are those of the turned, transposed
    /// weights, bit for bit, for channel counts whose filter count is not a multiple of the lanes.
    func testTransposedFiltersAreThoseOfTheTurnedWeights() {
        var generator = SeededGenerator(seed: 23)
        for (outChannels, inChannels) in [(5, 7), (1, 1), (16, 3)] {
            let weight = Self.randomTensor([outChannels, inChannels, 3, 3], using: &generator)
            var turned = Tensor(zeros: [inChannels, outChannels, 3, 3])
            for output in 0..<outChannels {
                for input in 0..<inChannels {
                    for tap in 0..<9 {
                        turned.data[(input * outChannels + output) * 9 + tap] = weight.data[(output * inChannels + input) * 9 + 8 - tap]
                    }
                }
            }
            XCTAssertEqual(Winograd.transformFilters(weight, transposingAndFlipping: true), Winograd.transformFilters(turned),
                           "\(outChannels) x \(inChannels)")
        }
    }

    func testChangedWeightsAreTransformedAgain() {
        var generator = SeededGenerator(seed: 3)
        var conv = Self.randomConv(inChannels: 5, outChannels: 6, using: &generator)
        let x = Self.randomTensor([2, 5, 9, 9], using: &generator)
        Conv2D.$algorithm.withValue(.winograd) {
            _ = conv.forward(x)
            conv.weight.data.withUnsafeMutableBufferPointer { weights in
                for index in weights.indices { weights[index] = -weights[index] }
            }
            XCTAssertLessThanOrEqual(conv.forward(x).relativeDifference(to: Self.directConvolution(x, conv, fusingReLU: false)),
                                     Self.winogradTolerance)
        }
    }

    func testFirstUseFromManyThreadsAgrees() {
        var generator = SeededGenerator(seed: 5)
        let conv = Self.randomConv(inChannels: 8, outChannels: 8, using: &generator)
        let x = Self.randomTensor([1, 8, 12, 12], using: &generator)
        let reference = Self.directConvolution(x, conv, fusingReLU: false)
        let differences = UnsafeMutableBufferPointer<Float>.allocate(capacity: 8)
        defer { differences.deallocate() }
        let shared = UncheckedSendable(differences)
        DispatchQueue.concurrentPerform(iterations: differences.count) { index in
            shared.value[index] = Conv2D.$algorithm.withValue(.winograd) { conv.forward(x) }.relativeDifference(to: reference)
        }
        XCTAssertLessThanOrEqual(differences.max()!, Self.winogradTolerance)
    }

    func testAutomaticChoice() {
        var generator = SeededGenerator(seed: 1)
        XCTAssertEqual(Self.randomConv(inChannels: 3, outChannels: 64, using: &generator).resolvedAlgorithm, .im2col)
        XCTAssertEqual(Self.randomConv(inChannels: 64, outChannels: 64, using: &generator).resolvedAlgorithm, .winograd)
        let strided = Conv2D(weight: Self.randomTensor([4, 64, 3, 3], using: &generator), bias: Tensor(zeros: [4]), stride: 2)
        XCTAssertEqual(Conv2D.$algorithm.withValue(.winograd) { strided.resolvedAlgorithm }, .im2col)
    }

    /// The weight and bias gradients through Winograd, split by tiles and by positions, against sums in Double, on
    /// shapes whose last tile row and column hang over the edge, and the im2col path's. A wrong transform or a tile
    /// read past the edge gives errors near 1; measured ≤ 2.1e-6 here.
    func testFilterGradientMatchesDirectSums() {
        var generator = SeededGenerator(seed: 17)
        for (height, width) in [(1, 1), (2, 3), (5, 7), (13, 13), (14, 14), (17, 9)] {
            for (inChannels, outChannels) in [(1, 4), (3, 17), (17, 3), (8, 8)] {
                for batch in [1, 3] {
                    let conv = Self.randomConv(inChannels: inChannels, outChannels: outChannels, using: &generator)
                    let x = Self.randomTensor([batch, inChannels, height, width], using: &generator)
                    let dy = Self.randomTensor([batch, outChannels, height, width], using: &generator)
                    let (referenceWeight, referenceBias) = Self.directFilterGradient(x, dy)
                    for split in [Winograd.FilterGradientSplit.tiles(tilesPerBlock: nil), .positions] {
                        var (weight, bias) = (Tensor(zeros: []), Tensor(zeros: []))
                        Winograd.filterGradient(input: x, gradOutput: dy, weight: &weight, bias: &bias, split: split)
                        let shape = "x \(x.shape), dy \(dy.shape), \(split)"
                        XCTAssertLessThanOrEqual(weight.relativeDifference(to: referenceWeight), Self.winogradTolerance, shape)
                        XCTAssertLessThanOrEqual(bias.relativeDifference(to: referenceBias), Self.im2colTolerance, shape)
                    }
                    var (im2colWeight, im2colBias) = (Tensor(zeros: []), Tensor(zeros: []))
                    Conv2D.$algorithm.withValue(.im2col) {
                        conv.parameterGradients(input: x, gradOutput: dy, weight: &im2colWeight, bias: &im2colBias)
                    }
                    XCTAssertLessThanOrEqual(im2colWeight.relativeDifference(to: referenceWeight), Self.im2colTolerance,
                                             "x \(x.shape), dy \(dy.shape), im2col")
                }
            }
        }
    }

    /// Blocks of 16 tiles over 3 images of 5x6 tiles, more blocks than cores: each core adds several blocks into its
    /// sums, blocks start inside tile rows and span images.
    func testFilterGradientOverManyBlocks() {
        var generator = SeededGenerator(seed: 19)
        let x = Self.randomTensor([3, 6, 18, 21], using: &generator)
        let dy = Self.randomTensor([3, 5, 18, 21], using: &generator)
        let (referenceWeight, referenceBias) = Self.directFilterGradient(x, dy)
        var (weight, bias) = (Tensor(zeros: []), Tensor(zeros: []))
        Winograd.filterGradient(input: x, gradOutput: dy, weight: &weight, bias: &bias, split: .tiles(tilesPerBlock: 16))
        XCTAssertLessThanOrEqual(weight.relativeDifference(to: referenceWeight), Self.winogradTolerance)
        XCTAssertLessThanOrEqual(bias.relativeDifference(to: referenceBias), Self.im2colTolerance)
    }

    /// conv4 and conv5 at 224 px and batch 8 split their weight gradient by positions, the larger conv1-conv3 by tiles;
    /// and a layer's gradient through `Conv2D` is the split's it prefers.
    func testFilterGradientSplitFollowsTheLayersSize() {
        func split(_ inChannels: Int, _ outChannels: Int, side: Int) -> String {
            let tiles = 8 * Winograd.TileGrid(height: side, width: side).tilesPerImage
            return "\(Winograd.preferredFilterGradientSplit(inChannels: inChannels, outChannels: outChannels, totalTiles: tiles))"
        }
        XCTAssertEqual(split(64, 64, side: 224), "tiles(tilesPerBlock: nil)")
        XCTAssertEqual(split(256, 256, side: 56), "tiles(tilesPerBlock: nil)")
        XCTAssertEqual(split(512, 512, side: 28), "positions")
        XCTAssertEqual(split(512, 512, side: 14), "positions")
    }

    // MARK: Helpers

    static func randomTensor(_ shape: [Int], using generator: inout SeededGenerator) -> Tensor {
        Tensor(shape: shape) { values in
            for index in values.indices { values[index] = generator.nextNormal() }
        }
    }

    static func randomConv(inChannels: Int, outChannels: Int, using generator: inout SeededGenerator) -> Conv2D {
        Conv2D(weight: randomTensor([outChannels, inChannels, 3, 3], using: &generator),
               bias: randomTensor([outChannels], using: &generator))
    }

    /// x [N, Cin, H, W] -> y [N, Cout, H, W], 3x3 / stride 1 / padding 1, summed in Double.
    static func directConvolution(_ x: Tensor, _ conv: Conv2D, fusingReLU: Bool) -> Tensor {
        let (batch, inChannels, height, width) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let outChannels = conv.outChannels
        var y = Tensor(zeros: [batch, outChannels, height, width])
        for image in 0..<batch {
            for out in 0..<outChannels {
                for oy in 0..<height {
                    for ox in 0..<width {
                        var sum = Double(conv.bias.data[out])
                        for channel in 0..<inChannels {
                            for ky in 0..<3 {
                                for kx in 0..<3 {
                                    let (iy, ix) = (oy + ky - 1, ox + kx - 1)
                                    guard (0..<height).contains(iy), (0..<width).contains(ix) else { continue }
                                    sum += Double(x.data[((image * inChannels + channel) * height + iy) * width + ix])
                                        * Double(conv.weight.data[((out * inChannels + channel) * 3 + ky) * 3 + kx])
                                }
                            }
                        }
                        y.data[((image * outChannels + out) * height + oy) * width + ox] = Float(fusingReLU ? max(sum, 0) : sum)
                    }
                }
            }
        }
        return y
    }

    /// x [N, Cin, H, W], dy [N, Cout, H, W] -> dWeight [Cout, Cin, 3, 3], dBias [Cout] of a 3x3 / stride 1 / padding 1
    /// convolution, summed in Double.
    static func directFilterGradient(_ x: Tensor, _ dy: Tensor) -> (weight: Tensor, bias: Tensor) {
        let (batch, inChannels, height, width) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let outChannels = dy.shape[1]
        var weight = Tensor(zeros: [outChannels, inChannels, 3, 3])
        var bias = Tensor(zeros: [outChannels])
        for out in 0..<outChannels {
            var biasSum = 0.0
            for image in 0..<batch {
                for index in 0..<(height * width) { biasSum += Double(dy.data[(image * outChannels + out) * height * width + index]) }
            }
            bias.data[out] = Float(biasSum)
            for channel in 0..<inChannels {
                for ky in 0..<3 {
                    for kx in 0..<3 {
                        var sum = 0.0
                        for image in 0..<batch {
                            for oy in 0..<height {
                                for ox in 0..<width {
                                    let (iy, ix) = (oy + ky - 1, ox + kx - 1)
                                    guard (0..<height).contains(iy), (0..<width).contains(ix) else { continue }
                                    sum += Double(x.data[((image * inChannels + channel) * height + iy) * width + ix])
                                        * Double(dy.data[((image * outChannels + out) * height + oy) * width + ox])
                                }
                            }
                        }
                        weight.data[((out * inChannels + channel) * 3 + ky) * 3 + kx] = Float(sum)
                    }
                }
            }
        }
        return (weight, bias)
    }
}
