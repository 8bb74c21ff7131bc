#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import BottleneckKernels

/// A whole file mapped read-only, unmapped when the last owner lets go.
/// Pages are read from disk only when touched, so parsing a 528 MB .pth
/// touches its headers, and a model cut at conv4_3 never reads fc6.
///
/// @unchecked Sendable: the mapping is PROT_READ and never changes after
/// init, so any number of threads may read it; munmap runs in deinit, when
/// no one can be reading any more.
final class MappedFile: @unchecked Sendable {
    let path: String
    let bytes: UnsafeRawBufferPointer

    init(path: String) throws(WeightsError) {
        self.path = path
        let descriptor: Int32, status: stat
        do {
            (descriptor, status) = try DurableFiles.openRegularFile(path)
        } catch {
            throw WeightsError(opening: error)
        }
        defer { close(descriptor) }
        let size = Int(status.st_size)
        guard size > 0 else { throw WeightsError(.emptyFile, path: path, "the file is empty (0 bytes)") }
        guard let address = mmap(nil, size, PROT_READ, MAP_PRIVATE, descriptor, 0), address != MAP_FAILED else {
            throw WeightsError(.unreadable, path: path, "cannot map the file: \(systemMessage(errno))")
        }
        bytes = UnsafeRawBufferPointer(start: address, count: size)
    }

    /// Drops the pages wholly inside `range` from this process's memory once
    /// their values are copied out: touched pages of a file mapping count in
    /// the resident size, so a loaded VGG16 would otherwise occupy 528 MB twice.
    /// The file is read-only and unmodified, so a later read just faults the
    /// pages back in from the page cache.
    func releasePages(_ range: Range<Int>) {
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (range.lowerBound + pageSize - 1) / pageSize * pageSize
        let end = range.upperBound / pageSize * pageSize
        guard start < end, let base = bytes.baseAddress else { return }
        madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count)
    }
}

func systemMessage(_ code: Int32) -> String { String(cString: strerror(code)) }

