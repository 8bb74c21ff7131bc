#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import BottleneckKernels

/// One writer at a time: an exclusive flock on a lock file, taken before anything it guards is created or
/// deleted (`--overwrite` deletes), so a second job on the same output fails at once instead of racing the
/// first. The file is deleted when the lock is let go; a kill leaves it behind, empty and unlocked, for the
/// next job to take. Caches hold `CACHE.h5.lock`, run folders `RUN_DIR/.lock`.
final class WriterLock {
    let path: String
    private let descriptor: Int32

    /// `busy`: the error when another process holds the lock; `unusable`: when the lock file cannot be opened
    /// (a symbolic link or a FIFO planted at its name is refused like any file the tool writes).
    init(path: String, busy: () -> Error, unusable: (FileAccessError) -> Error) throws {
        self.path = path
        while true {
            let descriptor: Int32
            do {
                descriptor = try DurableFiles.openRegularFile(path, flags: O_RDWR | O_CREAT | O_NOFOLLOW).descriptor
            } catch {
                throw unusable(error)
            }
            guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
                close(descriptor)
                throw busy()
            }
            // The holder before us deletes the file as it lets go: a lock on a deleted file would lock nothing.
            var held = stat(), current = stat()
            if fstat(descriptor, &held) == 0, lstat(path, &current) == 0, held.st_dev == current.st_dev, held.st_ino == current.st_ino {
                self.descriptor = descriptor
                return
            }
            close(descriptor)
        }
    }

    /// The lock of the cache at `cachePath`, held by an extract or a merge while it writes.
    static func cache(_ cache: String) throws -> WriterLock {
        let path = cachePath(for: cache)
        return try WriterLock(path: path, busy: {
            FeatureCacheError(.busy, "\(cache) is in use: another bottleneck extract is writing this cache (it holds \(path)); "
                              + "wait for it to finish")
        }, unusable: { FeatureCacheError(.writeFailed, "cannot create the lock file \($0.path): \($0.reason)") })
    }

    static func cachePath(for cachePath: String) -> String { cachePath + ".lock" }

    deinit {
        unlink(path)
        close(descriptor)
    }
}
