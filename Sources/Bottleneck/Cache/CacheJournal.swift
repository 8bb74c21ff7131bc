#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

#if _endian(big)
#error("the journal stores float32 rows as raw little-endian bytes")
#endif
import BottleneckKernels

/// An input that could not be turned into a row, and why.
package struct CacheFailure: Codable, Equatable, Sendable {
    package let path: String
    package let reason: String

    package init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }
}

/// A row the journal holds: its image, the identity of the bytes its features were made from, and
/// where in the journal those features are. The class is kept by name: the labels of later batches
/// may index a longer class list.
struct JournalRow: Sendable {
    let path: String
    let className: String?
    let split: ImageFolder.Split
    let identity: FileIdentity
    /// Byte offset of the row's float32 features in the journal: its eval view, then its `views` augmented ones.
    let featureOffset: Int64
    let views: Int
}

struct JournalHeader: Codable, Equatable {
    var fingerprint: CacheFingerprint
    /// What the labels of the first batches index.
    var classes: [String]
}

/// What a journal holds up to its last whole record.
struct JournalContents {
    var header: JournalHeader
    /// At most one per path: a later row for a path replaces an earlier one (the file changed and was
    /// extracted again while the journal was open).
    var rows: [JournalRow] = []
    var failures: [CacheFailure] = []
    /// What the labels of the next batch index: the header's list or the latest classes record's.
    var currentClasses: [String]
    /// End of the last whole record: what a kill left after it is a torn tail.
    var durableLength: Int64
    var fileLength: Int64
    /// Where the first record starts.
    var headerLength: Int64
    /// Position in `rows` of each path.
    fileprivate var rowIndex: [String: Int] = [:]

    var tornBytes: Int64 { fileLength - durableLength }
}

/// The append-only journal of a cache under construction (`CACHE.h5.partial`).
/// HDF5 is not crash-safe, so finished batches land here first; `finish` copies
/// them into a new HDF5 file. Little-endian throughout:
///
///     header   "BNJOURNL" | version u32 | length u32 | crc32 u32 | JSON {fingerprint, classes}
///     record   crc32 u32 (of the rest of the record) | kind u8 | length u64 | payload
///       batch    rows u32 | failed u32 | rows × (label i32 | split str | path str | identity | views u32)
///                | failed × (path str | reason str) | rows × (1 + views) × row size × float32
///       identity size i64 | mtime ns i64 | ctime ns i64 | inode u64 | sha256 32 bytes (see FileIdentity)
///       classes  count u32 | count × str   (the list later labels index)
///     str      length u32 | UTF-8 bytes
///
/// A record counts once its write returned (a killed process loses nothing the
/// kernel accepted); a record cut short or failing its CRC ends the journal. A path may come back in a
/// later batch only with another identity (its file changed): the same row twice is damage.
final class CacheJournal {
    private static let magic = Array("BNJOURNL".utf8)
    private static let version: UInt32 = 3
    private static let headerPrefixSize = 20
    private static let recordPrefixSize = 13

    private enum RecordKind: UInt8 {
        case batch = 1, classes = 2
    }

    let path: String
    private let descriptor: Int32
    /// Where the next record goes.
    private var length: Int64
    /// Rows in the journal, for the message when appending fails.
    private var rowCount: Int
    /// Reused between records so appending allocates once.
    private var record: [UInt8] = []
    /// What the labels of the next batch index.
    private var classes: [String] = []

    /// Where the first record starts.
    private let headerLength: Int64

    private init(path: String, descriptor: Int32, length: Int64, headerLength: Int64, rowCount: Int) {
        self.path = path
        self.descriptor = descriptor
        self.length = length
        self.headerLength = headerLength
        self.rowCount = rowCount
    }

    /// Whether the journal holds no record: nothing a later run could reuse.
    var isEmpty: Bool { length == headerLength }

    deinit { close(descriptor) }

    /// Starts a new journal. The header goes to a temporary file that is renamed into place,
    /// so a journal either exists with its whole header or not at all.
    static func create(path: String, header: JournalHeader) throws -> CacheJournal {
        var bytes = magic
        bytes.appendLittleEndian(version)
        let json = try JSONEncoder().encode(header)
        bytes.appendLittleEndian(UInt32(json.count))
        bytes.appendLittleEndian(json.withUnsafeBytes { CRC32.checksum($0) })
        bytes.append(contentsOf: json)

        do {
            try FeatureCacheError.whenFileFails(.writeFailed) { try DurableFiles.writeAtomically(bytes, to: path) }
        } catch let error as FileAccessError {
            throw FeatureCacheError(.writeFailed, error.description)
        }
        let descriptor = try openFile(path, flags: O_RDWR)
        let journal = CacheJournal(path: path, descriptor: descriptor, length: Int64(bytes.count), headerLength: Int64(bytes.count),
                                   rowCount: 0)
        journal.classes = header.classes
        return journal
    }

    /// Opens an existing journal for appending after checking it was made for `fingerprint`,
    /// and cuts off a torn tail.
    static func resume(path: String, fingerprint: CacheFingerprint) throws -> (journal: CacheJournal, contents: JournalContents) {
        let descriptor = try openFile(path, flags: O_RDWR)
        let contents: JournalContents
        do {
            contents = try read(descriptor: descriptor, path: path)
        } catch {
            close(descriptor)
            throw error
        }
        let journal = CacheJournal(path: path, descriptor: descriptor, length: contents.durableLength,
                                   headerLength: contents.headerLength, rowCount: contents.rows.count)
        journal.classes = contents.currentClasses
        let differences = contents.header.fingerprint.differences(from: fingerprint)
        guard differences.isEmpty else { throw FeatureCacheError.mismatch(path, differences) }
        if contents.tornBytes > 0 { try journal.truncate(to: contents.durableLength) }
        return (journal, contents)
    }

    /// Everything up to the last whole record, without changing the file.
    static func read(path: String) throws -> JournalContents {
        let descriptor = try openFile(path, flags: O_RDONLY)
        defer { close(descriptor) }
        return try read(descriptor: descriptor, path: path)
    }

    private static func read(descriptor: Int32, path: String) throws -> JournalContents {
        let fileLength = Int64(lseek(descriptor, 0, SEEK_END))
        var contents = try readHeader(descriptor: descriptor, path: path, fileLength: fileLength)
        let rowBytes = contents.header.fingerprint.rowSize * MemoryLayout<Float>.size
        var payload: [UInt8] = []
        var offset = contents.durableLength
        var prefix = [UInt8](repeating: 0, count: recordPrefixSize)
        while fileLength - offset >= Int64(recordPrefixSize) {
            guard try prefix.withUnsafeMutableBytes({ try Self.readJournal(into: $0, from: descriptor, at: offset, path: path) })
            else { break }
            let (storedCRC, kindByte, payloadLength) = prefix.withUnsafeBytes {
                (UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)), $0[4],
                 UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 5, as: UInt64.self)))
            }
            let payloadStart = offset + Int64(recordPrefixSize)
            guard payloadLength <= UInt64(fileLength - payloadStart) else { break }
            payload = [UInt8](repeating: 0, count: Int(payloadLength))
            guard try payload.withUnsafeMutableBytes({ try Self.readJournal(into: $0, from: descriptor, at: payloadStart, path: path) })
            else { break }
            let crc = payload.withUnsafeBytes { body in
                prefix.withUnsafeBytes { CRC32.checksum(body, continuing: CRC32.checksum(UnsafeRawBufferPointer(rebasing: $0[4...]))) }
            }
            guard crc == storedCRC else { break }
            // From here on the record is whole: anything wrong inside it is damage, not a torn write.
            guard let kind = RecordKind(rawValue: kindByte) else {
                throw FeatureCacheError(.damaged, "\(path): unknown record kind \(kindByte) at byte \(offset); "
                                        + "written by a newer bottleneck? use --overwrite to start afresh")
            }
            do {
                try payload.withUnsafeBytes { bytes in
                    var reader = ByteReader(bytes, fileOffset: Int(payloadStart))
                    switch kind {
                    case .batch: try contents.readBatch(&reader, rowBytes: rowBytes, payloadStart: payloadStart)
                    case .classes: contents.currentClasses = try reader.readStrings()
                    }
                }
            } catch let problem as ByteLayoutProblem {
                throw FeatureCacheError(.damaged, "\(path): the record at byte \(offset) is malformed (\(problem.detail)); "
                                        + "use --overwrite to start afresh")
            }
            offset = payloadStart + Int64(payloadLength)
            contents.durableLength = offset
        }
        return contents
    }

    private static func readHeader(descriptor: Int32, path: String, fileLength: Int64) throws -> JournalContents {
        let notAJournal = FeatureCacheError(.damaged, "\(path) is not a bottleneck journal or its header is damaged; "
                                            + "use --overwrite to start afresh")
        var prefix = [UInt8](repeating: 0, count: headerPrefixSize)
        guard try prefix.withUnsafeMutableBytes({ try Self.readJournal(into: $0, from: descriptor, at: 0, path: path) }),
              prefix.starts(with: magic) else { throw notAJournal }
        let (version, jsonLength, storedCRC) = prefix.withUnsafeBytes {
            (UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
             UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 12, as: UInt32.self)),
             UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        }
        guard version == Self.version else {
            throw FeatureCacheError(.damaged, "\(path) is a journal of format \(version), this bottleneck writes \(Self.version); "
                                    + "use --overwrite to start afresh")
        }
        guard Int64(jsonLength) <= fileLength - Int64(headerPrefixSize) else { throw notAJournal }
        var json = [UInt8](repeating: 0, count: Int(jsonLength))
        guard try json.withUnsafeMutableBytes({ try Self.readJournal(into: $0, from: descriptor,
                                                                      at: Int64(headerPrefixSize), path: path) }),
              json.withUnsafeBytes({ CRC32.checksum($0) }) == storedCRC,
              let header = try? JSONDecoder().decode(JournalHeader.self, from: Data(json)),
              CacheFingerprint.isActivationShape(header.fingerprint.activationShape) else { throw notAJournal }
        return JournalContents(header: header, currentClasses: header.classes, durableLength: Int64(headerPrefixSize + json.count),
                               fileLength: fileLength, headerLength: Int64(headerPrefixSize + json.count))
    }

    /// Appends one batch; the rows' labels index the class list of the latest header or classes record, and
    /// `features` holds each row's eval view then its `views` augmented ones. Returns the rows as the journal now holds them.
    func appendBatch(_ rows: [(item: ImageFolder.Item, identity: FileIdentity, views: Int)], failures: [CacheFailure],
                     features: UnsafeBufferPointer<Float>) throws -> [JournalRow] {
        beginRecord(.batch)
        record.appendLittleEndian(UInt32(rows.count))
        record.appendLittleEndian(UInt32(failures.count))
        for (item, identity, views) in rows {
            record.appendLittleEndian(item.label)
            record.appendString(item.split.rawValue)
            record.appendString(item.path)
            record.appendIdentity(identity)
            record.appendLittleEndian(UInt32(views))
        }
        for failure in failures {
            record.appendString(failure.path)
            record.appendString(failure.reason)
        }
        let featuresOffset = length + Int64(record.count)
        record.append(contentsOf: UnsafeRawBufferPointer(features))
        try endRecord(addingRows: rows.count)
        let viewBytes = Int64(features.count / max(rows.reduce(0) { $0 + 1 + $1.views }, 1) * MemoryLayout<Float>.size)
        var offset = featuresOffset
        return rows.map { row in
            defer { offset += Int64(1 + row.views) * viewBytes }
            return JournalRow(path: row.item.path, className: row.item.label < 0 ? nil : classes[Int(row.item.label)],
                              split: row.item.split, identity: row.identity, featureOffset: offset, views: row.views)
        }
    }

    /// Records that the labels of later batches index `classes`.
    func appendClasses(_ classes: [String]) throws {
        beginRecord(.classes)
        record.appendStrings(classes)
        try endRecord(addingRows: 0)
        self.classes = classes
    }

    /// Copies whole rows of features stored from `offset` into `buffer`.
    func readFeatures(from offset: Int64, into buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard try Self.readJournal(into: UnsafeMutableRawBufferPointer(buffer), from: descriptor, at: offset, path: path) else {
            throw FeatureCacheError(.damaged, "\(path) ends inside the features at byte \(offset); was it changed by another process?")
        }
    }

    /// Called once its records are safely in the finished cache.
    func delete() throws {
        try FeatureCacheError.whenFileFails(.writeFailed) { try DurableFiles.remove(path) }
    }

    private func beginRecord(_ kind: RecordKind) {
        record.removeAll(keepingCapacity: true)
        record.append(contentsOf: [0, 0, 0, 0, kind.rawValue, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// Fills in the length and CRC, then writes the record in place. A failed write
    /// (disk full) is cut off again so the journal stays a sequence of whole records.
    private func endRecord(addingRows rows: Int) throws {
        let payloadLength = UInt64(record.count - Self.recordPrefixSize).littleEndian
        record.withUnsafeMutableBytes { bytes in
            bytes.storeBytes(of: payloadLength, toByteOffset: 5, as: UInt64.self)
            let crc = CRC32.checksum(UnsafeRawBufferPointer(rebasing: bytes[4...])).littleEndian
            bytes.storeBytes(of: crc, toByteOffset: 0, as: UInt32.self)
        }
        if let error = record.withUnsafeBytes({ DurableFiles.write($0, to: descriptor, at: length) }) {
            _ = ftruncate(descriptor, off_t(length))
            throw FeatureCacheError(.writeFailed, "cannot append to \(path): \(systemMessage(error)); "
                                    + "the \(rowCount) rows written before are kept, rerun the same command to continue")
        }
        length += Int64(record.count)
        rowCount += rows
    }

    private func truncate(to newLength: Int64) throws {
        guard ftruncate(descriptor, off_t(newLength)) == 0 else {
            throw FeatureCacheError(.writeFailed, "cannot cut the torn end off \(path): \(systemMessage(errno))")
        }
        try FeatureCacheError.whenFileFails(.writeFailed) { try DurableFiles.sync(descriptor, path: path) }
    }

    /// Only a regular file, and for writing never through a symbolic link.
    /// `DurableFiles.read`, its failure called damage to the journal.
    private static func readJournal(into buffer: UnsafeMutableRawBufferPointer, from descriptor: Int32, at offset: Int64,
                                    path: String) throws -> Bool {
        try FeatureCacheError.whenFileFails(.damaged) { try DurableFiles.read(into: buffer, from: descriptor, at: offset, path: path) }
    }

    private static func openFile(_ path: String, flags: Int32) throws -> Int32 {
        let reading = flags & O_ACCMODE == O_RDONLY
        do {
            return try DurableFiles.openRegularFile(path, flags: reading ? flags : flags | O_NOFOLLOW).descriptor
        } catch {
            throw FeatureCacheError(!reading ? .writeFailed : error.code == ENOENT ? .missing : .damaged,
                                    "cannot open \(path): \(error.reason)")
        }
    }
}

private extension JournalContents {
    mutating func readBatch(_ reader: inout ByteReader, rowBytes: Int, payloadStart: Int64) throws {
        let rowCount = try reader.readCount(UInt32.self, "the row count")
        let failureCount = try reader.readCount(UInt32.self, "the failure count")
        var batch: [(path: String, className: String?, split: ImageFolder.Split, identity: FileIdentity, views: Int)] = []
        for _ in 0..<rowCount {
            let label = try reader.readInteger(Int32.self, "a label")
            guard let split = ImageFolder.Split(rawValue: try reader.readString("a split")) else {
                throw ByteLayoutProblem.malformed("unknown split at byte \(reader.absolutePosition)")
            }
            guard label >= -1, label < currentClasses.count else {
                throw ByteLayoutProblem.malformed("label \(label) for \(currentClasses.count) classes")
            }
            let path = try reader.readString("a path"), identity = try reader.readIdentity()
            let views = try reader.readCount(UInt32.self, "a view count")
            guard views == 0 || views == header.fingerprint.views else {
                throw ByteLayoutProblem.malformed("\(views) views for \(path); the journal's runs make \(header.fingerprint.views)")
            }
            batch.append((path, label < 0 ? nil : currentClasses[Int(label)], split, identity, views))
        }
        for _ in 0..<failureCount {
            failures.append(CacheFailure(path: try reader.readString("a failed path"), reason: try reader.readString("a reason")))
        }
        let viewCount = batch.reduce(0) { $0 + 1 + $1.views }
        guard reader.remaining == viewCount * rowBytes else {
            throw ByteLayoutProblem.malformed("\(reader.remaining) bytes of features for \(rowCount) rows "
                                              + "(\(viewCount) views in all) of \(rowBytes)")
        }
        var offset = payloadStart + Int64(reader.position)
        for row in batch {
            let journalRow = JournalRow(path: row.path, className: row.className, split: row.split, identity: row.identity,
                                        featureOffset: offset, views: row.views)
            offset += Int64((1 + row.views) * rowBytes)
            if let earlier = rowIndex[row.path] {
                guard rows[earlier].identity != row.identity else {
                    throw ByteLayoutProblem.malformed("\(row.path) has the same row twice")
                }
                rows[earlier] = journalRow
            } else {
                rowIndex[row.path] = rows.count
                rows.append(journalRow)
            }
        }
    }
}

private extension ByteReader {
    mutating func readString(_ what: @autoclosure () -> String) throws -> String {
        let count = try readCount(UInt32.self, "the length of \(what())")
        return String(decoding: try read(count, what()), as: UTF8.self)
    }

    mutating func readIdentity() throws -> FileIdentity {
        FileIdentity(size: try readInteger(Int64.self, "a file size"), mtimeNanoseconds: try readInteger(Int64.self, "an mtime"),
                     ctimeNanoseconds: try readInteger(Int64.self, "a ctime"), inode: try readInteger(UInt64.self, "an inode"),
                     sha256: Array(try read(32, "a SHA-256")))
    }

    mutating func readStrings() throws -> [String] {
        try (0..<readCount(UInt32.self, "a string count")).map { _ in try readString("a class name") }
    }
}

private extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    mutating func appendString(_ string: String) {
        appendLittleEndian(UInt32(string.utf8.count))
        append(contentsOf: string.utf8)
    }

    mutating func appendIdentity(_ identity: FileIdentity) {
        appendLittleEndian(identity.size)
        appendLittleEndian(identity.mtimeNanoseconds)
        appendLittleEndian(identity.ctimeNanoseconds)
        appendLittleEndian(identity.inode)
        append(contentsOf: identity.sha256)
    }

    mutating func appendStrings(_ strings: [String]) {
        appendLittleEndian(UInt32(strings.count))
        strings.forEach { appendString($0) }
    }
}
