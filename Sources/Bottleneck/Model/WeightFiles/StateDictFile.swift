import BottleneckKernels

package enum WeightFileFormat: String, Sendable {
    case torchLegacy = "PyTorch legacy (pre-1.6 torch.save)"
    case torchZip = "PyTorch zip (torch.save)"
    case safetensors = "safetensors"
    case hdf5 = "HDF5"
    case keras = "Keras HDF5 (keras.applications VGG layout)"
}

/// One tensor of a state dict as the file describes it; reading it is `StateDictFile.tensor(_:)`.
struct WeightEntry: Sendable, Equatable {
    package let key: String
    let dtype: WeightDType
    package let shape: [Int]

    var elementCount: Int { shape.reduce(1, *) }
}

/// Where a tensor's values are: a strided run of the mapped file, or an HDF5 dataset.
enum TensorLocation: Sendable {
    case mapped(byteOffset: Int, strides: [Int])
    case hdf5Dataset(path: String)
    /// A Keras kernel, turned into torchvision's layout as it is read.
    case kerasDataset(path: String, conversion: KerasConversion)
}

struct ParsedTensor {
    let key: String
    let dtype: WeightDType
    let shape: [Int]
    let location: TensorLocation
}

/// What a format parser found, before key normalisation.
struct ParsedStateDict {
    let format: WeightFileFormat
    var tensors: [ParsedTensor]
    var notes: [String] = []
    var metadata: [String: String] = [:]
    var normalization: InputNormalization? = nil
}

/// An opened weights file: the state dict's keys, dtypes and shapes, read
/// when opened, and each tensor's values, read only when asked for. PyTorch
/// and safetensors files are memory-mapped (a model cut at conv4_3 never
/// reads fc6's 400 MB); HDF5 files are read through the HDF5 library.
///
///     let weights = try StateDictFile.open(path: "vgg16-397923af.pth")
///     try weights.validate(expected: ["features.0.weight": [64, 3, 3, 3], ...])
///     let conv1 = try weights.tensor("features.0.weight")   // [64, 3, 3, 3] float32
final class StateDictFile: Sendable {
    package let path: String
    package let format: WeightFileFormat
    /// In file order, keys as the model should see them (a `module.` prefix removed).
    let entries: [WeightEntry]
    /// What was done to make the file usable (unwrapped checkpoint, removed prefix, dtype conversion).
    let notes: [String]
    /// safetensors `__metadata__`, or the root string attributes of an HDF5 file.
    let metadata: [String: String]
    /// The input normalisation the weights were trained with, when the file implies one other than torchvision's
    /// (a Keras VGG's caffe preprocessing); nil for a torchvision state dict.
    package let normalization: InputNormalization?

    private enum Backing: Sendable {
        case mapped(MappedFile)
        case hdf5(HDF5File)
    }

    /// Refuses a file whose tensors could not all be held as float32: what a caller that loads every tensor
    /// (a model, a checkpoint) checks before it reads the first.
    func checkFitsInMemory() throws(WeightsError) {
        let limit = MemoryEstimate.fileReadLimitBytes / MemoryLayout<Float>.size
        var total = 0
        for entry in entries {
            let (sum, overflow) = total.addingReportingOverflow(entry.elementCount)
            guard !overflow, sum <= limit else {
                throw WeightsError(.malformed, path: path,
                                   "its tensors hold more than \(limit) values, more than half this machine's memory")
            }
            total = sum
        }
    }

    /// 8 GB of float32: far above any VGG layer, and a bound a hostile shape cannot talk past.
    private static let maximumElementCount = 1 << 31

    private let backing: Backing
    private let locations: [String: TensorLocation]
    private let entryIndex: [String: Int]

    /// Opens a weights file, recognising its format from its content, not its name.
    package static func open(path: String) throws(WeightsError) -> StateDictFile {
        let file = try MappedFile(path: path)
        return try namingFile(path) {
            let mapped = Backing.mapped(file)
            switch try sniffFormat(file.bytes) {
            case .torchLegacy: return StateDictFile(path: path, parsed: try TorchLegacyFormat.parse(file), backing: mapped)
            case .torchZip: return StateDictFile(path: path, parsed: try TorchZipFormat.parse(file), backing: mapped)
            case .safetensors: return StateDictFile(path: path, parsed: try SafetensorsFormat.parse(file), backing: mapped)
            case .hdf5, .keras:
                // The first bytes tell an HDF5 file; its layout tells Keras's from bottleneck's own.
                let hdf5 = try HDF5File(path: path, mode: .readOnly)
                let parsed = try KerasWeightsFormat.layerGroup(in: hdf5).map { try KerasWeightsFormat.parse(hdf5, layers: $0) }
                    ?? HDF5WeightsFormat.parse(hdf5)
                return StateDictFile(path: path, parsed: parsed, backing: .hdf5(hdf5))
            }
        }
    }

    private init(path: String, parsed: ParsedStateDict, backing: Backing) {
        self.path = path
        self.format = parsed.format
        self.backing = backing
        self.metadata = parsed.metadata
        self.normalization = parsed.normalization
        var notes = parsed.notes

        // DataParallel saves every key as `module.<key>`.
        var tensors = parsed.tensors
        let prefix = "module."
        if !tensors.isEmpty, tensors.allSatisfy({ $0.key.hasPrefix(prefix) }) {
            tensors = tensors.map { ParsedTensor(key: String($0.key.dropFirst(prefix.count)), dtype: $0.dtype,
                                                 shape: $0.shape, location: $0.location) }
            notes.append("removed the 'module.' prefix of every key (a DataParallel state dict)")
        }
        // A key saved twice (possible in a pickle) means what Python would load: the last one.
        var entries: [WeightEntry] = []
        var entryIndex: [String: Int] = [:]
        var locations: [String: TensorLocation] = [:]
        for tensor in tensors {
            let entry = WeightEntry(key: tensor.key, dtype: tensor.dtype, shape: tensor.shape)
            if let existing = entryIndex[tensor.key] {
                entries[existing] = entry
            } else {
                entryIndex[tensor.key] = entries.count
                entries.append(entry)
            }
            locations[tensor.key] = tensor.location
        }
        for dtype in [WeightDType.float16, .bfloat16, .float64] {
            let count = entries.count { $0.dtype == dtype }
            if count > 0 { notes.append("\(counted(count, "tensor")) stored as \(dtype), converted to float32 when read") }
        }
        self.entries = entries
        self.entryIndex = entryIndex
        self.locations = locations
        self.notes = notes
    }

    func entry(_ key: String) -> WeightEntry? {
        entryIndex[key].map { entries[$0] }
    }

    /// The tensor's values as float32, read from the file now (float16, bfloat16 and float64 converted).
    func tensor(_ key: String) throws(WeightsError) -> Tensor {
        guard let entry = entry(key), let location = locations[key] else {
            throw WeightsError(.missingKey, path: path,
                               "no tensor named \(key) (the file has \(entries.count): \(listFew(entries.map(\.key))))")
        }
        guard entry.dtype.isReadableAsFloat32 else {
            throw WeightsError(.nonFloatTensor, path: path, "\(key) is \(entry.dtype), not a float tensor")
        }
        guard entry.elementCount <= Self.maximumElementCount else {
            throw WeightsError(.unsupported, path: path, "\(key) has shape \(entry.shape), too large to load")
        }
        return try namingFile(path) {
            switch (location, backing) {
            case (.mapped(let byteOffset, let strides), .mapped(let file)):
                return readFloat32(from: file, byteOffset: byteOffset, dtype: entry.dtype, shape: entry.shape, strides: strides)
            case (.hdf5Dataset(let datasetPath), .hdf5(let file)):
                return try HDF5WeightsFormat.readTensor(file, datasetPath: datasetPath, shape: entry.shape)
            case (.kerasDataset(let datasetPath, let conversion), .hdf5(let file)):
                return try KerasWeightsFormat.readTensor(file, datasetPath: datasetPath, conversion: conversion, shape: entry.shape)
            default:
                preconditionFailure("each format's parser produces locations of its own backing")
            }
        }
    }

    /// `tensor(key)` for a network to run with: refused, naming the first bad element, when a value is NaN or
    /// infinite, which no trained parameter is and which would turn every feature into NaN without a word.
    func parameter(_ key: String) throws(WeightsError) -> Tensor {
        let values = try tensor(key)
        if let index = values.data.withUnsafeBufferPointer(firstNonFiniteIndex) {
            let value = values.data[index]
            throw WeightsError(.nonFinite, path: path,
                               "tensor \(key) holds \(value.isNaN ? "NaN" : "\(value)") at index \(index) — the file is damaged")
        }
        return values
    }

    /// SHA-256 of the whole file, hex: the fingerprint caches and runs record.
    /// Streams the file (no memory), once per file version: `DigestCache` remembers it.
    package func sha256() throws(WeightsError) -> String {
        try DigestCache.sha256(ofFileAt: path)
    }

    /// Checks the file against the key → shape map the model expects, throwing
    /// one line that says everything wrong: missing keys, unexpected keys,
    /// shapes, dtypes. A file of another architecture is called that.
    package func validate(expected: [String: [Int]], allowingExtraKeys: Bool = false) throws(WeightsError) {
        let missing = expected.keys.filter { entryIndex[$0] == nil }.sorted(by: naturalKeyOrder)
        let unexpected = entries.map(\.key).filter { expected[$0] == nil }
        let presentCount = expected.count - missing.count
        if !unexpected.isEmpty, presentCount * 2 < expected.count {
            throw WeightsError(.mismatch, path: path,
                               "only \(presentCount) of the \(expected.count) expected keys are present and it has "
                               + "\(listFew(unexpected)): it looks like another architecture's state dict")
        }
        var problems: [String] = []
        if !missing.isEmpty { problems.append("missing \(counted(missing.count, "key")): \(listFew(missing))") }
        if !unexpected.isEmpty, !allowingExtraKeys {
            problems.append("\(counted(unexpected.count, "unexpected key")): \(listFew(unexpected))")
        }
        let present = entries.filter { expected[$0.key] != nil }
        let wrongShapes = present.filter { $0.shape != expected[$0.key] }
            .map { "\($0.key) has shape \($0.shape), expected \(expected[$0.key]!)" }
        if !wrongShapes.isEmpty { problems.append(listFew(wrongShapes, limit: 2)) }
        let notFloat = present.filter { !$0.dtype.isReadableAsFloat32 }.map { "\($0.key) is \($0.dtype)" }
        if !notFloat.isEmpty { problems.append("not float tensors: \(listFew(notFloat))") }
        if !problems.isEmpty { throw WeightsError(.mismatch, path: path, problems.joined(separator: "; ")) }
    }
}

/// Which parser a file needs, from its first bytes.
private func sniffFormat(_ bytes: UnsafeRawBufferPointer) throws -> WeightFileFormat {
    if bytes.starts(with: [0x50, 0x4b, 0x03, 0x04]) || bytes.starts(with: [0x50, 0x4b, 0x05, 0x06]) { return .torchZip }
    if bytes.first == 0x80 { return .torchLegacy }  // pickle PROTO: the magic number is checked by the parser
    if HDF5WeightsFormat.looksLike(bytes) { return .hdf5 }
    if SafetensorsFormat.looksLike(bytes) { return .safetensors }
    if bytes.count > 262, bytes[257..<262].elementsEqual("ustar".utf8) {
        throw WeightFileProblem.unsupported("a tar archive: torch.save's pre-0.4 format is not supported; "
                                            + "load it with torch and save it again with torch.save")
    }
    throw WeightFileProblem(.unrecognizedFormat, "not a PyTorch, safetensors or HDF5 weights file\(contentHint(bytes))")
}

/// What the file looks like instead, when that is easy to tell.
private func contentHint(_ bytes: UnsafeRawBufferPointer) -> String {
    if bytes.starts(with: [0xff, 0xd8, 0xff]) { return " (it looks like a JPEG image)" }
    if bytes.starts(with: [0x89, 0x50, 0x4e, 0x47]) { return " (it looks like a PNG image)" }
    if bytes.starts(with: [0x1f, 0x8b]) { return " (it is gzip-compressed: decompress it first)" }
    let head = bytes.prefix(512)
    if head.allSatisfy({ (0x20..<0x7f).contains($0) || $0 == 0x09 || $0 == 0x0a || $0 == 0x0d }) {
        return " (it looks like text: an HTML error page or a Git LFS pointer instead of the download?)"
    }
    return ""
}

/// "features.2.weight" before "features.10.weight": numeric components compare as numbers.
private func naturalKeyOrder(_ left: String, _ right: String) -> Bool {
    let leftParts = left.split(separator: "."), rightParts = right.split(separator: ".")
    for (leftPart, rightPart) in zip(leftParts, rightParts) where leftPart != rightPart {
        if let leftNumber = Int(leftPart), let rightNumber = Int(rightPart) { return leftNumber < rightNumber }
        return leftPart < rightPart
    }
    return leftParts.count < rightParts.count
}

/// The index of the first NaN or infinity, nil when every value is finite. The common answer costs one integer
/// max over the magnitude bits, which vectorises (a float compare loop does not: NaN breaks the reduction).
func firstNonFiniteIndex(_ values: UnsafeBufferPointer<Float>) -> Int? {
    values.withMemoryRebound(to: UInt32.self) { words in
        let magnitude: UInt32 = 0x7fff_ffff
        let infinity: UInt32 = 0x7f80_0000
        var largest: UInt32 = 0
        for word in words { largest = max(largest, word & magnitude) }
        guard largest >= infinity else { return nil }
        return words.firstIndex { $0 & magnitude >= infinity }
    }
}

func checkedAdd(_ left: Int, _ right: Int) -> Int? {
    let (sum, overflow) = left.addingReportingOverflow(right)
    return overflow ? nil : sum
}

func checkedMultiply(_ left: Int, _ right: Int) -> Int? {
    let (product, overflow) = left.multipliedReportingOverflow(by: right)
    return overflow ? nil : product
}

/// Product of the dimensions, or nil when a hostile shape overflows it.
func checkedElementCount(_ shape: [Int]) -> Int? {
    shape.reduce(Optional(1)) { count, size in count.flatMap { checkedMultiply($0, size) } }
}

/// Bytes from a strided tensor's first element to the end of its last (0 when
/// it has no elements), or nil when a hostile shape makes the arithmetic overflow.
func byteSpan(shape: [Int], strides: [Int], elementSize: Int) -> Int? {
    guard checkedElementCount(shape) != nil else { return nil }
    guard !shape.contains(0) else { return 0 }
    var lastElement = 0
    for (size, stride) in zip(shape, strides) {
        guard let reach = checkedMultiply(size - 1, stride), let sum = checkedAdd(lastElement, reach) else { return nil }
        lastElement = sum
    }
    return checkedAdd(lastElement, 1).flatMap { checkedMultiply($0, elementSize) }
}
