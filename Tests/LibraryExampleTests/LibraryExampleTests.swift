import Bottleneck
import Foundation
import XCTest

// This file imports Bottleneck without @testable: it compiles only against the public API. The function between
// the markers is README.md's "Using bottleneck as a library" example, character for character (the first test
// checks that), and the second test runs it.

// README example begins
func trainClassifier(images: String, runs: String, imageSize: Int = 224) throws -> ImageClassifier {
    var extraction = FeatureExtraction(images: images, cache: runs + "/fc7.h5")
    extraction.weights = .torchvisionCache    // vgg16-397923af.pth where torch.hub keeps it, else random (logged)
    extraction.imageSize = imageSize          // torchvision's eval transform: Resize 256, CenterCrop 224
    let extracted = try extraction.run(log: { print($0) })
    print(extracted.counts)                   // "6 images (6 extracted, 0 reused, 0 changed, 0 removed, 0 failed)"

    var training = HeadTraining(cache: runs + "/fc7.h5", runDirectory: runs + "/head")
    training.optimizer = .adam
    training.epochs = 5
    let result = try training.run()
    print("best epoch \(result.bestEpoch): validation accuracy \(result.validationAccuracy)")

    let cache = try FeatureCache(path: runs + "/fc7.h5")
    print("\(cache.count) rows of \(cache.activationShape) at \(cache.layer), classes \(cache.classes)")

    let classifier = try ImageClassifier(modelPath: result.modelPath)
    let ranked = try classifier.classify(imageAt: images + "/" + cache.paths[0])
    print("\(cache.paths[0]): \(ranked[0].className) (p = \(ranked[0].probability))")
    return classifier
}
// README example ends

final class LibraryExampleTests: XCTestCase {
    private let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    func testReadmeShowsThisExample() throws {
        let source = try String(contentsOf: URL(fileURLWithPath: #filePath), encoding: .utf8)
        let begin = try XCTUnwrap(source.range(of: "// README example begins\n"))
        let end = try XCTUnwrap(source.range(of: "// README example ends\n"))
        let example = String(source[begin.upperBound..<end.lowerBound])
        let readme = try String(contentsOf: repository.appendingPathComponent("README.md"), encoding: .utf8)
        XCTAssertTrue(readme.contains("```swift\nimport Bottleneck\n\n" + example + "```"),
                      "README.md's library example differs from the one compiled here")
    }

    func testExampleRunsOnImages() throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("bottleneck-library-\(getpid())")
        defer { try? FileManager.default.removeItem(at: work) }
        let images = work.appendingPathComponent("images")
        let fixtures = repository.appendingPathComponent("Tests/Fixtures/images")
        for (folder, file) in [("train/a", "rgb_17x23.jpg"), ("train/a", "rgb_trns_19x13.png"), ("train/b", "gray2_trns_19x13.png"),
                               ("train/b", "p4_37x29.png"), ("val/a", "bilevel_17x23.png"), ("val/b", "la16_23x17.png")] {
            let target = images.appendingPathComponent(folder)
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: fixtures.appendingPathComponent(file), to: target.appendingPathComponent(file))
        }
        // 32 px: the same code path at 1/49 of the arithmetic, for a debug build.
        let classifier = try trainClassifier(images: images.path, runs: work.path, imageSize: 32)

        let cache = try FeatureCache(path: work.path + "/fc7.h5")
        XCTAssertEqual(cache.count, 6)
        XCTAssertEqual(cache.classes, ["a", "b"])
        XCTAssertEqual(cache.activationShape, [4096])
        XCTAssertEqual(try cache.features(rows: 0..<2).count, 2 * 4096)
        XCTAssertEqual(classifier.classes, ["a", "b"])
        let bytes = try [UInt8](Data(contentsOf: fixtures.appendingPathComponent("rgb_17x23.jpg")))
        let ranked = try classifier.classify(encodedImage: bytes)
        XCTAssertEqual(Set(ranked.map(\.className)), ["a", "b"])
        XCTAssertEqual(ranked.map(\.probability).reduce(0, +), 1, accuracy: 1e-5)
        XCTAssertGreaterThanOrEqual(ranked[0].probability, ranked[1].probability)
        let gray = try classifier.classify(rgbPixels: [UInt8](repeating: 128, count: 40 * 30 * 3), width: 40, height: 30)
        XCTAssertEqual(gray.count, 2)

        XCTAssertThrowsError(try classifier.classify(rgbPixels: [1, 2, 3], width: 2, height: 2)) { error in
            XCTAssertTrue("\(error)".contains("width × height × 3"), "\(error)")
        }
        XCTAssertThrowsError(try classifier.classify(encodedImage: [0x89, 0x50, 0x4e, 0x47])) { error in
            XCTAssertTrue("\(error)".hasPrefix("the image: "), "\(error)")
        }
        XCTAssertThrowsError(try FeatureCache(path: work.path + "/missing.h5")) { error in
            XCTAssertTrue("\(error)".contains("missing.h5"), "\(error)")
        }
    }
}
