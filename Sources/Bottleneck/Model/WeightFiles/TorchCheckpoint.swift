import BottleneckKernels

/// A storage named by a persistent id in a torch pickle:
/// ('storage', torch.FloatStorage, key, location, numel[, view_metadata]).
struct TorchStorageReference {
    /// The record holding the bytes: `data/<key>` in a zip, the key of a legacy raw storage.
    let key: String
    /// Element type of the storage; uint8 for an UntypedStorage.
    let dtype: WeightDType
    /// Elements into the root storage, for the view storages of very old legacy files; else 0.
    let viewOffset: Int
}

/// A tensor rebuilt by torch._utils._rebuild_tensor(_v2/_v3): a strided view into a storage.
struct TorchTensorReference {
    let storage: TorchStorageReference
    let dtype: WeightDType
    /// In elements of `dtype`.
    let storageOffset: Int
    let shape: [Int]
    let strides: [Int]
}

/// Gives the torch-specific pickle calls their meaning: storages from
/// persistent ids, tensors from the rebuild functions, OrderedDict. It
/// recognises names only; nothing is imported or executed.
final class TorchUnpickler: PickleInterpreter {
    /// The element type of every storage the pickle referenced, by key: legacy
    /// files need each one's element size to find where the next one starts.
    private(set) var storageTypes: [String: WeightDType] = [:]

    /// Storage classes as torch pickles them (torch.FloatStorage, torch.cuda.HalfStorage for GPU-saved files).
    private static let storageDTypes: [String: WeightDType] = [
        "FloatStorage": .float32, "HalfStorage": .float16, "BFloat16Storage": .bfloat16, "DoubleStorage": .float64,
        "LongStorage": .int64, "IntStorage": .int32, "ShortStorage": .int16, "CharStorage": .int8,
        "ByteStorage": .uint8, "BoolStorage": .bool, "ComplexFloatStorage": .complex64,
        "ComplexDoubleStorage": .complex128, "UntypedStorage": .uint8,
    ]
    private static let storageModules: Set<String> = ["torch", "torch.cuda", "torch.storage"]

    func persistentLoad(_ id: PickleValue) throws -> PickleValue {
        guard let fields = id.tupleItems, let kind = fields.first?.stringValue else {
            throw WeightFileProblem.malformed("a persistent id that is \(id.typeDescription), not torch's storage tuple")
        }
        switch kind {
        case "storage":
            return .torchStorage(try storage(fields))
        case "module":
            // Legacy whole-model saves: ('module', class, source_file, source) stands for the class itself.
            return fields.count > 1 ? fields[1] : .object(typeName: "nn.Module")
        default:
            throw WeightFileProblem.unsupported("unknown persistent id kind '\(kind)'")
        }
    }

    private func storage(_ fields: [PickleValue]) throws -> TorchStorageReference {
        // numel (fields[4]) is not needed: each tensor's extent is checked against the bytes actually stored.
        guard fields.count >= 5, case .global(let module, let typeName) = fields[1], let key = fields[2].stringValue else {
            throw WeightFileProblem.malformed("a storage persistent id with unexpected fields")
        }
        guard Self.storageModules.contains(module), let dtype = Self.storageDTypes[typeName] else {
            throw WeightFileProblem.unsupported("storage type \(module).\(typeName)")
        }
        // Legacy view metadata (view_key, offset, size): a slice of the root storage `key`.
        var viewOffset = 0
        if fields.count > 5, let view = fields[5].tupleItems {
            guard view.count == 3, let offset = view[1].intValue, offset >= 0 else {
                throw WeightFileProblem.malformed("storage \(key) has unreadable view metadata")
            }
            viewOffset = offset
        }
        if let known = storageTypes[key], known != dtype {
            throw WeightFileProblem.unsupported("storage \(key) is used as both \(known) and \(dtype)")
        }
        storageTypes[key] = dtype
        return TorchStorageReference(key: key, dtype: dtype, viewOffset: viewOffset)
    }

    func reduce(_ callable: PickleValue, arguments: [PickleValue]) throws -> PickleValue {
        guard case .global(let module, let name) = callable else { return .object(typeName: callable.typeDescription) }
        switch (module, name) {
        case ("collections", "OrderedDict"):
            return .dict(PickleDictionary(try orderedDictItems(arguments)))
        case ("torch._utils", "_rebuild_tensor"):
            return try rebuildTensor(arguments, dtypeIndex: nil, metadataIndex: nil)
        case ("torch._utils", "_rebuild_tensor_v2"):
            return try rebuildTensor(arguments, dtypeIndex: nil, metadataIndex: 6)
        case ("torch._utils", "_rebuild_tensor_v3"):
            return try rebuildTensor(arguments, dtypeIndex: 6, metadataIndex: 7)
        case ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"):
            // A Parameter pickles as its data tensor plus requires_grad and hooks.
            guard let data = arguments.first else { throw WeightFileProblem.malformed("_rebuild_parameter without data") }
            return data
        case ("torch._tensor", "_rebuild_from_type_v2"):
            // (function, subclass, its arguments, python state): rebuild the plain tensor.
            guard arguments.count >= 3, let innerArguments = arguments[2].tupleItems else {
                throw WeightFileProblem.malformed("_rebuild_from_type_v2 with unexpected arguments")
            }
            return try reduce(arguments[0], arguments: innerArguments)
        default:
            if module.hasPrefix("torch"), name.hasPrefix("_rebuild") {
                throw WeightFileProblem.unsupported("\(module).\(name) tensors (quantized, sparse or other special tensors)")
            }
            return .object(typeName: "\(module).\(name)")
        }
    }

    /// OrderedDict() or, from Python 2 pickles, OrderedDict([[key, value], ...]).
    private func orderedDictItems(_ arguments: [PickleValue]) throws -> [(key: PickleValue, value: PickleValue)] {
        guard let items = arguments.first else { return [] }
        let pairs: [PickleValue]
        switch items {
        case .list(let container), .tuple(let container): pairs = container.items
        default: throw WeightFileProblem.malformed("OrderedDict built from \(items.typeDescription)")
        }
        return try pairs.map { pair in
            switch pair {
            case .list(let container) where container.items.count == 2, .tuple(let container) where container.items.count == 2:
                return (container.items[0], container.items[1])
            default:
                throw WeightFileProblem.malformed("OrderedDict item that is not a key-value pair")
            }
        }
    }

    /// (storage, storage_offset, size, stride, requires_grad, backward_hooks[, dtype][, metadata])
    private func rebuildTensor(_ arguments: [PickleValue], dtypeIndex: Int?, metadataIndex: Int?) throws -> PickleValue {
        guard arguments.count >= 4, case .torchStorage(let storage) = arguments[0],
              let storageOffset = arguments[1].intValue, storageOffset >= 0,
              let shape = integers(arguments[2]), let strides = integers(arguments[3]),
              shape.count == strides.count, shape.allSatisfy({ $0 >= 0 }), strides.allSatisfy({ $0 >= 0 }) else {
            throw WeightFileProblem.malformed("a tensor rebuild call with unexpected arguments")
        }
        var dtype = storage.dtype
        if let dtypeIndex {
            guard arguments.count > dtypeIndex, case .global("torch", let dtypeName) = arguments[dtypeIndex] else {
                throw WeightFileProblem.malformed("_rebuild_tensor_v3 without a dtype")
            }
            guard let named = WeightDType(rawValue: dtypeName) else {
                throw WeightFileProblem.unsupported("tensor dtype torch.\(dtypeName)")
            }
            dtype = named
        }
        // conj/neg bits would change the values: refuse rather than load them wrong.
        if let metadataIndex, arguments.count > metadataIndex, case .dict(let metadata) = arguments[metadataIndex],
           metadata.items.contains(where: { $0.value.intValue != 0 }) {
            throw WeightFileProblem.unsupported("tensors with conjugate or negative bits set")
        }
        return .torchTensor(TorchTensorReference(storage: storage, dtype: dtype, storageOffset: storageOffset,
                                                 shape: shape, strides: strides))
    }

    private func integers(_ value: PickleValue) -> [Int]? {
        switch value {
        case .tuple(let container), .list(let container):
            let values = container.items.compactMap(\.intValue)
            return values.count == container.items.count ? values : nil
        default:
            return nil
        }
    }
}

/// The state dict found in a torch pickle, with the keys as saved.
struct TorchStateDict {
    var tensors: [(key: String, tensor: TorchTensorReference)] = []
    var notes: [String] = []

    /// Checkpoint dicts that wrap the state dict under one of these keys are unwrapped.
    private static let wrapperKeys = ["state_dict", "model_state_dict", "model", "net", "module"]

    /// Finds the state dict in the unpickled top-level object: a dict of tensors, or a checkpoint dict holding one.
    init(from top: PickleValue) throws {
        switch top {
        case .dict(let dictionary):
            if try take(dictionary) { return }
            for wrapperKey in Self.wrapperKeys {
                if case .dict(let inner) = dictionary[wrapperKey], try take(inner) {
                    notes.insert("the state dict is read from checkpoint['\(wrapperKey)']", at: 0)
                    return
                }
            }
            let keys = dictionary.items.compactMap(\.key.stringValue)
            throw WeightFileProblem.unsupported("no tensors found: a dict with keys \(listFew(keys)); expected a state dict "
                                                + "or a checkpoint with 'state_dict'")
        case .object(let typeName):
            throw WeightFileProblem.unsupported("the file holds a pickled \(typeName) object, not a state dict "
                                                + "(save model.state_dict() instead of the model)")
        default:
            throw WeightFileProblem.unsupported("the file holds \(top.typeDescription), not a state dict")
        }
    }

    /// Takes the string-keyed tensors of `dictionary`; false when it has none.
    private mutating func take(_ dictionary: PickleDictionary) throws -> Bool {
        var skipped: [String] = []
        for (key, value) in dictionary.items {
            guard let name = key.stringValue else { continue }
            if case .torchTensor(let tensor) = value {
                tensors.append((name, tensor))
            } else {
                skipped.append(name)
            }
        }
        guard !tensors.isEmpty else { return false }
        if !skipped.isEmpty { notes.append("ignored \(counted(skipped.count, "non-tensor value")) (\(listFew(skipped)))") }
        return true
    }

    /// Places each tensor in the mapped file, given where each storage's bytes are.
    /// Checks every tensor's strided extent against its storage, so reading can never leave the file.
    func mappedTensors(storageBytes: (TorchStorageReference) throws -> Range<Int>) throws -> [ParsedTensor] {
        try tensors.map { key, tensor in
            let storage = tensor.storage
            let region = try storageBytes(storage)
            let viewBytes = checkedMultiply(storage.viewOffset, storage.dtype.byteSize)
            let offsetBytes = checkedMultiply(tensor.storageOffset, tensor.dtype.byteSize)
            let span = byteSpan(shape: tensor.shape, strides: tensor.strides, elementSize: tensor.dtype.byteSize)
            guard let viewBytes, let offsetBytes, let span, let start = checkedAdd(viewBytes, offsetBytes),
                  let end = checkedAdd(start, span), end <= region.count,
                  // zero strides (expanded views) could otherwise claim any size from one stored element
                  let count = checkedElementCount(tensor.shape), count <= region.count / tensor.dtype.byteSize else {
                throw WeightFileProblem.malformed(
                    "tensor \(key) (shape \(tensor.shape), strides \(tensor.strides), offset \(tensor.storageOffset)) "
                    + "reaches past the \(region.count) bytes of storage \(storage.key)")
            }
            return ParsedTensor(key: key, dtype: tensor.dtype, shape: tensor.shape,
                                location: .mapped(byteOffset: region.lowerBound + start, strides: tensor.strides))
        }
    }
}
