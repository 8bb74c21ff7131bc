#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import BottleneckKernels

/// The project's own weights file: one dataset per state-dict key, named by
/// the key (`features.0.weight`, dots and all) at the root; string attributes
/// at the root carry provenance. Readable with h5py, no project code needed.
/// Datasets inside groups are read too, their path joined with dots
/// (`features/0/weight` → `features.0.weight`).
enum HDF5WeightsFormat {
    /// The first 8 bytes of every HDF5 file, found at offset 0 or, after a user block, at 512, 1024, 2048, …
    private static let signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]

    static func looksLike(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset + signature.count <= bytes.count {
            if bytes[offset..<(offset + signature.count)].elementsEqual(signature) { return true }
            offset = offset == 0 ? 512 : offset * 2
        }
        return false
    }

    /// Far deeper than any weights file nests its groups (Keras: 4), far shallower than the stack allows.
    static let maximumGroupDepth = 32

    static func parse(_ file: HDF5File) throws -> ParsedStateDict {
        var walk = Walk()
        try collectDatasets(in: file, path: "", depth: 0, walk: &walk)
        let tensors = walk.tensors, skipped = walk.skipped
        var notes: [String] = []
        if !skipped.isEmpty { notes.append("ignored \(counted(skipped.count, "non-numeric dataset")) (\(listFew(skipped)))") }
        return ParsedStateDict(format: .hdf5, tensors: tensors, notes: notes, metadata: try metadata(of: file))
    }

    /// The root's single-string attributes (provenance); arrays of strings, such as Keras's `layer_names`, are not metadata.
    static func metadata(of file: HDF5File) throws -> [String: String] {
        var metadata: [String: String] = [:]
        for name in try file.attributeNames() where try file.attributeKind(name) == .string {
            if let strings = try file.stringsAttribute(name), strings.count == 1 { metadata[name] = strings[0] }
        }
        return metadata
    }

    private struct Walk {
        var tensors: [ParsedTensor] = []
        var skipped: [String] = []
        /// Each group entered, by identity and path: a second link to one is a cycle or a repeat, never more weights
        /// (and a chain of repeats would make the walk exponential).
        var visited: [HDF5ObjectIdentity: String] = [:]
    }

    private static func collectDatasets(in group: HDF5Group, path: String, depth: Int, walk: inout Walk) throws {
        guard depth <= maximumGroupDepth else {
            throw WeightFileProblem.malformed("group \(path) is nested more than \(maximumGroupDepth) groups deep")
        }
        if let earlier = walk.visited.updateValue(path.isEmpty ? "/" : path, forKey: try group.identity()) {
            throw WeightFileProblem.malformed("group \(path) links again to group \(earlier): the file's links repeat or form a cycle")
        }
        for name in try group.memberNames() {
            let memberPath = path.isEmpty ? name : path + "/" + name
            switch try group.kind(of: name) {
            case .group:
                try collectDatasets(in: try group.openGroup(name), path: memberPath, depth: depth + 1, walk: &walk)
            case .dataset:
                let dataset = try group.openDataset(name)
                guard let dtype = dtype(of: try dataset.elementKind()) else {
                    walk.skipped.append(memberPath)
                    continue
                }
                let shape = try dataset.shape()
                guard checkedElementCount(shape) != nil else {
                    throw WeightFileProblem.malformed("dataset \(memberPath) claims shape \(shape)")
                }
                walk.tensors.append(ParsedTensor(key: memberPath.split(separator: "/").joined(separator: "."), dtype: dtype,
                                                 shape: shape, location: .hdf5Dataset(path: memberPath)))
            case .other:
                walk.skipped.append(memberPath)
            }
        }
    }

    static func dtype(of kind: HDF5ElementKind) -> WeightDType? {
        switch kind {
        case .float(bytes: 2): .float16
        case .float(bytes: 4): .float32
        case .float(bytes: 8): .float64
        case .integer(bytes: 1, signed: true): .int8
        case .integer(bytes: 2, signed: true): .int16
        case .integer(bytes: 4, signed: true): .int32
        case .integer(bytes: 8, signed: true): .int64
        case .integer(bytes: 1, signed: false): .uint8
        case .integer(bytes: 2, signed: false): .uint16
        case .integer(bytes: 4, signed: false): .uint32
        case .integer(bytes: 8, signed: false): .uint64
        default: nil
        }
    }

    /// The whole dataset as float32; HDF5 converts float16 and float64 itself.
    static func readTensor(_ file: HDF5File, datasetPath: String, shape: [Int]) throws -> Tensor {
        let values = try file.openDataset(datasetPath).read(as: Float.self)
        guard values.count == shape.reduce(1, *) else {
            throw WeightFileProblem.malformed("dataset \(datasetPath) changed size while open")
        }
        return Tensor(shape: shape, data: values)
    }
}

/// Saves a state dict as the project's HDF5 weights file (float32, one root
/// dataset per key, `attributes` as root string attributes). Written to a
/// fresh temporary file beside `path` and renamed over it, so an interrupted save
/// never leaves a half-written model where a good one was (see `DurableFiles.writeThroughTemporary`).
func writeStateDictHDF5(path: String, tensors: [(String, Tensor)], attributes: [String: String] = [:]) throws {
    if let duplicate = tensors.map(\.0).firstRepeated() {
        throw WeightsError(.writeFailed, path: path, "the state dict names \(duplicate) twice")
    }
    do {
        try DurableFiles.writeThroughTemporary(to: path) { temporaryPath in
            // The file closes when `file` and its datasets go out of scope, before the rename.
            let file = try HDF5File(path: temporaryPath, mode: .createNew)
            for (key, tensor) in tensors {
                try file.createDataset(key, of: Float.self, shape: tensor.shape).write(tensor.data)
            }
            for (name, value) in attributes.sorted(by: { $0.key < $1.key }) {
                try file.setAttribute(name, value)
            }
            try file.flush()
        }
    } catch let error as FileAccessError {
        throw WeightsError(.writeFailed, path: path, error.reason)
    } catch {
        throw WeightsError(.writeFailed, path: path, "\(error)")
    }
}
