import Dispatch
import Foundation
import XCTest
@testable import Bottleneck
@testable import BottleneckKernels

/// Decoding and preprocessing against PIL/torchvision's own outputs, made by
/// Tests/Fixtures/images/make_image_fixtures.py. Set BOTTLENECK_IMAGE_FIXTURES
/// to a folder made with its --external option to check your own photos.
final class ImageTests: XCTestCase {
    struct Manifest: Decodable {
        struct Image: Decodable {
            let file: String
            let description: String
            let width: Int
            let height: Int
            let decoded_crc32: UInt32
            let decoded: String?
            let preprocess: [PreprocessCase]
            let resize: [ResizeCase]
        }
        struct PreprocessCase: Decodable {
            let resize: Int
            let crop: Int
            let pixels: String
            let tensor: String?
        }
        struct ResizeCase: Decodable {
            let width: Int
            let height: Int
            let pixels: String
        }
        struct BadFile: Decodable {
            let file: String
            let description: String
        }
        let mean: [Float]
        let std: [Float]
        let images: [Image]
        let bad: [BadFile]
    }

    static let folder: URL = {
        if let custom = ProcessInfo.processInfo.environment["BOTTLENECK_IMAGE_FIXTURES"] {
            return URL(fileURLWithPath: custom)
        }
        return URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/images")
    }()

    static let manifest: Manifest = {
        do {
            return try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: folder.appendingPathComponent("manifest.json")))
        } catch {
            fatalError("cannot read \(folder.path)/manifest.json: \(error)")
        }
    }()

    /// Decoded fixtures, shared by the tests (decoding is checked once, in testDecodingMatchesPIL).
    static let decoded: [String: RGBImage] = {
        var images: [String: RGBImage] = [:]
        for image in manifest.images {
            images[image.file] = try? ImageDecoder.decode(path: path(image.file))
        }
        return images
    }()

    static func path(_ relative: String) -> String { folder.appendingPathComponent(relative).path }

    static func bytes(_ relative: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: folder.appendingPathComponent(relative)))
    }

    static func floats(_ relative: String) throws -> [Float] {
        let data = try Data(contentsOf: folder.appendingPathComponent(relative))
        return data.withUnsafeBytes { raw in
            (0..<(raw.count / 4)).map {
                Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)))
            }
        }
    }

    /// How closely two uint8 arrays agree: share of equal values and the largest difference.
    struct Agreement: CustomStringConvertible {
        var equal = 0
        var total = 0
        var largestDifference = 0

        init(_ mine: [UInt8], _ reference: [UInt8]) {
            total = reference.count
            for (a, b) in zip(mine, reference) {
                let difference = abs(Int(a) - Int(b))
                if difference == 0 { equal += 1 }
                largestDifference = max(largestDifference, difference)
            }
        }

        var fraction: Double { total == 0 ? 1 : Double(equal) / Double(total) }
        var description: String {
            String(format: "%d/%d equal (%.4f%%), largest difference %d", equal, total, fraction * 100, largestDifference)
        }
    }

    func image(_ entry: Manifest.Image) throws -> RGBImage {
        try XCTUnwrap(Self.decoded[entry.file], "\(entry.file) did not decode")
    }

    func testDecodingMatchesPIL() throws {
        for entry in Self.manifest.images {
            let decoded: RGBImage
            do {
                decoded = try ImageDecoder.decode(path: Self.path(entry.file))
            } catch {
                XCTFail("\(entry.description): \(error)")
                continue
            }
            XCTAssertEqual([decoded.width, decoded.height], [entry.width, entry.height], entry.file)
            if let reference = entry.decoded {
                let agreement = Agreement(decoded.pixels, try Self.bytes(reference))
                XCTAssertEqual(agreement.equal, agreement.total, "\(entry.file) (\(entry.description)) decodes unlike PIL: \(agreement)")
            }
            XCTAssertEqual(decoded.pixels.withUnsafeBytes { CRC32.checksum($0) }, entry.decoded_crc32,
                           "\(entry.file) (\(entry.description)) decodes unlike PIL")
        }
    }

    func testDecodingFromMemoryEqualsDecodingTheFile() throws {
        let jpeg = Self.manifest.images.first { $0.file.hasSuffix(".jpg") }
        let png = Self.manifest.images.first { $0.file.hasSuffix(".png") }
        for file in [jpeg, png].compactMap({ $0?.file }) {
            let bytes = try Self.bytes(file)
            XCTAssertEqual(try ImageDecoder.decode(bytes: bytes, name: file), try ImageDecoder.decode(path: Self.path(file)))
        }
    }

    func testResizeMatchesPIL() throws {
        for entry in Self.manifest.images {
            for resize in entry.resize {
                let resized = try image(entry).resizedBilinearAntialias(width: resize.width, height: resize.height)
                let agreement = Agreement(resized.pixels, try Self.bytes(resize.pixels))
                XCTAssertEqual(agreement.equal, agreement.total,
                               "\(entry.file) resized to \(resize.width)x\(resize.height): \(agreement)")
            }
        }
    }

    func testResizeAndCenterCropMatchTorchvision() throws {
        var overall = Agreement([], [])
        for entry in Self.manifest.images {
            for step in entry.preprocess {
                let source = try image(entry)
                let preprocessing = Preprocessing(resize: step.resize, crop: step.crop)
                let reference = try Self.bytes(step.pixels)
                let fused = preprocessing.resizedAndCropped(source)
                let agreement = Agreement(fused.pixels, reference)
                let label = "\(entry.file) Resize(\(step.resize)) CenterCrop(\(step.crop))"
                XCTAssertGreaterThanOrEqual(agreement.fraction, 0.99, "\(label): \(agreement)")
                XCTAssertLessThanOrEqual(agreement.largestDifference, 1, "\(label): \(agreement)")
                XCTAssertEqual(agreement.equal, agreement.total, "\(label) is not exact: \(agreement)")
                overall.equal += agreement.equal
                overall.total += agreement.total
                overall.largestDifference = max(overall.largestDifference, agreement.largestDifference)

                // The separate steps give what the fused region-only path gives.
                let size = preprocessing.resizedSize(width: source.width, height: source.height)
                let stepwise = source.resizedBilinearAntialias(width: size.width, height: size.height)
                    .centerCropped(width: step.crop, height: step.crop)
                XCTAssertEqual(stepwise, fused, label)
            }
        }
        print("resize + center crop against torchvision, all fixtures: \(overall)")
    }

    func testTensorsMatchTorchvision() throws {
        let manifest = Self.manifest
        for entry in manifest.images {
            for step in entry.preprocess {
                guard let tensorFile = step.tensor else { continue }
                let preprocessing = Preprocessing(resize: step.resize, crop: step.crop, mean: manifest.mean, std: manifest.std)
                let tensor = preprocessing.tensor(from: try image(entry))
                let reference = try Self.floats(tensorFile)
                XCTAssertEqual(tensor.shape, [3, step.crop, step.crop])
                let largest = zip(tensor.data, reference).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertEqual(tensor.count, reference.count, entry.file)
                XCTAssertLessThanOrEqual(largest, 1e-6, "\(entry.file) Resize(\(step.resize)) CenterCrop(\(step.crop)) tensor")
            }
        }
    }

    func testBadFilesFailWithAMessageNamingTheFile() throws {
        // A word each message must contain, so each failure is reported for its real cause.
        let expected = ["empty.jpg": "empty", "truncated.jpg": "truncated", "no_end_marker.jpg": "truncated",
                        "truncated_progressive.jpg": "truncated", "text.png": "not a JPEG or PNG",
                        "truncated.png": "truncated", "bad_crc.png": "CRC", "bad_text_crc.png": "CRC",
                        "huge.png": "limit", "huge.jpg": "limit"]
        for bad in Self.manifest.bad {
            let path = Self.path(bad.file)
            let name = URL(fileURLWithPath: path).lastPathComponent
            XCTAssertThrowsError(try ImageDecoder.decode(path: path), bad.description) { error in
                let message = String(describing: error)
                XCTAssertTrue(message.contains(name), "\(message) does not name \(name)")
                XCTAssertFalse(message.contains("\n"), "\(message) is not one line")
                if let word = expected[name] {
                    XCTAssertTrue(message.contains(word), "\(message) does not say \(word)")
                }
                print("bad file \(bad.file): \(message)")
            }
        }
    }

    func testUnreadablePathsFailWithTheirReason() {
        for (path, reason) in [("/nonexistent/cat.jpg", "No such file"), (Self.folder.path, "directory")] {
            XCTAssertThrowsError(try ImageDecoder.decode(path: path)) { error in
                XCTAssertEqual((error as? ImageDecodingError)?.file, path)
                XCTAssertTrue(String(describing: error).contains(reason), "\(error)")
            }
        }
    }

    func testResizedSizeFollowsTorchvision() {
        let preprocessing = Preprocessing.imageNet
        // int(256 * long / short): truncated, shorter side exactly 256.
        XCTAssertTrue(preprocessing.resizedSize(width: 500, height: 375) == (341, 256))
        XCTAssertTrue(preprocessing.resizedSize(width: 375, height: 500) == (256, 341))
        XCTAssertTrue(preprocessing.resizedSize(width: 300, height: 300) == (256, 256))
        XCTAssertTrue(preprocessing.resizedSize(width: 17, height: 23) == (256, 346))
        XCTAssertTrue(preprocessing.resizedSize(width: 640, height: 427) == (383, 256))
    }

    func testCenterCropRoundsHalvesToEvenAndPadsWithZeros() {
        let ramp = RGBImage(width: 7, height: 2, pixels: (0..<42).map { UInt8($0) })
        // (7 - 4) / 2 = 1.5 rounds to 2 (Python's round), so columns 2...5.
        XCTAssertEqual(ramp.centerCropped(width: 4, height: 2).pixels, Array(6..<18) + Array(27..<39))
        // Height 2 in a crop of 5: (5 - 2) // 2 = 1 row of zeros above, 2 below.
        let padded = ramp.centerCropped(width: 7, height: 5)
        XCTAssertTrue(padded.pixels[0..<21].allSatisfy { $0 == 0 })
        XCTAssertEqual(Array(padded.pixels[21..<63]), ramp.pixels)
        XCTAssertTrue(padded.pixels[63...].allSatisfy { $0 == 0 })
    }

    func testNormalizeIsTorchvisionsArithmetic() {
        let preprocessing = Preprocessing.imageNet
        let image = RGBImage(width: 2, height: 1, pixels: [0, 128, 255, 17, 200, 99])
        let tensor = preprocessing.normalized(image)
        XCTAssertEqual(tensor.shape, [3, 1, 2])
        for channel in 0..<3 {
            for x in 0..<2 {
                let value = Float(image.pixels[x * 3 + channel]) / 255
                XCTAssertEqual(tensor.data[channel * 2 + x], (value - preprocessing.mean[channel]) / preprocessing.std[channel])
            }
        }
    }

    func testBatchSlotsFilledConcurrentlyEqualSingleTensors() throws {
        let preprocessing = Preprocessing(resize: 73, crop: 64)
        let images = try ["rgb_q90_420_300x200.jpg", "gray_64x64.jpg", "cmyk_40x500.jpg", "rgb_17x23.jpg"].map {
            try ImageDecoder.decode(path: Self.path($0))
        }
        var batch = [Float](repeating: .nan, count: images.count * preprocessing.outputCount)
        batch.withUnsafeMutableBufferPointer { buffer in
            nonisolated(unsafe) let shared = buffer
            DispatchQueue.concurrentPerform(iterations: images.count) { slot in
                preprocessing.write(images[slot], into: shared, slot: slot)
            }
        }
        for (slot, image) in images.enumerated() {
            let range = (slot * preprocessing.outputCount)..<((slot + 1) * preprocessing.outputCount)
            XCTAssertEqual(Array(batch[range]), preprocessing.tensor(from: image).data, "slot \(slot)")
        }
    }

    func testPreprocessingJSONRoundTripsAndRejectsNonsense() throws {
        let json = Preprocessing.imageNet.jsonDescription
        XCTAssertEqual(json, #"{"crop":224,"interpolation":"bilinear-antialias","mean":[0.485,0.456,0.406],"resize":256,"#
                             + #""std":[0.229,0.224,0.225]}"#)
        XCTAssertEqual(try Preprocessing(jsonDescription: json), .imageNet)
        XCTAssertNotEqual(Preprocessing(resize: 73, crop: 64), .imageNet)
        XCTAssertThrowsError(try Preprocessing(jsonDescription: json.replacingOccurrences(of: "bilinear-antialias", with: "nearest")))
        XCTAssertThrowsError(try Preprocessing(jsonDescription: json.replacingOccurrences(of: "[0.229,0.224,0.225]", with: "[1,0]")))
    }
}
