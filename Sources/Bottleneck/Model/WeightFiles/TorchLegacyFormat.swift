import BottleneckKernels

/// torch.save's pre-1.6 stream (`_use_new_zipfile_serialization=False`), the
/// format of torchvision's vgg16-397923af.pth:
///
///     pickle: magic number 0x1950a86a20f9469cfc6c
///     pickle: protocol version 1001
///     pickle: sys_info {protocol_version, little_endian, type_sizes}
///     pickle: the object (the state dict), storages as persistent ids
///     pickle: list of storage keys, in the order their data follows
///     per storage: u64 little-endian element count, then count × element size raw bytes
enum TorchLegacyFormat {
    /// 0x1950a86a20f9469cfc6c, little-endian, as LONG1 stores it.
    private static let magicNumber: [UInt8] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]
    private static let protocolVersion = 1001

    static func parse(_ file: MappedFile) throws -> ParsedStateDict {
        let unpickler = TorchUnpickler()
        var machine = PickleMachine(reader: ByteReader(file.bytes), interpreter: unpickler)

        let isTorchFile = try? machine.run { value in
            if case .bigInt(magicNumber) = value { true } else { false }
        }
        guard isTorchFile == true else {
            throw WeightFileProblem(.unrecognizedFormat, "a Python pickle, but not one written by torch.save "
                                    + "(not a PyTorch, safetensors or HDF5 weights file)")
        }
        let version = try machine.run(\.intValue)
        guard version == protocolVersion else {
            throw WeightFileProblem.unsupported("legacy torch protocol version \(version.map(String.init) ?? "?"), expected 1001")
        }
        let littleEndian = try machine.run { systemInfo -> Bool in
            guard case .dict(let info) = systemInfo, case .bool(let little) = info["little_endian"] else { return true }
            return little
        }
        guard littleEndian else { throw WeightFileProblem.unsupported("saved on a big-endian machine") }

        let stateDict = try machine.run(TorchStateDict.init(from:))
        let storageKeys = try machine.run { value -> [String] in
            guard case .list(let keys) = value else {
                throw WeightFileProblem.malformed("the storage key list is \(value.typeDescription), not a list")
            }
            return try keys.items.map { key in
                guard let key = key.stringValue else { throw WeightFileProblem.malformed("a storage key that is not a string") }
                return key
            }
        }

        let regions = try storageRegions(keys: storageKeys, storageTypes: unpickler.storageTypes, stateDict: stateDict,
                                         reader: ByteReader(file.bytes), start: machine.position)
        let tensors = try stateDict.mappedTensors { storage in
            guard let region = regions[storage.key] else {
                throw WeightFileProblem.malformed("storage \(storage.key) is used but its data is not in the file")
            }
            return region
        }
        return ParsedStateDict(format: .torchLegacy, tensors: tensors, notes: stateDict.notes)
    }

    /// Walks the raw storages after the pickles: each starts with its element
    /// count, and its element size comes from the storage type in the pickle.
    private static func storageRegions(keys: [String], storageTypes: [String: WeightDType],
                                       stateDict: TorchStateDict, reader: ByteReader,
                                       start: Int) throws -> [String: Range<Int>] {
        var reader = reader
        try reader.seek(to: start, "the first storage")
        var regions: [String: Range<Int>] = [:]
        for key in keys {
            guard let dtype = storageTypes[key] else {
                throw WeightFileProblem.malformed("storage \(key) has data but no type in the pickle")
            }
            let count = try reader.readCount(UInt64.self, "the element count of storage \(key)")
            guard let byteCount = checkedMultiply(count, dtype.byteSize), byteCount <= reader.remaining else {
                let users = stateDict.tensors.filter { $0.tensor.storage.key == key }.map(\.key)
                let usedBy = users.isEmpty ? "" : " (holding \(listFew(users)))"
                throw WeightFileProblem.truncated(
                    "storage \(key)\(usedBy) runs past the end of the file: it needs \(count) × \(dtype.byteSize) "
                    + "bytes from byte \(reader.absolutePosition), \(reader.remaining) are left (truncated download?)")
            }
            regions[key] = reader.absolutePosition..<(reader.absolutePosition + byteCount)
            try reader.skip(byteCount, "storage \(key)")
        }
        return regions
    }
}
