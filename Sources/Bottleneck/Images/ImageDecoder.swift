import CImageCodecs
import Foundation
import BottleneckKernels

/// Why an image file could not be read, as one line: `cat.jpg: truncated JPEG data`.
struct ImageDecodingError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The path (or name) the caller gave.
    package let file: String
    /// What is wrong with it, without the file name.
    package let reason: String

    package var description: String { "\(file): \(reason)" }
}

/// JPEG and PNG decoding into the pixels PIL's `Image.open(f).convert("RGB")` gives:
/// gray replicated to three channels, alpha dropped (not composited), palettes
/// expanded, 16-bit samples cut to their high byte (16-bit grayscale clipped at
/// 255, as Pillow's "I;16" conversion does), Adobe-inverted CMYK converted the
/// way Pillow does, EXIF orientation not applied. The format is recognised
/// from the file's first bytes, never from its extension.
enum ImageDecoder {
    /// Pillow's `2 * Image.MAX_IMAGE_PIXELS`: larger images make `Image.open`
    /// raise DecompressionBombError, and are refused here before any pixel memory is allocated.
    static let defaultPixelLimit = 178_956_970

    static func decode(path: String, pixelLimit: Int = defaultPixelLimit) throws(ImageDecodingError) -> RGBImage {
        try decode(cimage_decoder_open_file(path), name: path, pixelLimit: pixelLimit)
    }

    /// Decodes an image held in memory; `name` is only used in error messages.
    static func decode(bytes: some ContiguousBytes, name: String,
                              pixelLimit: Int = defaultPixelLimit) throws(ImageDecodingError) -> RGBImage {
        let result: Result<RGBImage, ImageDecodingError> = bytes.withUnsafeBytes { buffer in
            let start = buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
            return Result { () throws(ImageDecodingError) in
                try decode(cimage_decoder_open_memory(start, buffer.count), name: name, pixelLimit: pixelLimit)
            }
        }
        return try result.get()
    }

    private static func decode(_ decoder: OpaquePointer?, name: String, pixelLimit: Int) throws(ImageDecodingError) -> RGBImage {
        guard let decoder else { throw ImageDecodingError(file: name, reason: "out of memory starting the decoder") }
        defer { cimage_decoder_close(decoder) }
        func failure() -> ImageDecodingError {
            ImageDecodingError(file: name, reason: String(cString: cimage_decoder_error(decoder)))
        }

        var width: Int32 = 0
        var height: Int32 = 0
        guard cimage_decoder_read_header(decoder, UInt64(max(pixelLimit, 0)), &width, &height) == 0 else { throw failure() }
        var decoded = false
        let image = RGBImage(width: Int(width), height: Int(height)) { pixels in
            decoded = cimage_decoder_read_rgb(decoder, pixels.baseAddress) == 0
        }
        guard decoded else { throw failure() }
        return image
    }
}
