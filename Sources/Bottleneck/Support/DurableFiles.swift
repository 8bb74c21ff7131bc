#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import BottleneckKernels

/// The few POSIX steps crash safety rests on: whole writes at an offset, fsync,
/// and replacing a file by renaming a synced one over it.
enum DurableFiles {
    /// Fails with a one-line reason before any work when `path` cannot be created:
    /// its folder is missing, not a folder, or not writable.
    static func checkWritableFolder(for path: String) throws {
        let folder = folderPath(of: path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory) else {
            throw DurableFileError("cannot write \(path): the folder \(folder) does not exist")
        }
        guard isDirectory.boolValue else {
            throw DurableFileError("cannot write \(path): \(folder) is not a folder")
        }
        guard access(folder, W_OK | X_OK) == 0 else {
            throw DurableFileError("cannot write \(path): the folder \(folder) is not writable (\(systemMessage(errno)))")
        }
    }

    /// Creates the missing folders above `path`, as `mkdir -p` does, each synced into its parent so that a file
    /// made durable in it later does not vanish with its folder in a power cut. A folder that is there is left as
    /// it is; something else in the way is left for `checkWritableFolder` to name.
    static func createFolders(for path: String) throws {
        let folder = folderPath(of: path)
        guard !FileManager.default.fileExists(atPath: folder) else { return }
        try createFolders(for: folder)
        guard mkdir(folder, 0o777) == 0 || errno == EEXIST else {
            throw DurableFileError("cannot create the folder \(folder) for \(path): \(systemMessage(errno))")
        }
        try syncFolder(of: folder)
    }

    /// Refuses to start a write of about `bytes` into the folder of `path` when the file system has
    /// less free: HDF5 1.10 does not always report a full disk (and can crash on it), so the check
    /// comes before HDF5 writes anything.
    static func checkFreeSpace(for path: String, bytes: Int, keeping: String) throws {
        var status = statvfs()
        guard statvfs(folderPath(of: path), &status) == 0 else { return }
        let free = Int(status.f_bavail) * Int(status.f_frsize)
        guard free >= bytes else {
            throw DurableFileError("not enough space to write \(path): it needs about "
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
                throw DurableFileError("cannot read \(path): \(systemMessage(errno))")
            }
            if result == 0 { return false }
            filled += result
        }
        return true
    }

    static func sync(_ descriptor: Int32, path: String) throws {
        guard fsync(descriptor) == 0 else {
            throw DurableFileError("cannot write \(path) to disk: \(systemMessage(errno))")
        }
    }

    /// Makes a rename or unlink in the folder of `path` survive a power cut.
    static func syncFolder(of path: String) throws {
        let folder = folderPath(of: path)
        let descriptor = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw DurableFileError("cannot open the folder \(folder): \(systemMessage(errno))")
        }
        defer { close(descriptor) }
        try sync(descriptor, path: folder)
    }

    /// Syncs the finished file `source` and renames it over `destination`: a reader
    /// sees the old file or the new one, whole, never a mixture.
    static func replace(_ destination: String, with source: String) throws {
        let descriptor = open(source, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw DurableFileError("cannot open \(source): \(systemMessage(errno))")
        }
        defer { close(descriptor) }
        try sync(descriptor, path: source)
        guard rename(source, destination) == 0 else {
            throw DurableFileError("cannot rename \(source) to \(destination): \(systemMessage(errno))")
        }
        try syncFolder(of: destination)
    }

    /// Deletes `path` if it exists.
    static func remove(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else {
            throw DurableFileError("cannot delete \(path): \(systemMessage(errno))")
        }
    }
}

/// Why a path cannot be read or written as a plain file, as one line naming it.
struct FileAccessError: Error, CustomStringConvertible, Sendable {
    package let path: String
    /// errno when the system refused; nil when the file is of the wrong kind.
    let code: Int32?
    /// What is wrong, without the path.
    package let reason: String

    package var description: String { "\(path): \(reason)" }
}

/// Reading only regular files, and writing only through fresh temporaries: the defences against a FIFO that
/// would block `open` forever, a device node, and a symbolic link planted where a file is about to be written.
extension DurableFiles {
    /// Opens `path` for reading without blocking (a FIFO would block `open` until a writer comes) and
    /// refuses anything but a regular file. The descriptor is blocking again when returned; the caller closes it.
    static func openRegularFile(_ path: String, flags: Int32 = O_RDONLY) throws(FileAccessError) -> (descriptor: Int32, status: stat) {
        let descriptor = open(path, flags | O_CLOEXEC | O_NONBLOCK, 0o644)
        guard descriptor >= 0 else { throw FileAccessError(path: path, code: errno, reason: systemMessage(errno)) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            let code = errno
            close(descriptor)
            throw FileAccessError(path: path, code: code, reason: "cannot stat: \(systemMessage(code))")
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            close(descriptor)
            throw FileAccessError(path: path, code: nil, reason: "not a regular file: it is \(kindName(of: status.st_mode))")
        }
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) & ~O_NONBLOCK)
        return (descriptor, status)
    }

    /// The check for readers that open the file themselves (libhdf5): `path`, followed through links, is a regular file.
    static func checkRegularFile(_ path: String) throws(FileAccessError) {
        var status = stat()
        guard stat(path, &status) == 0 else { throw FileAccessError(path: path, code: errno, reason: systemMessage(errno)) }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw FileAccessError(path: path, code: nil, reason: "not a regular file: it is \(kindName(of: status.st_mode))")
        }
    }

    /// The whole of a regular file, and its stat taken from the same descriptor before the read. A file larger
    /// than `limit` is refused before it is allocated: what is read whole (an image, a record, a pipeline) is far
    /// smaller, and a sparse file can claim any size.
    static func readRegularFile(_ path: String, atMost limit: Int = maximumWholeFileBytes) throws(FileAccessError)
        -> (bytes: [UInt8], status: stat)
    {
        let (descriptor, status) = try openRegularFile(path)
        defer { close(descriptor) }
        guard Int(status.st_size) <= limit else {
            throw FileAccessError(path: path, code: nil, reason: "it is \(Int(status.st_size).formattedBytes), more than the "
                                  + "\(limit.formattedBytes) such a file can be")
        }
        var data = [UInt8](repeating: 0, count: Int(status.st_size))
        var filled = 0
        while filled < data.count {
            let count = data.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress! + filled, $0.count - filled, off_t(filled)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                throw FileAccessError(path: path, code: count < 0 ? errno : nil,
                                      reason: count == 0 ? "the file shrank while it was read" : "cannot read it: \(systemMessage(errno))")
            }
            filled += count
        }
        return (data, status)
    }

    /// 1 GB: above the largest image the decoders accept (89 Mpx of 16-bit RGBA stored uncompressed is 712 MB).
    static let maximumWholeFileBytes = 1 << 30

    /// A regular file as UTF-8 text.
    static func readText(_ path: String, atMost limit: Int = maximumWholeFileBytes) throws(FileAccessError) -> String {
        guard let text = String(validating: try readRegularFile(path, atMost: limit).bytes, as: UTF8.self) else {
            throw FileAccessError(path: path, code: nil, reason: "not UTF-8 text")
        }
        return text
    }

    static func kindName(of mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: "a directory"
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        case S_IFLNK: "a symbolic link"
        default: "not a regular file"
        }
    }

    /// The policy for every file the tool writes: a destination that exists must be a regular file, not a
    /// symbolic link (renaming over it would replace the link, not write where it points, which is never what
    /// was meant) and not a device, FIFO or folder (renaming over /dev/full would replace the device node).
    static func checkDestination(_ path: String) throws(FileAccessError) {
        var status = stat()
        guard lstat(path, &status) == 0 else {
            if errno == ENOENT { return }
            throw FileAccessError(path: path, code: errno, reason: systemMessage(errno))
        }
        switch status.st_mode & S_IFMT {
        case S_IFREG: return
        case S_IFLNK:
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)).map { " to \($0)" } ?? ""
            throw FileAccessError(path: path, code: nil, reason: "it is a symbolic link\(target), which is never written "
                                  + "through or replaced: name the file itself, or remove the link")
        default:
            throw FileAccessError(path: path, code: nil, reason: "it is \(kindName(of: status.st_mode)), not a regular file, "
                                  + "and is never replaced")
        }
    }

    /// A name beside `destination` no one can guess ahead: `NAME.partial-PID-RANDOM`. The PID lets a later run
    /// tell a dead process's leftover from a live writer's file (`removeOrphanTemporaries`).
    static func temporaryPath(for destination: String) -> String {
        destination + ".partial-\(getpid())-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
    }

    /// Writes `destination` whole or not at all: `write` makes the file at the temporary path it is given,
    /// creating it exclusively (O_CREAT|O_EXCL, which never follows a planted link; HDF5's `.createNew`);
    /// it is then synced and renamed over `destination`. Leftovers of dead writers go first.
    static func writeThroughTemporary(to destination: String, _ write: (_ temporary: String) throws -> Void) throws {
        try checkDestination(destination)
        removeOrphanTemporaries(of: destination)
        let temporary = temporaryPath(for: destination)
        do {
            try write(temporary)
            // Again, as the write may have taken minutes.
            try checkDestination(destination)
            try replace(destination, with: temporary)
        } catch {
            unlink(temporary)
            throw error
        }
    }

    /// `writeThroughTemporary` for bytes in memory (reports, JSON records, a journal's header).
    static func writeAtomically(_ bytes: some ContiguousBytes, to destination: String) throws {
        try writeThroughTemporary(to: destination) { temporary in
            let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else {
                throw FileAccessError(path: destination, code: errno, reason: "cannot create \(temporary): \(systemMessage(errno))")
            }
            defer { close(descriptor) }
            if let code = bytes.withUnsafeBytes({ DurableFiles.write($0, to: descriptor, at: 0) }) {
                throw FileAccessError(path: destination, code: code, reason: systemMessage(code))
            }
        }
    }

    /// Deletes the temporaries of `destination` (`NAME.partial-PID…`) whose process is gone — a killed run's
    /// leftovers, up to a model's size each — and never one a live process may still be writing.
    static func removeOrphanTemporaries(of destination: String) {
        let folder = folderPath(of: destination)
        let prefix = (destination as NSString).lastPathComponent + ".partial-"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        for name in names where name.hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count)
            guard let pid = pid_t(rest.prefix { $0 != "-" }), pid > 0, pid != getpid(), kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            unlink((folder as NSString).appendingPathComponent(name))
        }
    }
}

/// A write, sync, rename or read of a file that failed: one line naming the file and the system's reason.
package struct DurableFileError: Error, CustomStringConvertible, Sendable {
    package let description: String
    init(_ description: String) { self.description = description }
}
