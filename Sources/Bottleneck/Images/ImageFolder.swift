import Foundation
import BottleneckKernels

/// An image collection laid out in torchvision's ImageFolder convention:
/// `DIR/<class>/<image>` (sorted class names are the class indices), or
/// `DIR/{train,val,test}/<class>/<image>` to record a split, or loose images
/// (`DIR/<image>`, unlabeled). The order is sorted and deterministic.
package struct ImageFolder: Sendable {
    package enum Split: String, Sendable, CaseIterable, Codable {
        case train, val, test, none
    }

    package struct Item: Sendable, Equatable {
        /// Relative to `root`, with `/` separators.
        package let path: String
        /// Class index, -1 when unlabeled.
        package let label: Int32
        package let split: Split
    }

    package let root: URL
    package let classes: [String]
    let items: [Item]
    /// Class folders that hold no image, per split ("train/cat"); reported, not fatal.
    let emptyClassFolders: [String]
    /// What the scan left out, one line each: a symbolic link to a folder already scanned (a link loop),
    /// a file or folder whose name is not UTF-8.
    let warnings: [String]

    static let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]

    /// Classes are found as torchvision's `find_classes` finds them: every entry of the folder that is a
    /// folder or a symbolic link to one, dot-folders included, sorted by name.
    package init(root path: String) throws {
        let root = URL(fileURLWithPath: path).standardizedFileURL
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDirectory) else {
            throw ImageFolderError("\(path): no such folder")
        }
        guard isDirectory.boolValue else { throw ImageFolderError("\(path): not a folder") }
        self.root = root
        var warnings: [String] = []

        let top = try DirectoryListing(folder: root.path)
        let splitFolders = top.entries.filter { $0.isDirectory && $0.name != "none" }.compactMap { Split(rawValue: $0.name) }
        let layouts: [(prefix: String, split: Split)] = splitFolders.isEmpty
            ? [("", .none)]
            : splitFolders.map { ("\($0.rawValue)/", $0) }

        // Classes are the union of class folders over all splits, so that an index
        // means the same class in train and val.
        var listings: [DirectoryListing] = []
        var classNames: [String: String] = [:]
        for layout in layouts {
            let base = root.path + "/" + layout.prefix
            let listing = layout.prefix.isEmpty ? top : try DirectoryListing(folder: base)
            if let undecodable = listing.undecodable.first(where: \.isDirectory) {
                throw ImageFolderError("\(base)\(undecodable.escapedName): a class folder whose name is not UTF-8; rename it "
                                       + "(leaving it out would shift the class indices torchvision's ImageFolder gives)")
            }
            for entry in listing.entries where entry.isDirectory {
                // Swift compares strings by canonical equivalence: "é" and "e\u{301}" would be one class.
                if let other = classNames[entry.name], other.utf8.elementsEqual(entry.name.utf8) == false {
                    throw ImageFolderError("\(base): class folders '\(other)' and '\(entry.name)' differ only in Unicode "
                                           + "normalization; rename one of them")
                }
                classNames[entry.name] = entry.name
            }
            listings.append(listing)
        }
        let classes = classNames.values.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        let classIndex = Dictionary(uniqueKeysWithValues: classes.enumerated().map { ($1, Int32($0)) })

        var items: [Item] = []
        var empty: [String] = []
        for (layout, listing) in zip(layouts, listings) {
            let base = root.path + "/" + layout.prefix
            warnings += listing.undecodable.map { "skipped \(base)\($0.escapedName): the name is not UTF-8" }
            for loose in listing.entries where !loose.isDirectory && Self.hasImageExtension(loose.name) {
                items.append(Item(path: layout.prefix + loose.name, label: -1, split: layout.split))
            }
            for classFolder in listing.entries where classFolder.isDirectory {
                let files = try Self.imageFiles(under: base + classFolder.name, warnings: &warnings)
                if files.isEmpty { empty.append(layout.prefix + classFolder.name) }
                let label = classIndex[classFolder.name] ?? -1
                for file in files {
                    items.append(Item(path: "\(layout.prefix)\(classFolder.name)/\(file)", label: label, split: layout.split))
                }
            }
        }
        self.classes = classes
        self.items = items
        self.emptyClassFolders = empty
        self.warnings = warnings
    }

    func url(of item: Item) -> URL { root.appendingPathComponent(item.path) }

    /// torchvision's `has_file_allowed_extension`: the lowercased name ends with one of the extensions
    /// (compared as bytes, so ".jpg" alone counts and "x.jpg" followed by a combining mark does not).
    static func hasImageExtension(_ name: String) -> Bool {
        let lowered = name.utf8.map { (0x41...0x5a).contains($0) ? $0 + 0x20 : $0 }
        return imageExtensions.contains { lowered.reversed().starts(with: Array(".\($0)".utf8).reversed()) }
    }

    /// Image files under `folder`, relative to it, in the order of torchvision's
    /// `sorted(os.walk(folder, followlinks=True))`: the folders walked sorted by path, each one's files
    /// sorted by name. Unlike `os.walk`, a folder (device and inode) is walked once: a symbolic link to a
    /// folder already walked — a link loop, or a second link to one place — is skipped and named in
    /// `warnings`. Real subfolders are walked before links, so a folder is listed under its own path.
    static func imageFiles(under folder: String, warnings: inout [String]) throws -> [String] {
        var visited: Set<DirectoryListing.FolderIdentity> = []
        if let identity = DirectoryListing.FolderIdentity(path: folder) { visited.insert(identity) }
        var walked: [(path: String, files: [String])] = []
        var links: [String] = []
        func walk(_ relative: String) throws {
            let listing = try DirectoryListing(folder: relative.isEmpty ? folder : folder + "/" + relative)
            let prefix = relative.isEmpty ? "" : relative + "/"
            warnings += listing.undecodable.map { "skipped \(folder)/\(prefix)\($0.escapedName): the name is not UTF-8" }
            walked.append((relative, listing.entries.filter { !$0.isDirectory && hasImageExtension($0.name) }.map(\.name)))
            for entry in listing.entries where entry.isDirectory {
                if entry.isSymbolicLink {
                    links.append(prefix + entry.name)
                } else if let identity = entry.folder, visited.insert(identity).inserted {
                    try walk(prefix + entry.name)
                } else {
                    warnings.append("skipped \(folder)/\(prefix)\(entry.name): the same folder as one already scanned")
                }
            }
        }
        try walk("")
        while !links.isEmpty {
            links.sort { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            let link = links.removeFirst()
            if let identity = DirectoryListing.FolderIdentity(path: folder + "/" + link), visited.insert(identity).inserted {
                try walk(link)
            } else {
                warnings.append("skipped \(folder)/\(link): a symbolic link to a folder already scanned (a link loop?)")
            }
        }
        return walked.sorted { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
            .flatMap { walkedFolder in walkedFolder.files.map { walkedFolder.path.isEmpty ? $0 : walkedFolder.path + "/" + $0 } }
    }
}

struct ImageFolderError: Error, CustomStringConvertible, Sendable {
    package let description: String
    init(_ description: String) { self.description = description }
}
