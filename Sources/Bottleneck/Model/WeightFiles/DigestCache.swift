#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import BottleneckKernels

/// Remembers the SHA-256 of weight files by (path, size, modification time, inode), so
/// that every command does not re-read 528 MB to fingerprint the same file: the same
/// trade git's index makes. Kept in ~/.cache/bottleneck/digests.json (or under
/// $XDG_CACHE_HOME); when that cannot be read or written the digest is simply computed.
enum DigestCache {
    struct Entry: Codable, Equatable {
        var size: Int64
        var modified: Int64
        var inode: UInt64
        var sha256: String
    }

    static var storePath: String {
        let environment = ProcessInfo.processInfo.environment
        let base = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (environment["HOME"] ?? NSHomeDirectory()) + "/.cache"
        return base + "/bottleneck/digests.json"
    }

    private static let lock = NSLock()

    package static func sha256(ofFileAt path: String) throws(WeightsError) -> String {
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        guard let identity = identity(of: absolute) else { return try SHA256.hexDigest(ofFileAt: path) }
        lock.lock()
        defer { lock.unlock() }
        var entries = load()
        if let known = entries[absolute], known.size == identity.size, known.modified == identity.modified,
           known.inode == identity.inode {
            return known.sha256
        }
        let digest = try SHA256.hexDigest(ofFileAt: path)
        entries[absolute] = Entry(size: identity.size, modified: identity.modified, inode: identity.inode, sha256: digest)
        save(entries)
        return digest
    }

    private static func identity(of path: String) -> (size: Int64, modified: Int64, inode: UInt64)? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        return (Int64(status.st_size), Int64(status.st_mtim.tv_sec) * 1_000_000_000 + Int64(status.st_mtim.tv_nsec),
                UInt64(status.st_ino))
    }

    private static func load() -> [String: Entry] {
        guard let data = try? Data(DurableFiles.readRegularFile(storePath).bytes),
              let entries = try? JSONDecoder().decode([String: Entry].self, from: data) else { return [:] }
        return entries
    }

    /// Best effort: a read-only home only costs the re-hash next time.
    private static func save(_ entries: [String: Entry]) {
        let url = URL(fileURLWithPath: storePath)
        try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        guard let data = try? JSONEncoder().encode(entries) else { return }
        try? DurableFiles.writeAtomically(data, to: storePath)
    }
}

extension SHA256 {
    /// Hex digest of a file read in 4 MB pieces: memory stays flat whatever the file size.
    static func hexDigest(ofFileAt path: String) throws(WeightsError) -> String {
        let descriptor: Int32
        do {
            descriptor = try DurableFiles.openRegularFile(path).descriptor
        } catch {
            throw WeightsError(opening: error)
        }
        defer { close(descriptor) }
        var hasher = SHA256()
        _ = try hasher.update(readingToEndOf: descriptor, path: path)
        return hex(hasher.finalize())
    }

    /// Hashes what is left of an open file from its current offset, in 4 MB pieces; returns how many bytes that was.
    mutating func update(readingToEndOf descriptor: Int32, path: String) throws(WeightsError) -> Int64 {
        let chunkSize = 4 << 20
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 64)
        defer { chunk.deallocate() }
        var total: Int64 = 0
        while true {
            let count = read(descriptor, chunk.baseAddress, chunkSize)
            if count == 0 { return total }
            if count < 0 {
                if errno == EINTR { continue }
                throw WeightsError(.unreadable, path: path, "read failed while hashing: \(systemMessage(errno))")
            }
            update(UnsafeRawBufferPointer(rebasing: chunk[0..<count]))
            total += Int64(count)
        }
    }
}
