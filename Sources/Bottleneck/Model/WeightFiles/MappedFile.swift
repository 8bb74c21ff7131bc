#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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

/// Bounds-checked little-endian reads from a region of a mapped file.
/// Every read that would pass the end throws `truncated`, naming the absolute
/// file offset, so no input can make a parser read outside the mapping.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    /// Where `bytes` starts in the file, for messages.
    let fileOffset: Int
    private(set) var position = 0

    init(_ bytes: UnsafeRawBufferPointer, fileOffset: Int = 0) {
        self.bytes = bytes
        self.fileOffset = fileOffset
    }

    var remaining: Int { bytes.count - position }
    var isAtEnd: Bool { position >= bytes.count }
    var absolutePosition: Int { fileOffset + position }

    mutating func read(_ count: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        guard count >= 0, count <= remaining else {
            throw WeightFileProblem.truncated("the file ends inside \(what()) "
                                              + "(needs \(count) bytes at byte \(absolutePosition), \(max(remaining, 0)) left)")
        }
        defer { position += count }
        return UnsafeRawBufferPointer(rebasing: bytes[position..<(position + count)])
    }

    mutating func readInteger<T: FixedWidthInteger>(_ type: T.Type, _ what: @autoclosure () -> String) throws -> T {
        T(littleEndian: try read(MemoryLayout<T>.size, what()).loadUnaligned(as: T.self))
    }

    /// A little-endian length or offset that must fit in Int and be non-negative.
    mutating func readCount<T: FixedWidthInteger>(_ type: T.Type, _ what: @autoclosure () -> String) throws -> Int {
        let value = try readInteger(type, what())
        guard value >= 0, let count = Int(exactly: value) else {
            throw WeightFileProblem.malformed("\(what()) at byte \(absolutePosition) is out of range (\(value))")
        }
        return count
    }

    /// Moves to `offset` (relative to the region); offsets from the file itself are checked before use.
    mutating func seek(to offset: Int, _ what: @autoclosure () -> String) throws {
        guard offset >= 0, offset <= bytes.count else {
            throw WeightFileProblem.truncated("\(what()) at byte \(fileOffset + offset) lies past the end of the file")
        }
        position = offset
    }

    mutating func skip(_ count: Int, _ what: @autoclosure () -> String) throws {
        _ = try read(count, what())
    }
}
