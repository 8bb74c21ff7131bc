@testable import Bottleneck
import Foundation
import XCTest
import BottleneckKernels

/// The committed fixtures under Tests/Fixtures (made by the generator scripts there).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// 5 train and 2 val images of each class of data/shapes, copied into `target`: 21 images, a pipeline in seconds.
    static func sampleImages(into target: URL) throws -> String {
        let manager = FileManager.default
        let source = root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("data/shapes")
        for (split, count) in [("train", 5), ("val", 2)] {
            for name in ["checkerboard", "discs", "stripes"] {
                let into = target.appendingPathComponent("\(split)/\(name)")
                try manager.createDirectory(at: into, withIntermediateDirectories: true)
                let from = source.appendingPathComponent("\(split)/\(name)")
                for file in try manager.contentsOfDirectory(atPath: from.path).sorted().prefix(count) {
                    try manager.copyItem(at: from.appendingPathComponent(file), to: into.appendingPathComponent(file))
                }
            }
        }
        return target.path
    }

    /// A raw little-endian float32 file as a tensor of `shape`.
    static func float32(_ relative: String, shape: [Int]) throws -> Tensor {
        let data = try Data(contentsOf: root.appendingPathComponent(relative))
        let count = shape.reduce(1, *)
        guard data.count == count * 4 else {
            throw ModelError.badInput("\(relative): \(data.count) bytes, expected \(count * 4) for \(shape)")
        }
        return Tensor(shape: shape) { values in
            _ = data.withUnsafeBytes { bytes in bytes.copyBytes(to: values) }
        }
    }

    /// A copy at `path` of the narrow network's weights file `name` (any format) with element `index` of tensor
    /// `key` set to `value`: the float is found by its bytes and those of its neighbours, exactly once.
    static func damagedWeights(_ name: String, key: String, index: Int, value: Float, at path: String) throws -> String {
        let original = try StateDictFile.open(path: Self.path("network/narrow_vgg16.safetensors")).tensor(key).data
        guard index < original.count else { throw ModelError.badInput("\(key) has \(original.count) elements, not \(index + 1)") }
        let first = min(index, original.count - 4)
        let run = Data(original[first..<(first + 4)].flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) })
        var bytes = try Data(contentsOf: URL(fileURLWithPath: Self.path("network/\(name)")))
        guard let found = bytes.range(of: run), bytes.range(of: run, in: found.upperBound..<bytes.count) == nil else {
            throw ModelError.badInput("\(name): the bytes of \(key)[\(index)] are not found exactly once")
        }
        let offset = found.lowerBound + (index - first) * 4
        bytes.replaceSubrange(offset..<(offset + 4), with: withUnsafeBytes(of: value.bitPattern.littleEndian, Array.init))
        try bytes.write(to: URL(fileURLWithPath: path))
        return path
    }

    static func json(_ relative: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: root.appendingPathComponent(relative))) as! [String: Any]
    }
}

/// Bit-equality across batch sizes holds on OpenBLAS's AVX-512 kernels only (see `keepsFeaturesBatchInvariant`).
func skipUnlessFeaturesAreBatchInvariant() throws {
    try XCTSkipUnless(BLASRuntime.keepsFeaturesBatchInvariant,
                      "OpenBLAS kernel \(BLASRuntime.coreName) sums a gemm's edge columns in another order "
                      + "(see keepsFeaturesBatchInvariant)")
}

/// max|actual - expected| / max|expected| within `tolerance`, with the figure in the failure message.
func assertClose(_ actual: Tensor, _ expected: Tensor, tolerance: Float = 1e-4, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(actual.shape, expected.shape, "\(what): shape", file: file, line: line)
    guard actual.shape == expected.shape else { return }
    let difference = actual.relativeDifference(to: expected)
    XCTAssertLessThanOrEqual(difference, tolerance, "\(what): relative difference \(difference)", file: file, line: line)
}

/// Lets threads a test starts write disjoint elements of one buffer.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
