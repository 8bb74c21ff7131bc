import Foundation
import XCTest

/// Inside the Bottleneck target the compiler lets any file use any type; this keeps the folders' order: no folder
/// names a type declared in a folder after it. Images, Cache and Training are siblings, and Pipeline runs Report.
final class LayeringTests: XCTestCase {
    private static let order = ["Support", "Model", "Images", "Cache", "Training", "Jobs", "Benchmarks", "Pipeline", "Report", "Library"]
    private static let siblings: [Set<String>] = [["Images", "Cache", "Training"], ["Pipeline", "Report"]]

    func testNoFolderUsesATypeOfAFolderAboveIt() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/Bottleneck")
        var files: [(folder: String, name: String, text: String)] = []
        let walker = try XCTUnwrap(FileManager.default.enumerator(atPath: root.path))
        for case let path as String in walker where path.hasSuffix(".swift") {
            let folder = String(path.prefix { $0 != "/" })
            guard Self.order.contains(folder) else { continue }
            let text = try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
            files.append((folder, path, text))
        }
        XCTAssertGreaterThan(files.count, 50, "the sources were not found")

        let declaration = try NSRegularExpression(
            pattern: #"^(?:package |public )?(?:final )?(?:struct|enum|class|protocol|typealias)\s+(\w+)"#, options: .anchorsMatchLines)
        var home: [String: String] = [:]
        for file in files {
            let range = NSRange(file.text.startIndex..., in: file.text)
            for match in declaration.matches(in: file.text, range: range) {
                home[String(file.text[Range(match.range(at: 1), in: file.text)!])] = file.folder
            }
        }
        // Comments and string literals may name anything.
        let noise = try NSRegularExpression(pattern: #"//.*|"[^"\n]*""#)
        let word = try NSRegularExpression(pattern: #"\b[A-Z]\w+\b"#)
        var violations: [String] = []
        for file in files {
            let code = noise.stringByReplacingMatches(in: file.text, range: NSRange(file.text.startIndex..., in: file.text),
                                                      withTemplate: "")
            let names = Set(word.matches(in: code, range: NSRange(code.startIndex..., in: code)).map {
                String(code[Range($0.range, in: code)!])
            })
            for name in names.sorted() {
                guard let folder = home[name], folder != file.folder,
                      Self.order.firstIndex(of: folder)! > Self.order.firstIndex(of: file.folder)!,
                      !Self.siblings.contains(where: { $0.contains(folder) && $0.contains(file.folder) }) else { continue }
                violations.append("\(file.name) uses \(name) from \(folder)/")
            }
        }
        XCTAssertEqual(violations, [], "dependencies must run \(Self.order.joined(separator: " → "))")
    }
}
