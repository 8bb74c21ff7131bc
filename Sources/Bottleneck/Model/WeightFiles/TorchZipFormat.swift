import BottleneckKernels

// Our own zip reader, not ZIPFoundation: torch.save stores members uncompressed and 64-byte aligned, so tensors are
// read in place from the mapped file, where ZIPFoundation extracts each entry through a copy (528 MB for VGG16).

/// One member of a zip archive, located in the mapped file.
struct ZipEntry {
    let name: String
    /// Absolute byte range of the member's stored bytes.
    let data: Range<Int>
    let compressionMethod: Int
    let isEncrypted: Bool
}

/// The central directory of a zip archive (with ZIP64 records and extras),
/// read from the mapping: no member is copied or inflated.
struct ZipDirectory {
    private(set) var entries: [ZipEntry] = []
    private var entryIndex: [String: Int] = [:]

    subscript(name: String) -> ZipEntry? { entryIndex[name].map { entries[$0] } }

    private static let endOfCentralDirectorySignature: UInt32 = 0x0605_4b50
    private static let zip64LocatorSignature: UInt32 = 0x0706_4b50
    private static let zip64EndSignature: UInt32 = 0x0606_4b50
    private static let centralEntrySignature: UInt32 = 0x0201_4b50
    private static let localHeaderSignature: UInt32 = 0x0403_4b50
    /// Fields saturated at these values mean "see the ZIP64 record or extra".
    private static let saturated16 = 0xffff, saturated32 = 0xffff_ffff

    init(_ bytes: UnsafeRawBufferPointer) throws {
        let end = try Self.findEndOfCentralDirectory(bytes)
        var record = ByteReader(bytes)
        try record.seek(to: end + 10, "the zip end record")
        var entryCount = try record.readCount(UInt16.self, "the zip entry count")
        var directorySize = try record.readCount(UInt32.self, "the zip central directory size")
        var directoryOffset = try record.readCount(UInt32.self, "the zip central directory offset")
        if entryCount == Self.saturated16 || directorySize == Self.saturated32 || directoryOffset == Self.saturated32 {
            (entryCount, directorySize, directoryOffset) = try Self.zip64Directory(bytes, endRecord: end)
        }
        guard let directoryEnd = checkedAdd(directoryOffset, directorySize), directoryEnd <= bytes.count else {
            throw WeightFileProblem.truncated("the zip central directory lies past the end of the file")
        }
        var directory = ByteReader(bytes)
        try directory.seek(to: directoryOffset, "the zip central directory")
        for _ in 0..<entryCount {
            let entry = try Self.readCentralEntry(&directory, bytes: bytes)
            entryIndex[entry.name] = entries.count
            entries.append(entry)
        }
    }

    /// The end-of-central-directory record sits in the last 22 + 65535 (comment) bytes.
    private static func findEndOfCentralDirectory(_ bytes: UnsafeRawBufferPointer) throws -> Int {
        let recordSize = 22
        if bytes.count >= recordSize {
            let lowest = max(0, bytes.count - recordSize - 0xffff)
            let signature = UInt32(littleEndian: endOfCentralDirectorySignature)
            for position in stride(from: bytes.count - recordSize, through: lowest, by: -1)
            where bytes.loadUnaligned(fromByteOffset: position, as: UInt32.self) == signature {
                return position
            }
        }
        throw WeightFileProblem.truncated("a zip archive without its central directory (the end of the file is missing)")
    }

    private static func zip64Directory(_ bytes: UnsafeRawBufferPointer, endRecord: Int) throws -> (Int, Int, Int) {
        var locator = ByteReader(bytes)
        try locator.seek(to: endRecord - 20, "the ZIP64 locator")
        guard try locator.readInteger(UInt32.self, "the ZIP64 locator") == zip64LocatorSignature else {
            throw WeightFileProblem.malformed("a zip that needs ZIP64 records but has none")
        }
        try locator.skip(4, "the ZIP64 locator")
        var record = ByteReader(bytes)
        try record.seek(to: try locator.readCount(UInt64.self, "the ZIP64 end record offset"), "the ZIP64 end record")
        guard try record.readInteger(UInt32.self, "the ZIP64 end record") == zip64EndSignature else {
            throw WeightFileProblem.malformed("the ZIP64 end record is not where its locator says")
        }
        try record.skip(8 + 2 + 2 + 4 + 4 + 8, "the ZIP64 end record")
        let entryCount = try record.readCount(UInt64.self, "the ZIP64 entry count")
        let directorySize = try record.readCount(UInt64.self, "the ZIP64 directory size")
        let directoryOffset = try record.readCount(UInt64.self, "the ZIP64 directory offset")
        return (entryCount, directorySize, directoryOffset)
    }

    private static func readCentralEntry(_ directory: inout ByteReader, bytes: UnsafeRawBufferPointer) throws -> ZipEntry {
        guard try directory.readInteger(UInt32.self, "a zip directory entry") == centralEntrySignature else {
            throw WeightFileProblem.malformed("a corrupt zip central directory entry at byte \(directory.absolutePosition - 4)")
        }
        try directory.skip(4, "a zip directory entry")
        let flags = try directory.readInteger(UInt16.self, "zip entry flags")
        let method = try directory.readInteger(UInt16.self, "zip entry compression method")
        try directory.skip(8, "a zip directory entry")
        var compressedSize = try directory.readCount(UInt32.self, "a zip entry size")
        var uncompressedSize = try directory.readCount(UInt32.self, "a zip entry size")
        let nameLength = try directory.readCount(UInt16.self, "a zip entry name length")
        let extraLength = try directory.readCount(UInt16.self, "a zip entry extra length")
        let commentLength = try directory.readCount(UInt16.self, "a zip entry comment length")
        try directory.skip(8, "a zip directory entry")
        var localHeaderOffset = try directory.readCount(UInt32.self, "a zip entry offset")
        let name = String(decoding: try directory.read(nameLength, "a zip entry name"), as: UTF8.self)

        // ZIP64 extra (id 1): 8-byte values for exactly the fields saturated above, in this order.
        var extras = ByteReader(try directory.read(extraLength, "zip entry extras"))
        while extras.remaining >= 4 {
            let id = try extras.readInteger(UInt16.self, "a zip extra field")
            var field = ByteReader(try extras.read(extras.readCount(UInt16.self, "a zip extra field size"), "a zip extra field"))
            guard id == 1 else { continue }
            if uncompressedSize == saturated32 { uncompressedSize = try field.readCount(UInt64.self, "a ZIP64 size") }
            if compressedSize == saturated32 { compressedSize = try field.readCount(UInt64.self, "a ZIP64 size") }
            if localHeaderOffset == saturated32 { localHeaderOffset = try field.readCount(UInt64.self, "a ZIP64 offset") }
        }
        try directory.skip(commentLength, "a zip entry comment")

        // The data follows the local header, whose extra field (torch pads it to align storages) may differ in length.
        var local = ByteReader(bytes)
        try local.seek(to: localHeaderOffset, "the local header of \(name)")
        guard try local.readInteger(UInt32.self, "the local header of \(name)") == localHeaderSignature else {
            throw WeightFileProblem.malformed("zip entry \(name) has no local header where the directory says")
        }
        try local.skip(22, "the local header of \(name)")
        let localNameLength = try local.readCount(UInt16.self, "the local header of \(name)")
        let localExtraLength = try local.readCount(UInt16.self, "the local header of \(name)")
        try local.skip(localNameLength + localExtraLength, "the local header of \(name)")
        let dataStart = local.absolutePosition
        guard let dataEnd = checkedAdd(dataStart, compressedSize), dataEnd <= bytes.count else {
            throw WeightFileProblem.truncated("zip entry \(name) runs past the end of the file: it needs bytes "
                                              + "\(dataStart)..<\(dataStart + compressedSize), the file has \(bytes.count)")
        }
        return ZipEntry(name: name, data: dataStart..<dataEnd, compressionMethod: Int(method), isEncrypted: flags & 1 != 0)
    }
}

/// torch.save's default format since 1.6: a zip whose members are
/// `<archive>/data.pkl` (the pickle, storages as persistent ids
/// ('storage', torch.FloatStorage, key, location, numel)), `<archive>/data/<key>`
/// (each storage's raw little-endian bytes, stored uncompressed and 64-byte
/// aligned) and `<archive>/byteorder`.
enum TorchZipFormat {
    static func parse(_ file: MappedFile) throws -> ParsedStateDict {
        let directory = try ZipDirectory(file.bytes)
        guard let pickle = directory.entries.first(where: { $0.name == "data.pkl" || $0.name.hasSuffix("/data.pkl") }) else {
            throw WeightFileProblem(.unrecognizedFormat, "a zip archive without data.pkl, so not a PyTorch checkpoint "
                                    + "(not a PyTorch, safetensors or HDF5 weights file)")
        }
        let archivePrefix = String(pickle.name.dropLast("data.pkl".count))
        if let byteOrder = directory[archivePrefix + "byteorder"] {
            let order = String(decoding: try storedBytes(byteOrder, in: file), as: UTF8.self)
            guard order == "little" else { throw WeightFileProblem.unsupported("saved with byte order '\(order)'") }
        }

        let unpickler = TorchUnpickler()
        var machine = PickleMachine(reader: ByteReader(try storedBytes(pickle, in: file), fileOffset: pickle.data.lowerBound),
                                    interpreter: unpickler)
        let stateDict = try machine.run(TorchStateDict.init(from:))
        let tensors = try stateDict.mappedTensors { storage in
            let recordName = archivePrefix + "data/" + storage.key
            guard let record = directory[recordName] else {
                throw WeightFileProblem.malformed("storage record \(recordName) is missing from the archive")
            }
            _ = try storedBytes(record, in: file)
            return record.data
        }
        return ParsedStateDict(format: .torchZip, tensors: tensors, notes: stateDict.notes)
    }

    /// A member's bytes, which must be stored as is: compressed members would need inflating into memory.
    private static func storedBytes(_ entry: ZipEntry, in file: MappedFile) throws -> UnsafeRawBufferPointer {
        guard !entry.isEncrypted else { throw WeightFileProblem.unsupported("zip entry \(entry.name) is encrypted") }
        guard entry.compressionMethod == 0 else {
            throw WeightFileProblem.unsupported("zip entry \(entry.name) is compressed (method \(entry.compressionMethod)); "
                                                + "torch.save stores entries uncompressed: re-save the file with torch.save")
        }
        return UnsafeRawBufferPointer(rebasing: file.bytes[entry.data])
    }
}
