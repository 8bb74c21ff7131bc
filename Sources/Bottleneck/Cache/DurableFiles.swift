#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// The few POSIX steps crash safety rests on: whole writes at an offset, fsync,
/// and replacing a file by renaming a synced one over it.
enum DurableFiles {
    /// Fails with a one-line reason before any work when `path` cannot be created:
    /// its folder is missing, not a folder, or not writable.
    static func checkWritableFolder(for path: String) throws {
        let folder = folderPath(of: path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory) else {
            throw FeatureCacheError(.writeFailed, "cannot write \(path): the folder \(folder) does not exist")
        }
        guard isDirectory.boolValue else {
            throw FeatureCacheError(.writeFailed, "cannot write \(path): \(folder) is not a folder")
        }
        guard access(folder, W_OK | X_OK) == 0 else {
            throw FeatureCacheError(.writeFailed, "cannot write \(path): the folder \(folder) is not writable (\(systemMessage(errno)))")
        }
    }

    /// Refuses to start a write of about `bytes` into the folder of `path` when the file system has
    /// less free: HDF5 1.10 does not always report a full disk (and can crash on it), so the check
    /// comes before HDF5 writes anything.
    static func checkFreeSpace(for path: String, bytes: Int, keeping: String) throws {
        var status = statvfs()
        guard statvfs(folderPath(of: path), &status) == 0 else { return }
        let free = Int(status.f_bavail) * Int(status.f_frsize)
        guard free >= bytes else {
            throw FeatureCacheError(.writeFailed, "not enough space to write \(path): it needs about "
                                    + "\(bytes.formattedBytes), \(free.formattedBytes) are free; \(keeping)")
        }
    }

    static func folderPath(of path: String) -> String {
        let folder = (path as NSString).deletingLastPathComponent
        return folder.isEmpty ? "." : folder
    }

    /// Writes all of `bytes` at `offset`, retrying short writes and interruptions; returns errno on failure.
    static func write(_ bytes: UnsafeRawBufferPointer, to descriptor: Int32, at offset: Int64) -> Int32? {
        var written = 0
        while written < bytes.count {
            let result = pwrite(descriptor, bytes.baseAddress! + written, bytes.count - written, off_t(offset) + off_t(written))
            if result < 0 {
                if errno == EINTR { continue }
                return errno
            }
            written += result
        }
        return nil
    }

    /// Fills `buffer` from `offset`; false when the file ends first.
    static func read(into buffer: UnsafeMutableRawBufferPointer, from descriptor: Int32, at offset: Int64,
                     path: String) throws -> Bool {
        var filled = 0
        while filled < buffer.count {
            let result = pread(descriptor, buffer.baseAddress! + filled, buffer.count - filled, off_t(offset) + off_t(filled))
            if result < 0 {
                if errno == EINTR { continue }
                throw FeatureCacheError(.damaged, "cannot read \(path): \(systemMessage(errno))")
            }
            if result == 0 { return false }
            filled += result
        }
        return true
    }

    static func sync(_ descriptor: Int32, path: String) throws {
        guard fsync(descriptor) == 0 else {
            throw FeatureCacheError(.writeFailed, "cannot write \(path) to disk: \(systemMessage(errno))")
        }
    }

    /// Makes a rename or unlink in the folder of `path` survive a power cut.
    static func syncFolder(of path: String) throws {
        let folder = folderPath(of: path)
        let descriptor = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw FeatureCacheError(.writeFailed, "cannot open the folder \(folder): \(systemMessage(errno))")
        }
        defer { close(descriptor) }
        try sync(descriptor, path: folder)
    }

    /// Syncs the finished file `source` and renames it over `destination`: a reader
    /// sees the old file or the new one, whole, never a mixture.
    static func replace(_ destination: String, with source: String) throws {
        let descriptor = open(source, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw FeatureCacheError(.writeFailed, "cannot open \(source): \(systemMessage(errno))")
        }
        defer { close(descriptor) }
        try sync(descriptor, path: source)
        guard rename(source, destination) == 0 else {
            throw FeatureCacheError(.writeFailed, "cannot rename \(source) to \(destination): \(systemMessage(errno))")
        }
        try syncFolder(of: destination)
    }

    /// Deletes `path` if it exists.
    static func remove(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else {
            throw FeatureCacheError(.writeFailed, "cannot delete \(path): \(systemMessage(errno))")
        }
    }
}
