import Foundation
import BottleneckKernels

/// torchvision's ImageNet eval transform on a decoded image:
/// `Resize(resize)` (shorter side, PIL bilinear with antialiasing) →
/// `CenterCrop(crop)` (zero padding when the image is smaller) → `ToTensor()` →
/// `Normalize(mean, std)`, giving a float32 [3, crop, crop] tensor.
///
/// Stored as JSON with the feature cache, so a cache made with other
/// preprocessing is recognised.
package struct Preprocessing: Codable, Equatable, Sendable {
    package enum Interpolation: String, Codable, Sendable {
        /// PIL's `Image.BILINEAR`, which always antialiases when downscaling, exactly as Pillow 13
        /// computes it (the order of its two passes included).
        case bilinearAntialias = "bilinear-antialias"
    }

    /// Length the shorter side is resized to.
    let resize: Int
    /// Side of the square center crop.
    let crop: Int
    /// Per-channel R, G, B values subtracted after scaling to [0, 1], then divided by `std`.
    package let mean: [Float]
    let std: [Float]
    let interpolation: Interpolation

    package init(resize: Int = 256, crop: Int = 224,
                mean: [Float] = [0.485, 0.456, 0.406], std: [Float] = [0.229, 0.224, 0.225],
                interpolation: Interpolation = .bilinearAntialias) {
        self.resize = resize
        self.crop = crop
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        if let problem { preconditionFailure(problem) }
    }

    /// The largest resize or crop: the bound keeps a hostile cache or model from sizing every image's buffers
    /// (VGG's own resize is 256).
    static let largestSize = 8192
    /// The largest training image side whose evaluation resize (256/224 of it) stays within `largestSize`.
    static let largestImageSize = 4096
    /// The image sides a network may be run at: from 32, which five 2x2 max pools bring down to 1.
    package static let imageSizes = 32...largestImageSize
    /// What every face says of an image size outside `imageSizes`, after the setting's name.
    package static let imageSizeRequirement = "must be between 32 (five 2x2 pools) and \(largestImageSize)"

    /// The transform every torchvision ImageNet model card uses.
    static let imageNet = Preprocessing()

    /// torchvision's eval transform scaled to images of side `imageSize`: Resize(round(S · 256/224)), CenterCrop(S).
    package static func evaluation(imageSize: Int) -> Preprocessing {
        Preprocessing(resize: Int((Double(imageSize) * 256 / 224).rounded()), crop: imageSize)
    }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        resize = try container.decode(Int.self, forKey: .resize)
        crop = try container.decode(Int.self, forKey: .crop)
        mean = try container.decode([Float].self, forKey: .mean)
        std = try container.decode([Float].self, forKey: .std)
        interpolation = try container.decode(Interpolation.self, forKey: .interpolation)
        if let problem {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: problem))
        }
    }

    private var problem: String? {
        if !(1...Self.largestSize).contains(resize) || !(1...Self.largestSize).contains(crop) {
            return "resize (\(resize)) and crop (\(crop)) must be between 1 and \(Self.largestSize)"
        }
        if mean.count != 3 || std.count != 3 { return "mean and std need 3 values (R, G, B), got \(mean.count) and \(std.count)" }
        if std.contains(0) { return "std must not contain 0" }
        if !(mean + std).allSatisfy(\.isFinite) { return "mean and std must be finite numbers" }
        return nil
    }

    /// This transform normalising as the weights expect (`normalization`, a Keras VGG's caffe values) where it would
    /// use torchvision's ImageNet mean and std; a mean and std set to anything else were chosen and are kept. Says
    /// through `log` which normalisation the weights imply and whether it is used.
    func adopting(_ normalization: InputNormalization?, log: (String) -> Void) -> Preprocessing {
        guard let normalization else { return self }
        guard mean == Self.imageNet.mean, std == Self.imageNet.std else {
            log("weights: they imply \(normalization.origin); keeping the chosen mean \(mean), std \(std)")
            return self
        }
        log("weights: they imply \(normalization.origin): images are normalised with \(normalization.values)")
        return Preprocessing(resize: resize, crop: crop, mean: normalization.mean, std: normalization.std, interpolation: interpolation)
    }

    /// Single-line JSON with sorted keys, stable enough to compare as a string.
    var jsonDescription: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Encoding plain numbers, strings and arrays cannot fail.
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }

    package init(jsonDescription: String) throws {
        self = try JSONDecoder().decode(Preprocessing.self, from: Data(jsonDescription.utf8))
    }

    var outputShape: [Int] { [3, crop, crop] }
    var outputCount: Int { 3 * crop * crop }

    /// torchvision's `_compute_resized_output_size` for an int size: the shorter
    /// side becomes `resize`, the longer `int(resize * long / short)` (truncated).
    func resizedSize(width: Int, height: Int) -> (width: Int, height: Int) {
        let (short, long) = width <= height ? (width, height) : (height, width)
        let newLong = Int(Double(resize * long) / Double(short))
        return width <= height ? (resize, newLong) : (newLong, resize)
    }

    /// The uint8 image after Resize and CenterCrop, as PIL produces it.
    func resizedAndCropped(_ image: RGBImage) -> RGBImage {
        let placed = cropRegion(of: image)
        return placed.region.padded(toWidth: crop, height: crop, left: placed.left, top: placed.top)
    }

    func tensor(from image: RGBImage) -> Tensor {
        Tensor(shape: outputShape, unsafeUninitialized: { write(image, into: $0) })
    }

    /// Writes the [3, crop, crop] values for `image` into `buffer` (exactly `outputCount` floats).
    package func write(_ image: RGBImage, into buffer: UnsafeMutableBufferPointer<Float>) {
        let placed = cropRegion(of: image)
        writeNormalized(placed.region, left: placed.left, top: placed.top, width: crop, height: crop, into: buffer)
    }

    /// Writes image `slot` of a [batch, 3, crop, crop] buffer. Different slots
    /// may be written from different threads at once.
    package func write(_ image: RGBImage, into batch: UnsafeMutableBufferPointer<Float>, slot: Int) {
        precondition(slot >= 0 && (slot + 1) * outputCount <= batch.count,
                     "slot \(slot) outside a batch buffer of \(batch.count / outputCount) images")
        write(image, into: UnsafeMutableBufferPointer(rebasing: batch[(slot * outputCount)..<((slot + 1) * outputCount)]))
    }

    /// ToTensor + Normalize alone: [3, height, width] from the image's own size.
    func normalized(_ image: RGBImage) -> Tensor {
        Tensor(shape: [3, image.height, image.width], unsafeUninitialized: { buffer in
            writeNormalized(image, left: 0, top: 0, width: image.width, height: image.height, into: buffer)
        })
    }

    /// The part of the resized image the center crop keeps, resized without the
    /// rest, and where it lands in the crop (off the corner only when padding).
    private func cropRegion(of image: RGBImage) -> (region: RGBImage, left: Int, top: Int) {
        let size = resizedSize(width: image.width, height: image.height)
        let columns = CenterCropAxis(imageSize: size.width, cropSize: crop)
        let rows = CenterCropAxis(imageSize: size.height, cropSize: crop)
        let region = image.resampledRegion(width: size.width, height: size.height, columns: columns.source, rows: rows.source)
        return (region, columns.padding, rows.padding)
    }

    /// Normalizes `region` into a `width` x `height` canvas at (`left`, `top`);
    /// the rest of the canvas gets the value of a zero pixel, as torchvision's padding does.
    private func writeNormalized(_ region: RGBImage, left: Int, top: Int, width: Int, height: Int,
                                 into buffer: UnsafeMutableBufferPointer<Float>) {
        precondition(buffer.count == 3 * width * height, "need \(3 * width * height) floats, got \(buffer.count)")
        precondition(left + region.width <= width && top + region.height <= height, "region does not fit the canvas")
        // Only 256 inputs per channel: a table computed with torch's float32 operations in torch's order
        // ((x / 255 - mean) / std) gives its exact values and saves the divisions.
        var table = [Float](repeating: 0, count: 3 * 256)
        for channel in 0..<3 {
            for value in 0..<256 {
                table[channel * 256 + value] = (Float(value) / 255 - mean[channel]) / std[channel]
            }
        }
        let planeSize = width * height
        table.withUnsafeBufferPointer { table in
            region.pixels.withUnsafeBufferPointer { pixels in
                for channel in 0..<3 {
                    let values = table.baseAddress! + channel * 256
                    let plane = buffer.baseAddress! + channel * planeSize
                    plane.update(repeating: values[0], count: planeSize)
                    for y in 0..<region.height {
                        let output = plane + (top + y) * width + left
                        var input = pixels.baseAddress! + y * region.bytesPerRow + channel
                        for x in 0..<region.width {
                            output[x] = values[Int(input.pointee)]
                            input += 3
                        }
                    }
                }
            }
        }
    }
}

/// One axis of torchvision's `center_crop`: which part of the image it keeps
/// and, when the crop is larger than the image, the zero padding before it.
struct CenterCropAxis {
    let source: Range<Int>
    let padding: Int

    init(imageSize: Int, cropSize: Int) {
        if cropSize > imageSize {
            // torchvision pads (crop - size) // 2 before and the rest after.
            source = 0..<imageSize
            padding = (cropSize - imageSize) / 2
        } else {
            // int(round((size - crop) / 2.0)): Python rounds halves to even.
            let start = Int((Double(imageSize - cropSize) / 2).rounded(.toNearestOrEven))
            source = start..<(start + cropSize)
            padding = 0
        }
    }
}

extension RGBImage {
    /// torchvision's `CenterCrop((height, width))`, zero-padding a dimension smaller than the crop.
    func centerCropped(width cropWidth: Int, height cropHeight: Int) -> RGBImage {
        let columns = CenterCropAxis(imageSize: width, cropSize: cropWidth)
        let rows = CenterCropAxis(imageSize: height, cropSize: cropHeight)
        return resampledRegion(width: width, height: height, columns: columns.source, rows: rows.source)
            .padded(toWidth: cropWidth, height: cropHeight, left: columns.padding, top: rows.padding)
    }

    /// This image inside a black canvas, its top-left corner at (`left`, `top`).
    func padded(toWidth canvasWidth: Int, height canvasHeight: Int, left: Int, top: Int) -> RGBImage {
        if canvasWidth == width && canvasHeight == height { return self }
        var canvas = [UInt8](repeating: 0, count: canvasWidth * canvasHeight * 3)
        canvas.withUnsafeMutableBufferPointer { canvas in
            pixels.withUnsafeBufferPointer { pixels in
                for y in 0..<height {
                    (canvas.baseAddress! + ((top + y) * canvasWidth + left) * 3)
                        .update(from: pixels.baseAddress! + y * bytesPerRow, count: bytesPerRow)
                }
            }
        }
        return RGBImage(width: canvasWidth, height: canvasHeight, pixels: canvas)
    }
}
