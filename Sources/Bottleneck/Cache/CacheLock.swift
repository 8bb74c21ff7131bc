#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One writer per cache: an exclusive flock on `CACHE.h5.lock`, taken before anything of the cache or its
/// journal is created or deleted (`--overwrite` deletes both), so a second extract or merge into the same
/// `--out` fails at once instead of racing the first. The file is deleted when the lock is let go; a kill
/// leaves it behind, empty and unlocked, for the next run to take.
final class CacheLock {
    let path: String
    private let descriptor: Int32

    static func path(for cachePath: String) -> String { cachePath + ".lock" }

    init(cachePath: String) throws {
        path = Self.path(for: cachePath)
        while true {
            let descriptor: Int32
            do {
                descriptor = try DurableFiles.openRegularFile(path, flags: O_RDWR | O_CREAT | O_NOFOLLOW).descriptor
            } catch {
                throw FeatureCacheError(.writeFailed, "cannot create the lock file \(error.path): \(error.reason)")
            }
            guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
                close(descriptor)
                throw FeatureCacheError(.busy, "\(cachePath) is in use: another bottleneck extract is writing this cache "
                                        + "(it holds \(path)); wait for it to finish")
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

    deinit {
        unlink(path)
        close(descriptor)
    }
}
