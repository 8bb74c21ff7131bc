@testable import Bottleneck
import XCTest
import BottleneckKernels

/// An image's features are the same bits whatever batch it runs in: an incremental feature cache extracts
/// only new images, in batches of their own, and must equal a fresh extract byte for byte. VGG16 at an
/// eighth of its convolution widths, 40 px: tiles enough an image that Winograd's blocks begin and end
/// inside images. Hidden 1024, as 4096 does, keeps each row of fc7 over 10⁶ multiply-adds, beyond
/// OpenBLAS's small-matrix kernel, whose bits for a row depend on the batch size.
final class BatchInvarianceTests: XCTestCase {
    func testFeaturesDoNotDependOnTheBatch() throws {
        try skipUnlessFeaturesAreBatchInvariant()
        let config = VGGConfig.vgg16.narrowed(by: 8, hidden: 1024, classes: 10)
        let network = VGG.randomlyInitialized(config: config, seed: 3)
        var generator = SeededGenerator(seed: 17)
        let images = Tensor(shape: [16, 3, 40, 40]) { values in
            for index in values.indices { values[index] = generator.nextNormal() }
        }
        let cut = try CutPoint("fc7", in: config)
        let whole = try network.forward(images, through: cut)
        for batch in [1, 3] {
            for first in stride(from: 0, to: 16, by: batch) {
                let range = first..<min(first + batch, 16)
                XCTAssertTrue(try network.forward(images.rows(range), through: cut).data == whole.rows(range).data,
                              "images \(range) in a batch of \(range.count) differ from the same in a batch of 16")
            }
        }
    }
}
