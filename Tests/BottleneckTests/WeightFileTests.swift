import Foundation
import XCTest
@testable import Bottleneck
@testable import BottleneckKernels

/// State dicts read from every weight format (fixtures made by
/// Tests/Fixtures/network/make_network_fixtures.py and
/// Tests/Fixtures/weights/make_weight_fixtures.py), bad files, SHA-256, HDF5.
final class WeightFileTests: XCTestCase {
    private static let fixtures = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    private func network(_ name: String) -> String { Self.fixtures.appendingPathComponent("network/\(name)").path }
    private func weights(_ name: String) -> String { Self.fixtures.appendingPathComponent("weights/\(name)").path }

    private lazy var scratchDirectory: URL = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weight-tests-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }()

    private func temporaryPath(_ name: String) -> String { scratchDirectory.appendingPathComponent(name).path }

    override func tearDown() {
        try? FileManager.default.removeItem(at: scratchDirectory)
        super.tearDown()
    }

    private func manifestShapes() throws -> [String: [Int]] {
        struct Manifest: Decodable { let state_dict: [String: [Int]] }
        let data = try Data(contentsOf: URL(fileURLWithPath: network("manifest.json")))
        return try JSONDecoder().decode(Manifest.self, from: data).state_dict
    }

    private func bits(_ tensor: Tensor) -> [UInt32] { tensor.data.map(\.bitPattern) }

    private func assertSameTensors(_ file: StateDictFile, _ reference: StateDictFile,
                                   file line: StaticString = #filePath, line number: UInt = #line) throws {
        XCTAssertEqual(file.entries.map(\.key).sorted(), reference.entries.map(\.key).sorted(), file.path,
                       file: line, line: number)
        for entry in reference.entries {
            let mine = try file.tensor(entry.key), theirs = try reference.tensor(entry.key)
            XCTAssertEqual(mine.shape, theirs.shape, "\(file.path) \(entry.key)", file: line, line: number)
            XCTAssertEqual(bits(mine), bits(theirs), "\(file.path) \(entry.key)", file: line, line: number)
        }
    }

    /// The error `open` (and reading every tensor) throws for a bad file.
    private func openingError(_ path: String) -> WeightsError? {
        do {
            let file = try StateDictFile.open(path: path)
            for entry in file.entries where entry.dtype.isReadableAsFloat32 { _ = try file.tensor(entry.key) }
            return nil
        } catch {
            return error
        }
    }

    // MARK: formats

    func testAllFourFormatsGiveBitwiseIdenticalTensors() throws {
        let expected = try manifestShapes()
        let reference = try StateDictFile.open(path: network("narrow_vgg16.safetensors"))
        XCTAssertEqual(reference.format, .safetensors)
        let others: [(String, WeightFileFormat)] = [("narrow_vgg16_legacy.pth", .torchLegacy),
                                                    ("narrow_vgg16_zip.pth", .torchZip), ("narrow_vgg16.h5", .hdf5)]
        for (name, format) in others {
            let file = try StateDictFile.open(path: network(name))
            XCTAssertEqual(file.format, format, name)
            XCTAssertTrue(file.notes.isEmpty, "\(name): \(file.notes)")
            try file.validate(expected: expected)
            try assertSameTensors(file, reference)
        }
        try reference.validate(expected: expected)
        // PyTorch files list keys in state-dict order, as torchvision builds them.
        let legacy = try StateDictFile.open(path: network("narrow_vgg16_legacy.pth"))
        XCTAssertEqual(legacy.entries.prefix(3).map(\.key), ["features.0.weight", "features.0.bias", "features.2.weight"])
        XCTAssertEqual(legacy.entry("classifier.0.weight")?.shape, [64, 1568])
        XCTAssertEqual(legacy.entry("classifier.0.weight")?.dtype, .float32)
    }

    func testValuesEqualTheRawFloat32Bytes() throws {
        // Independent of the readers: decode the safetensors layout here.
        let raw = try Data(contentsOf: URL(fileURLWithPath: network("narrow_vgg16.safetensors")))
        let headerSize = Int(raw.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONSerialization.jsonObject(with: raw.subdata(in: 8..<(8 + headerSize))) as! [String: Any]
        let offsets = (header["features.2.weight"] as! [String: Any])["data_offsets"] as! [Int]
        let bytes = raw.subdata(in: (8 + headerSize + offsets[0])..<(8 + headerSize + offsets[1]))
        let values = bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let legacy = try StateDictFile.open(path: network("narrow_vgg16_legacy.pth"))
        XCTAssertEqual(bits(try legacy.tensor("features.2.weight")), values.map(\.bitPattern))
    }

    func testOtherDTypesAreConvertedToFloat32Exactly() throws {
        let reference = try StateDictFile.open(path: weights("tiny_f32.safetensors"))
        let cases: [(String, WeightDType)] = [
            ("tiny_f16_legacy.pth", .float16), ("tiny_f16_zip.pth", .float16), ("tiny_f16.safetensors", .float16),
            ("tiny_f16.h5", .float16), ("tiny_bf16_legacy.pth", .bfloat16), ("tiny_bf16_zip.pth", .bfloat16),
            ("tiny_bf16.safetensors", .bfloat16), ("tiny_f64_legacy.pth", .float64), ("tiny_f64_zip.pth", .float64),
            ("tiny_f64.safetensors", .float64), ("tiny_f64.h5", .float64),
        ]
        for (name, dtype) in cases {
            let file = try StateDictFile.open(path: weights(name))
            XCTAssertEqual(Set(file.entries.map(\.dtype)), [dtype], name)
            XCTAssertTrue(file.notes.contains("4 tensors stored as \(dtype), converted to float32 when read"),
                          "\(name): \(file.notes)")
            try assertSameTensors(file, reference)
        }
    }

    func testHalfPrecisionEdgeCases() throws {
        let expected: [Float] = [0, -0.0, 0x1p-24, 3 * 0x1p-24, 0x1p-14, 65504, -65504, .infinity, -.infinity,
                                 0.333251953125]
        for name in ["half_specials.safetensors", "half_specials.pth"] {
            let values = try StateDictFile.open(path: weights(name)).tensor("specials")
            XCTAssertEqual(values.data.map(\.bitPattern), expected.map(\.bitPattern), name)
        }
        XCTAssertTrue(floatFromHalfBits(0x7e00).isNaN)
    }

    func testOlderAndNewerPickleAndZipVariants() throws {
        let reference = try StateDictFile.open(path: weights("tiny_f32.safetensors"))
        for name in ["protocol4_zip.pth", "old_style_legacy.pth", "zip64_zip.pth"] {
            let file = try StateDictFile.open(path: weights(name))
            XCTAssertEqual(file.entries.map(\.key), ["features.0.weight", "features.0.bias", "classifier.0.weight",
                                                     "classifier.0.bias"], name)
            try assertSameTensors(file, reference)
        }
    }

    func testCheckpointWrapperAndDataParallelPrefixAreRemoved() throws {
        let file = try StateDictFile.open(path: weights("checkpoint_wrapped.pth"))
        XCTAssertEqual(file.notes, ["the state dict is read from checkpoint['state_dict']",
                                    "removed the 'module.' prefix of every key (a DataParallel state dict)"])
        try assertSameTensors(file, try StateDictFile.open(path: weights("tiny_f32.safetensors")))
    }

    func testStridedAndOffsetTensorsSharingOneStorage() throws {
        for name in ["noncontiguous_legacy.pth", "noncontiguous_zip.pth"] {
            let file = try StateDictFile.open(path: weights(name))
            let base = (0..<12).map(Float.init)
            XCTAssertEqual(try file.tensor("base").data, base, name)
            let transposed = try file.tensor("transposed")
            XCTAssertEqual(transposed.shape, [4, 3])
            XCTAssertEqual(transposed.data, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11], name)
            XCTAssertEqual(try file.tensor("rows_1_2").data, Array(base[4...]), name)
            XCTAssertEqual(try file.tensor("column_2").data, [2, 6, 10], name)
        }
    }

    // MARK: validation

    func testValidationNamesShapeMismatchesMissingAndUnexpectedKeys() throws {
        let file = try StateDictFile.open(path: network("narrow_vgg16_zip.pth"))
        var expected = try manifestShapes()
        expected["features.0.weight"] = [64, 3, 3, 3]
        expected["classifier.9.weight"] = [10, 10]
        expected["classifier.6.bias"] = nil
        XCTAssertThrowsError(try file.validate(expected: expected)) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains(network("narrow_vgg16_zip.pth")), message)
            XCTAssertTrue(message.contains("features.0.weight has shape [4, 3, 3, 3], expected [64, 3, 3, 3]"), message)
            XCTAssertTrue(message.contains("missing 1 key: classifier.9.weight"), message)
            XCTAssertTrue(message.contains("1 unexpected key: classifier.6.bias"), message)
            XCTAssertFalse(message.contains("\n"))
        }
        expected["classifier.9.weight"] = nil
        expected["features.0.weight"] = [4, 3, 3, 3]
        XCTAssertNoThrow(try file.validate(expected: expected, allowingExtraKeys: true))
    }

    func testForeignArchitectureIsCalledThat() throws {
        let file = try StateDictFile.open(path: weights("resnet_like.pth"))
        XCTAssertEqual(file.entry("bn1.num_batches_tracked")?.dtype, .int64)
        XCTAssertThrowsError(try file.validate(expected: try manifestShapes())) { error in
            XCTAssertEqual((error as? WeightsError)?.kind, .mismatch)
            XCTAssertTrue("\(error)".contains("another architecture"), "\(error)")
            XCTAssertTrue("\(error)".contains("conv1.weight"), "\(error)")
        }
        XCTAssertThrowsError(try file.tensor("bn1.num_batches_tracked")) { error in
            XCTAssertEqual((error as? WeightsError)?.kind, .nonFloatTensor)
        }
        XCTAssertThrowsError(try file.tensor("features.0.weight")) { error in
            XCTAssertEqual((error as? WeightsError)?.kind, .missingKey)
        }
    }

    // MARK: bad files

    func testBadFilesThrowOneLineErrorsNamingTheFile() throws {
        let empty = temporaryPath("empty.pth")
        _ = FileManager.default.createFile(atPath: empty, contents: Data())
        let cases: [(String, WeightsError.Kind, String)] = [
            (weights("does_not_exist.pth"), .missingFile, "No such file"),
            (empty, .emptyFile, "empty"),
            (Self.fixtures.path, .unreadable, "not a regular file"),
            (weights("truncated_legacy.pth"), .truncated, "runs past the end of the file"),
            (weights("truncated_zip.pth"), .truncated, "central directory"),
            (weights("text_renamed.pth"), .unrecognizedFormat, "not a PyTorch, safetensors or HDF5 weights file"),
            (weights("jpeg_renamed.pth"), .unrecognizedFormat, "JPEG"),
            (weights("offsets_past_eof.safetensors"), .truncated, "data_offsets"),
            (weights("compressed_zip.pth"), .unsupported, "compressed"),
            (weights("whole_module.pth"), .unsupported, "torch.nn.modules.linear.Linear"),
            (network("manifest.json"), .unrecognizedFormat, "text"),
        ]
        for (path, kind, fragment) in cases {
            guard let error = openingError(path) else {
                XCTFail("\(path) opened without an error")
                continue
            }
            XCTAssertEqual(error.kind, kind, "\(error)")
            XCTAssertTrue(error.description.contains(path), "\(error)")
            XCTAssertTrue(error.description.contains(fragment), "\(error)")
            XCTAssertFalse(error.description.contains("\n"), "\(error)")
        }
    }

    /// The legacy header pickles of a real file, then `mainPickle` in place of the state dict.
    private func legacyFile(named name: String, mainPickle: [UInt8]) throws -> String {
        let original = try Data(contentsOf: URL(fileURLWithPath: network("narrow_vgg16_legacy.pth")))
        let headerPickles = original.prefix(137)  // magic, protocol version, sys_info (see pickletools)
        let path = temporaryPath(name)
        try (headerPickles + Data(mainPickle)).write(to: URL(fileURLWithPath: path))
        return path
    }

    func testUnsupportedPickleOpcodeIsNamed() throws {
        let path = try legacyFile(named: "set.pth", mainPickle: [0x80, 0x02, 0x8f, 0x2e])  // EMPTY_SET, STOP
        let error = try XCTUnwrap(openingError(path))
        XCTAssertEqual(error.kind, .unsupported)
        XCTAssertTrue(error.description.contains("EMPTY_SET (0x8f)"), "\(error)")
    }

    func testDeeplyNestedPickleDoesNotOverflowTheStack() throws {
        // BININT1 0, then 200k TUPLE1: a chain Swift would release recursively.
        let nested = [0x80, 0x02, 0x4b, 0x00] + [UInt8](repeating: 0x85, count: 200_000) + [0x2e]
        let error = try XCTUnwrap(openingError(try legacyFile(named: "nested.pth", mainPickle: nested)))
        XCTAssertEqual(error.kind, .unsupported)
        XCTAssertTrue(error.description.contains("a tuple, not a state dict"), "\(error)")
    }

    func testCorruptedFilesNeverCrash() throws {
        var generator = SeededGenerator(seed: 42)
        for name in ["tiny_f16_legacy.pth", "tiny_bf16_zip.pth", "tiny_f64.safetensors", "noncontiguous_legacy.pth"] {
            let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: weights(name))))
            for trial in 0..<100 {
                var bytes = original
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
                }
                if trial.isMultiple(of: 3) { bytes.removeLast(Int.random(in: 0..<bytes.count, using: &generator)) }
                let path = temporaryPath("corrupt-\(trial)-\(name)")  // left for tearDown: a failure names it
                try Data(bytes).write(to: URL(fileURLWithPath: path))
                if let error = openingError(path) {
                    XCTAssertTrue(error.description.contains(path), "\(error)")
                    XCTAssertFalse(error.description.contains("\n"), "\(error)")
                }
            }
        }
    }

    // MARK: non-finite values

    /// A copy of the narrow network fixture `name` with element `index` of tensor `key` set to `value`: the
    /// element is found by the bytes of its run in the reference file, so one helper patches all four formats.
    private func damagedCopy(_ name: String, key: String, index: Int, value: Float) throws -> String {
        try Fixtures.damagedWeights(name, key: key, index: index, value: value,
                                    at: temporaryPath("\(key)-\(index)-\(value)-\(name)"))
    }

    func testNonFiniteParametersAreRefusedAtLoadWithTheTensorsName() throws {
        let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
        // conv1_1's weight [4, 3, 3, 3] and conv1_2's bias [4]: nothing below conv1_1 is usable, or nothing above it.
        let cases: [(key: String, index: Int, value: Float, text: String, usable: String?)] = [
            ("features.0.weight", 100, .nan, "NaN", nil), ("features.0.weight", 7, .infinity, "inf", nil),
            ("features.2.bias", 1, -.infinity, "-inf", "relu1_1"), ("features.2.bias", 3, .nan, "NaN", "relu1_1"),
        ]
        for name in ["narrow_vgg16_legacy.pth", "narrow_vgg16_zip.pth", "narrow_vgg16.safetensors", "narrow_vgg16.h5"] {
            for damage in cases {
                let path = try damagedCopy(name, key: damage.key, index: damage.index, value: damage.value)
                XCTAssertThrowsError(try NetworkLoader.load(config: config, through: try CutPoint("conv1_2", in: config),
                                                            weights: .file(path))) { error in
                    XCTAssertEqual((error as? WeightsError)?.kind, .nonFinite, "\(error)")
                    XCTAssertEqual("\(error)", "weights file \(path): tensor \(damage.key) holds \(damage.text) at index \(damage.index) "
                                   + "— the file is damaged")
                }
                let inspection = try WeightsInspection(path: path, config: config)
                XCTAssertEqual(inspection.problem,
                               "tensor \(damage.key) holds \(damage.text) at index \(damage.index) — the file is damaged")
                XCTAssertEqual(inspection.deepestUsableLayer, damage.usable, path)
                XCTAssertTrue(inspection.report.contains("usable cut layers: " + (damage.usable.map { "up to \($0)" } ?? "none")),
                              inspection.report)
            }
        }
    }

    /// Only what a prefix loads is read, so only that is checked; inspect says how far the file is usable.
    func testDamageAboveTheCutLeavesThePrefixUsable() throws {
        let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
        let path = try damagedCopy("narrow_vgg16.safetensors", key: "classifier.0.bias", index: 2, value: .nan)
        XCTAssertNoThrow(try NetworkLoader.load(config: config, through: try CutPoint("pool5", in: config), weights: .file(path)))
        XCTAssertThrowsError(try NetworkLoader.load(config: config, through: try CutPoint("fc7", in: config), weights: .file(path))) {
            XCTAssertTrue("\($0)".hasSuffix("tensor classifier.0.bias holds NaN at index 2 — the file is damaged"), "\($0)")
        }
        let inspection = try WeightsInspection(path: path, config: config)
        XCTAssertEqual(inspection.deepestUsableLayer, "avgpool")
        XCTAssertTrue(inspection.report.contains("not usable as it is: tensor classifier.0.bias holds NaN"), inspection.report)
    }

    // MARK: SHA-256

    func testSHA256KnownVectors() {
        XCTAssertEqual(SHA256.hex(SHA256.digest([])),
                       "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(SHA256.digest(Array("abc".utf8))),
                       "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(SHA256.digest(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hex(SHA256.digest([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000))),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // Fed in uneven pieces, the digest is the same.
        let message = [UInt8]((0..<3).flatMap { _ in 0...255 })
        var hasher = SHA256()
        var start = 0
        for length in [0, 1, 63, 64, 65, 100, 300, 500] where start < message.count {
            let end = min(message.count, start + length)
            hasher.update(Array(message[start..<end]))
            start = end
        }
        hasher.update(Array(message[start...]))
        XCTAssertEqual(SHA256.hex(hasher.finalize()), "f3a25aa93aa2fbba28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe363")
    }

    func testSHA256OfAFixtureMatchesSha256sum() throws {
        let file = try StateDictFile.open(path: network("narrow_vgg16_legacy.pth"))
        XCTAssertEqual(try file.sha256(), "97cbfbd52183ceacde24057dc807a5a70056de165dea2732ce588da22533419b")
        XCTAssertEqual(try SHA256.hexDigest(ofFileAt: weights("tiny_f32.safetensors")),
                       "d6c59a055e4d4d1fa4380e3ae2137489f9b8b5e86dc9a8bee4d3d0a086dd8035")
    }

    // MARK: HDF5

    func testHDF5WeightsWriteReadRoundTrip() throws {
        let source = try StateDictFile.open(path: network("narrow_vgg16_legacy.pth"))
        let tensors = try source.entries.map { ($0.key, try source.tensor($0.key)) }
        let path = temporaryPath("roundtrip.h5")
        try writeStateDictHDF5(path: path, tensors: tensors, attributes: ["source": "narrow fixture", "classes": "10"])
        let written = try StateDictFile.open(path: path)
        XCTAssertEqual(written.format, .hdf5)
        XCTAssertEqual(written.metadata, ["source": "narrow fixture", "classes": "10"])
        try assertSameTensors(written, source)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".partial-\(getpid())"))

        XCTAssertThrowsError(try writeStateDictHDF5(path: path, tensors: [tensors[0], tensors[0]])) { error in
            XCTAssertEqual((error as? WeightsError)?.kind, .writeFailed)
        }
    }

    func testHDF5WrapperRowsStringsAndAttributes() throws {
        let path = temporaryPath("wrapper.h5")
        do {
            let file = try HDF5File(path: path, mode: .truncate)
            let features = try file.createDataset("features", of: Float.self, shape: [0, 2, 3],
                                                  layout: .extendibleRows(chunkRows: 4, deflateLevel: 4))
            let firstBatch = (0..<12).map(Float.init), secondBatch = (12..<30).map(Float.init)
            try firstBatch.withUnsafeBufferPointer { try features.writeRows($0, startingAt: 0) }
            try secondBatch.withUnsafeBufferPointer { try features.writeRows($0, startingAt: 2) }
            try file.createStringDataset("paths", strings: ["cat/1.jpg", "dög/2.jpg", "bird/3.png"],
                                         layout: .extendibleRows(chunkRows: 8, checksum: true))
            try file.createDataset("labels", of: Int32.self, shape: [3]).write([0, 1, -1])
            try file.createStringDataset("classes", strings: [])
            let group = try file.createGroup("failed")
            try group.setAttribute("count", Int64(0))
            try file.setAttribute("schema", "bottleneck-cache/1")
            try file.setAttribute("rows_done", Int64(5))
            try file.setAttribute("rows_done", Int64(6))
            try file.setAttribute("scale", 0.5)
            try file.flush()
        }
        let file = try HDF5File(path: path, mode: .readOnly)
        XCTAssertEqual(try file.memberNames(), ["classes", "failed", "features", "labels", "paths"])
        XCTAssertEqual(try file.kind(of: "failed"), .group)
        let features = try file.openDataset("features")
        XCTAssertEqual(try features.shape(), [5, 2, 3])
        XCTAssertEqual(try features.elementKind(), .float(bytes: 4))
        XCTAssertEqual(try features.read(as: Float.self), (0..<30).map(Float.init))
        XCTAssertEqual(try features.readRows(1..<3, as: Double.self), (6..<18).map(Double.init))
        XCTAssertEqual(try file.openDataset("paths").readStrings(), ["cat/1.jpg", "dög/2.jpg", "bird/3.png"])
        XCTAssertEqual(try file.openDataset("paths").storage().filters.map(\.name), ["fletcher32"])
        XCTAssertEqual(try file.openDataset("labels").read(as: Int32.self), [0, 1, -1])
        XCTAssertEqual(try file.openDataset("classes").readStrings(), [])
        XCTAssertEqual(try file.stringAttribute("schema"), "bottleneck-cache/1")
        XCTAssertEqual(try file.attribute("rows_done", as: Int64.self), 6)
        XCTAssertEqual(try file.attribute("scale", as: Double.self), 0.5)
        XCTAssertEqual(try file.openGroup("failed").attribute("count", as: Int64.self), 0)
        XCTAssertNil(try file.stringAttribute("absent"))
        XCTAssertEqual(try file.attributeKind("rows_done"), .integer(bytes: 8, signed: true))
        XCTAssertEqual(try file.attributeNames().sorted(), ["rows_done", "scale", "schema"])
        XCTAssertThrowsError(try file.openDataset("nothing")) { error in
            XCTAssertTrue("\(error)".contains("nothing"), "\(error)")
        }
        XCTAssertThrowsError(try HDF5File(path: temporaryPath("absent.h5"), mode: .readOnly)) { error in
            XCTAssertTrue("\(error)".contains("No such file"), "\(error)")
        }
    }
}
