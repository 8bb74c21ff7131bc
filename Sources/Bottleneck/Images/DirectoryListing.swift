#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import BottleneckKernels

/// A folder's entries read with readdir, as raw bytes: Foundation's listing turns names that are not
/// UTF-8 into other names (which then cannot be opened) or drops them, and the scan has to name them.
/// Nothing here opens a file other than the folder itself: a FIFO among the entries cannot block it.
struct DirectoryListing {
    struct Entry {
        let name: String
        /// What the entry is after following a symbolic link, as Python's `DirEntry.is_dir()`:
        /// a broken link is not a folder.
        let isDirectory: Bool
        let isSymbolicLink: Bool
        /// The folder's identity, when it is one (after following the link).
        let folder: FolderIdentity?
    }

    /// Device and inode: the same folder reached by two paths (a symbolic link, a bind mount) has the same one.
    struct FolderIdentity: Hashable {
        let device: UInt64
        let inode: UInt64

        init?(path: String) {
            var status = stat()
            guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else { return nil }
            device = UInt64(status.st_dev)
            inode = UInt64(status.st_ino)
        }
    }

    /// Entries with UTF-8 names, sorted by their bytes as Python's `sorted()` of `str` names sorts them.
    let entries: [Entry]
    /// Entries whose names are not valid UTF-8, escaped for messages (`caf\xe9.jpg`).
    let undecodable: [(escapedName: String, isDirectory: Bool)]

    init(folder: String) throws {
        guard let stream = opendir(folder) else {
            throw ImageFolderError("\(folder): cannot list folder (\(systemMessage(errno)))")
        }
        defer { closedir(stream) }
        var entries: [Entry] = []
        var undecodable: [(escapedName: String, isDirectory: Bool)] = []
        while let entry = readdir(stream) {
            let bytes = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if bytes == Array(".".utf8) || bytes == Array("..".utf8) { continue }
            guard let name = String(validating: bytes, as: UTF8.self) else {
                let path = Array(folder.utf8) + [UInt8(ascii: "/")] + bytes + [0]
                var status = stat()
                let isDirectory = path.withUnsafeBufferPointer { buffer in
                    buffer.withMemoryRebound(to: CChar.self) { characters in
                        characters.baseAddress.map { stat($0, &status) == 0 } ?? false
                    }
                } && status.st_mode & S_IFMT == S_IFDIR
                undecodable.append((Self.escaped(bytes), isDirectory))
                continue
            }
            let path = folder.hasSuffix("/") ? folder + name : folder + "/" + name
            var status = stat()
            let isSymbolicLink = lstat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFLNK
            let folderIdentity = FolderIdentity(path: path)
            entries.append(Entry(name: name, isDirectory: folderIdentity != nil, isSymbolicLink: isSymbolicLink,
                                 folder: folderIdentity))
        }
        self.entries = entries.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        self.undecodable = undecodable.sorted { $0.escapedName < $1.escapedName }
    }

    /// Printable ASCII as is, every other byte as `\xNN`: one line whatever the name holds.
    static func escaped(_ bytes: [UInt8]) -> String {
        bytes.map { (0x20..<0x7f).contains($0) && $0 != UInt8(ascii: "\\") ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }
            .joined()
    }
}
