import Foundation
import BottleneckKernels

extension JSONEncoder {
    /// The JSON bottleneck writes for people and scripts (run files, `--json`/`--format json`): indented,
    /// sorted keys, snake_case like the cache's attribute names, slashes left alone in paths.
    package static func snakeCaseDocument() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return encoder
    }
}
