import Bottleneck
import Foundation
import XCTest

/// The committed fixtures under Tests/Fixtures (made by the generator scripts there).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

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

    static func json(_ relative: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: root.appendingPathComponent(relative))) as! [String: Any]
    }
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
