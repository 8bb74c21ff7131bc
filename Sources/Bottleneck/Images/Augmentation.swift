import Foundation
import BottleneckKernels

/// torchvision's standard training transform, `RandomResizedCrop(size)` (scale (0.08, 1), ratio (3/4, 4/3),
/// bilinear with antialiasing) then `RandomHorizontalFlip(0.5)`, then ToTensor + Normalize. The geometry
/// follows torchvision's rules exactly (`get_params`: ten tries, then the central fallback; crop, then a PIL
/// bilinear resize); the draws come from a `SeededGenerator` instead of torch's, so a crop is reproducible
/// from its generator but not equal to torch's for the same seed.
struct Augmentation: Codable, Sendable, Equatable {
    package var size: Int
    var scale: ClosedRange<Double> = 0.08...1
    package var ratio: ClosedRange<Double> = (3.0 / 4)...(4.0 / 3)
    var flipProbability = 0.5
    package var mean: [Float]
    var std: [Float]

    /// The training counterpart of `evaluation`: same size and normalisation.
    package init(matching evaluation: Preprocessing) {
        size = evaluation.crop
        mean = evaluation.mean
        std = evaluation.std
    }

    /// A crop of the image, (top, left, height, width), as `RandomResizedCrop.get_params` returns it.
    struct Crop: Equatable, Sendable {
        package var top: Int
        var left: Int
        var height: Int
        package var width: Int
    }

    /// `RandomResizedCrop.get_params(img, scale, ratio)` for a `width` x `height` image.
    func cropParameters(width: Int, height: Int, generator: inout SeededGenerator) -> Crop {
        let area = Double(height * width)
        let logRatio = (log(ratio.lowerBound), log(ratio.upperBound))
        for _ in 0..<10 {
            let targetArea = area * uniform(scale.lowerBound, scale.upperBound, &generator)
            let aspectRatio = exp(uniform(logRatio.0, logRatio.1, &generator))
            let cropWidth = Int((targetArea * aspectRatio).squareRoot().rounded(.toNearestOrEven))
            let cropHeight = Int((targetArea / aspectRatio).squareRoot().rounded(.toNearestOrEven))
            if cropWidth > 0 && cropWidth <= width && cropHeight > 0 && cropHeight <= height {
                let top = randomInteger(below: height - cropHeight + 1, &generator)
                let left = randomInteger(below: width - cropWidth + 1, &generator)
                return Crop(top: top, left: left, height: cropHeight, width: cropWidth)
            }
        }
        // torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio, centered.
        let inputRatio = Double(width) / Double(height)
        var (cropWidth, cropHeight) = (width, height)
        if inputRatio < ratio.lowerBound {
            cropHeight = Int((Double(cropWidth) / ratio.lowerBound).rounded(.toNearestOrEven))
        } else if inputRatio > ratio.upperBound {
            cropWidth = Int((Double(cropHeight) * ratio.upperBound).rounded(.toNearestOrEven))
        }
        return Crop(top: (height - cropHeight) / 2, left: (width - cropWidth) / 2, height: cropHeight, width: cropWidth)
    }

    /// The uint8 image after the crop, the resize to size x size and the flip, as PIL produces it.
    func augmented(_ image: RGBImage, generator: inout SeededGenerator) -> RGBImage {
        let crop = cropParameters(width: image.width, height: image.height, generator: &generator)
        let flips = Double(generator.nextUnitFloat()) < flipProbability
        var result = image.cropped(crop).resizedBilinearAntialias(width: size, height: size)
        if flips { result.flipHorizontally() }
        return result
    }

    /// Writes the normalized [3, size, size] values of the augmented image into `buffer`.
    package func write(_ image: RGBImage, generator: inout SeededGenerator, into buffer: UnsafeMutableBufferPointer<Float>) {
        // A resize and crop to the size it already has is a plain copy: only the normalisation remains.
        Preprocessing(resize: size, crop: size, mean: mean, std: std)
            .write(augmented(image, generator: &generator), into: buffer)
    }

    private func uniform(_ low: Double, _ high: Double, _ generator: inout SeededGenerator) -> Double {
        low + (high - low) * Double(generator.next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform in 0..<bound by Lemire's multiply-shift, independent of the standard library's algorithm.
    private func randomInteger(below bound: Int, _ generator: inout SeededGenerator) -> Int {
        Int(generator.next().multipliedFullWidth(by: UInt64(bound)).high)
    }
}

extension RGBImage {
    /// PIL's `crop((left, top, left + width, top + height))` of a box inside the image.
    func cropped(_ crop: Augmentation.Crop) -> RGBImage {
        precondition(crop.left >= 0 && crop.top >= 0 && crop.left + crop.width <= width && crop.top + crop.height <= height,
                     "crop \(crop) outside a \(width)x\(height) image")
        return RGBImage(width: crop.width, height: crop.height) { target in
            pixels.withUnsafeBufferPointer { source in
                for row in 0..<crop.height {
                    (target.baseAddress! + row * crop.width * 3)
                        .update(from: source.baseAddress! + ((crop.top + row) * width + crop.left) * 3, count: crop.width * 3)
                }
            }
        }
    }

    /// PIL's `transpose(FLIP_LEFT_RIGHT)`, in place.
    mutating func flipHorizontally() {
        let (width, rowBytes) = (self.width, bytesPerRow)
        pixels.withUnsafeMutableBufferPointer { pixels in
            for row in 0..<height {
                let line = pixels.baseAddress! + row * rowBytes
                for column in 0..<(width / 2) {
                    let mirror = width - 1 - column
                    for channel in 0..<3 { swap(&line[column * 3 + channel], &line[mirror * 3 + channel]) }
                }
            }
        }
    }
}
