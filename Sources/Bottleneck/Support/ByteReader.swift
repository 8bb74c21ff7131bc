import BottleneckKernels

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
            throw ByteLayoutProblem.truncated("the file ends inside \(what()) "
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
            throw ByteLayoutProblem.malformed("\(what()) at byte \(absolutePosition) is out of range (\(value))")
        }
        return count
    }

    /// Moves to `offset` (relative to the region); offsets from the file itself are checked before use.
    mutating func seek(to offset: Int, _ what: @autoclosure () -> String) throws {
        guard offset >= 0, offset <= bytes.count else {
            throw ByteLayoutProblem.truncated("\(what()) at byte \(fileOffset + offset) lies past the end of the file")
        }
        position = offset
    }

    mutating func skip(_ count: Int, _ what: @autoclosure () -> String) throws {
        _ = try read(count, what())
    }
}

/// What a `ByteReader` finds wrong, before the caller knows which file it reads: the weights readers and the
/// cache journal each turn it into their own error naming the file.
struct ByteLayoutProblem: Error, Sendable {
    package enum Kind: Sendable {
        /// The bytes end before what they announce.
        case truncated
        /// A length or offset out of range, or contents that contradict themselves.
        case malformed
    }

    package let kind: Kind
    package let detail: String

    static func truncated(_ detail: String) -> ByteLayoutProblem { ByteLayoutProblem(kind: .truncated, detail: detail) }
    static func malformed(_ detail: String) -> ByteLayoutProblem { ByteLayoutProblem(kind: .malformed, detail: detail) }
}
