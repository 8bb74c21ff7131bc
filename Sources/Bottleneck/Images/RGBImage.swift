import BottleneckKernels

/// An 8-bit RGB image as PIL holds it after `convert("RGB")`: rows top to
/// bottom, pixels interleaved R, G, B.
package struct RGBImage: Sendable, Equatable {
    package let width: Int
    let height: Int
    var pixels: [UInt8]

    package init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 3,
                     "a \(width)x\(height) RGB image needs \(width * height * 3) bytes, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// Allocates without zeroing; `fill` must write all `width * height * 3` bytes.
    package init(width: Int, height: Int, unsafeUninitialized fill: (UnsafeMutableBufferPointer<UInt8>) -> Void) {
        let count = width * height * 3
        self.init(width: width, height: height, pixels: [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            fill(buffer)
            initialized = count
        })
    }

    var bytesPerRow: Int { width * 3 }
}
