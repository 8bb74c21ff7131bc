#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import BottleneckKernels

/// What identifies the contents an image file had when its row was extracted, as git's index
/// identifies a work-tree file: size, modification and status-change times in ns, inode — and,
/// where those cannot decide, the SHA-256 of the very bytes that were decoded.
///
/// A rerun reuses a row when the file's stat is the recorded one; when any field differs (touched,
/// copied, restored from a backup, moved to another disk) the file is hashed and the row is reused
/// only if the bytes are the same. ctime cannot be set back by `touch -d` or a copy tool, so a
/// replaced file with the old size and mtime still shows. A file whose times were within
/// `racyWindowNanoseconds` of the clock when it was read could still change within the same
/// timestamp tick without its stat changing ("racy git"): its ctime is recorded as -1, which no stat
/// matches, so the next run compares its bytes.
struct FileIdentity: Equatable, Sendable {
    package var size: Int64
    var mtimeNanoseconds: Int64
    /// -1 when the file was too fresh to trust its stat (see above).
    var ctimeNanoseconds: Int64
    package var inode: UInt64
    /// 32 bytes.
    package var sha256: [UInt8]

    static let racyWindowNanoseconds: Int64 = 1_000_000_000

    package init(size: Int64, mtimeNanoseconds: Int64, ctimeNanoseconds: Int64, inode: UInt64, sha256: [UInt8]) {
        self.size = size
        self.mtimeNanoseconds = mtimeNanoseconds
        self.ctimeNanoseconds = ctimeNanoseconds
        self.inode = inode
        self.sha256 = sha256
    }

    /// The stat part: what is compared before anything is read.
    struct Stat: Equatable, Sendable {
        package var size: Int64
        var mtimeNanoseconds: Int64
        var ctimeNanoseconds: Int64
        package var inode: UInt64
    }

    var fileStat: Stat {
        Stat(size: size, mtimeNanoseconds: mtimeNanoseconds, ctimeNanoseconds: ctimeNanoseconds, inode: inode)
    }

    /// The identity to keep for a row recorded as `recorded` whose file is at `path` now: `recorded` when the
    /// stat is the same, the same bytes under the stat of now when only times or inode moved, nil when the
    /// contents changed or the file is gone or unreadable (the row is then extracted again, or fails).
    package static func current(recorded: FileIdentity, path: String, now: Date = Date()) -> FileIdentity? {
        guard let stat = Stat(path: path) else { return nil }
        if stat == recorded.fileStat { return recorded }
        guard stat.size == recorded.size, let read = try? read(path: path, now: now), read.identity.sha256 == recorded.sha256
        else { return nil }
        return read.identity
    }

    /// Reads a whole regular file through one descriptor and identifies what was read: the stat is
    /// taken from that descriptor before the read, so the identity never describes other bytes than
    /// the ones returned. Refuses what is not a regular file (a FIFO would block forever).
    package static func read(path: String, now: Date = Date()) throws(ImageDecodingError) -> (bytes: [UInt8], identity: FileIdentity) {
        let read: (bytes: [UInt8], status: stat)
        do {
            read = try DurableFiles.readRegularFile(path)
        } catch {
            throw ImageDecodingError(file: path, reason: error.reason)
        }
        let bytes = read.bytes
        let stat = Stat(read.status)
        let nowNanoseconds = Int64(now.timeIntervalSince1970 * 1e9)
        let fresh = nowNanoseconds - max(stat.mtimeNanoseconds, stat.ctimeNanoseconds) < racyWindowNanoseconds
        let identity = FileIdentity(size: stat.size, mtimeNanoseconds: stat.mtimeNanoseconds,
                                    ctimeNanoseconds: fresh ? -1 : stat.ctimeNanoseconds, inode: stat.inode,
                                    sha256: SHA256.digest(bytes))
        return (bytes, identity)
    }
}

extension FileIdentity.Stat {
    init(_ status: stat) {
        self.init(size: Int64(status.st_size),
                  mtimeNanoseconds: Int64(status.st_mtim.tv_sec) * 1_000_000_000 + Int64(status.st_mtim.tv_nsec),
                  ctimeNanoseconds: Int64(status.st_ctim.tv_sec) * 1_000_000_000 + Int64(status.st_ctim.tv_nsec),
                  inode: UInt64(status.st_ino))
    }

    /// The stat of the file at `path` (following symbolic links, as reading it does); nil when it cannot be had.
    package init?(path: String) {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        self.init(status)
    }
}
