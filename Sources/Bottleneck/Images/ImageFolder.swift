import Foundation

/// An image collection laid out in torchvision's ImageFolder convention:
/// `DIR/<class>/<image>` (sorted class names are the class indices), or
/// `DIR/{train,val,test}/<class>/<image>` to record a split, or loose images
/// (`DIR/<image>`, unlabeled). The order is sorted and deterministic.
public struct ImageFolder: Sendable {
    public enum Split: String, Sendable, CaseIterable, Codable {
        case train, val, test, none
    }

    public struct Item: Sendable, Equatable {
        /// Relative to `root`, with `/` separators.
        public let path: String
        /// Class index, -1 when unlabeled.
        public let label: Int32
        public let split: Split
    }

    public let root: URL
    public let classes: [String]
    public let items: [Item]
    /// Class folders that hold no image, per split ("train/cat"); reported, not fatal.
    public let emptyClassFolders: [String]

    public static let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]

    public init(root path: String) throws {
        let root = URL(fileURLWithPath: path).standardizedFileURL
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDirectory) else {
            throw ImageFolderError("\(path): no such folder")
        }
        guard isDirectory.boolValue else { throw ImageFolderError("\(path): not a folder") }
        self.root = root

        let topFolders = try Self.subfolders(of: root)
        let splitFolders = topFolders.filter { Split(rawValue: $0) != nil && $0 != "none" }
        let layouts: [(prefix: String, split: Split)] = splitFolders.isEmpty
            ? [("", .none)]
            : splitFolders.map { ("\($0)/", Split(rawValue: $0)!) }

        // Classes are the union of class folders over all splits, so that an index
        // means the same class in train and val.
        var classNames = Set<String>()
        for layout in layouts {
            classNames.formUnion(try Self.subfolders(of: root.appendingPathComponent(layout.prefix)))
        }
        let classes = classNames.sorted()
        let classIndex = Dictionary(uniqueKeysWithValues: classes.enumerated().map { ($1, Int32($0)) })

        var items: [Item] = []
        var empty: [String] = []
        for layout in layouts {
            let base = root.appendingPathComponent(layout.prefix)
            for loose in try Self.imageFiles(in: base) {
                items.append(Item(path: layout.prefix + loose, label: -1, split: layout.split))
            }
            for className in try Self.subfolders(of: base) {
                let files = try Self.imageFiles(in: base.appendingPathComponent(className), recursive: true)
                if files.isEmpty { empty.append(layout.prefix + className) }
                for file in files {
                    items.append(Item(path: "\(layout.prefix)\(className)/\(file)", label: classIndex[className]!,
                                      split: layout.split))
                }
            }
        }
        self.classes = classes
        self.items = items
        self.emptyClassFolders = empty
    }

    public func url(of item: Item) -> URL { root.appendingPathComponent(item.path) }

    static func subfolders(of folder: URL) throws -> [String] {
        try entries(of: folder).filter { isDirectory(folder.appendingPathComponent($0)) }
    }

    /// Image files in `folder` (and below it when recursive, as ImageFolder's sorted os.walk
    /// does: a folder's own files first, then each subfolder in order), relative to `folder`.
    static func imageFiles(in folder: URL, recursive: Bool = false) throws -> [String] {
        var files: [String] = []
        var subfolders: [String] = []
        for name in try entries(of: folder) {
            let url = folder.appendingPathComponent(name)
            if isDirectory(url) {
                subfolders.append(name)
            } else if imageExtensions.contains(url.pathExtension.lowercased()) {
                files.append(name)
            }
        }
        guard recursive else { return files }
        for name in subfolders {
            files += try imageFiles(in: folder.appendingPathComponent(name), recursive: true).map { "\(name)/\($0)" }
        }
        return files
    }

    /// Visible entries, sorted by their UTF-8 bytes like Python's `sorted(os.scandir(...))`.
    static func entries(of folder: URL) throws -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: folder.path)
                .filter { !$0.hasPrefix(".") }
                .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        } catch {
            throw ImageFolderError("\(folder.path): cannot list folder (\(error.localizedDescription))")
        }
    }

    static func isDirectory(_ url: URL) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) && isDirectory.boolValue
    }
}

public struct ImageFolderError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
