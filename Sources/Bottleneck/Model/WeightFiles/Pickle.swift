import BottleneckKernels

// Our own pickle machine: no Swift package reads pickles, and both of torch's .pth formats are one; it runs only the
// opcodes torch.save writes and never calls anything, so a hostile .pth cannot run code.

/// A value built by the pickle machine. Containers are reference boxes, as in
/// Python: a list memoized and later appended to is one list, seen the same
/// through the memo and the stack.
enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    /// A LONG1/LONG4 integer wider than 64 bits, little-endian two's complement (torch's magic number).
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple(PickleContainer)
    case list(PickleContainer)
    case dict(PickleDictionary)
    /// A class or function named by GLOBAL/STACK_GLOBAL.
    case global(module: String, name: String)
    /// An instance of something not modelled here (argparse.Namespace, an nn.Module…), by type name.
    case object(typeName: String)
    case torchStorage(TorchStorageReference)
    case torchTensor(TorchTensorReference)
}

final class PickleContainer {
    var items: [PickleValue]
    init(_ items: [PickleValue]) { self.items = items }
}

final class PickleDictionary {
    var items: [(key: PickleValue, value: PickleValue)]
    init(_ items: [(key: PickleValue, value: PickleValue)] = []) { self.items = items }

    /// The value of the last entry with this string key (later SETITEMs win, as in Python).
    subscript(key: String) -> PickleValue? {
        items.last { if case .string(key) = $0.key { true } else { false } }?.value
    }
}

/// What the pickle stream calls out to: persistent ids (torch storages) and REDUCE of a global
/// (OrderedDict, torch's tensor rebuild functions).
protocol PickleInterpreter {
    func persistentLoad(_ id: PickleValue) throws -> PickleValue
    func reduce(_ callable: PickleValue, arguments: [PickleValue]) throws -> PickleValue
}

extension PickleValue {
    /// Short, non-recursive description for messages.
    var typeDescription: String {
        switch self {
        case .none: "None"
        case .bool: "a bool"
        case .int, .bigInt: "an int"
        case .float: "a float"
        case .string: "a string"
        case .bytes: "bytes"
        case .tuple: "a tuple"
        case .list: "a list"
        case .dict: "a dict"
        case .global(let module, let name): "\(module).\(name)"
        case .object(let typeName): "a \(typeName) object"
        case .torchStorage: "a torch storage"
        case .torchTensor: "a tensor"
        }
    }

    var tupleItems: [PickleValue]? {
        if case .tuple(let tuple) = self { return tuple.items }
        return nil
    }

    var intValue: Int? {
        switch self {
        case .int(let value): value
        case .bool(let value): value ? 1 : 0
        default: nil
        }
    }

    var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }
}

/// A pickle virtual machine for the subset torch.save emits (protocols 2–5):
/// containers, ints, floats, strings, GLOBAL + REDUCE/BUILD/NEWOBJ, persistent
/// ids and the memo. It runs no code: globals stay names for the interpreter
/// to recognise. Any other opcode stops it with a message naming the opcode.
struct PickleMachine {
    private var reader: ByteReader
    private let interpreter: PickleInterpreter
    private var stack: [PickleValue] = []
    private var markPositions: [Int] = []
    private var memo: [Int: PickleValue] = [:]
    /// Every container built, so `tearDown` can empty them one by one: a
    /// hostile file nesting a million tuples would otherwise overflow the
    /// stack when Swift releases the chain recursively.
    private var containers: [AnyObject] = []

    init(reader: ByteReader, interpreter: PickleInterpreter) {
        self.reader = reader
        self.interpreter = interpreter
    }

    /// Where the next pickle starts (legacy .pth files are several pickles back to back).
    var position: Int { reader.position }

    /// Runs one pickle to its STOP and gives `body` the result. Everything the
    /// pickle built is released when `body` returns, so `body` copies out what it needs.
    mutating func run<Result>(_ body: (PickleValue) throws -> Result) throws -> Result {
        defer { tearDown() }
        return try body(try runToStop())
    }

    private mutating func tearDown() {
        for container in containers {
            if let sequence = container as? PickleContainer { sequence.items = [] }
            if let dictionary = container as? PickleDictionary { dictionary.items = [] }
        }
        containers = []
        stack = []
        memo = [:]
        markPositions = []
    }

    private mutating func runToStop() throws -> PickleValue {
        while true {
            let opcodePosition = reader.absolutePosition
            let opcode = try reader.readInteger(UInt8.self, "a pickle opcode")
            switch opcode {
            case 0x80: _ = try reader.readInteger(UInt8.self, "PROTO")                       // PROTO
            case 0x95: try reader.skip(8, "FRAME")                                           // FRAME: framing only
            case 0x2e: return try pop(opcodePosition)                                        // STOP '.'
            case 0x28: markPositions.append(stack.count)                                     // MARK '('
            case 0x30: _ = try pop(opcodePosition)                                           // POP '0'
            // POP_MARK '1'. Not `_ = try popMark()`: with that, Swift 6.3.1 -Ounchecked over-released
            // the discarded values (a crash found by fuzzing; -O was fine).
            case 0x31: stack.removeSubrange(try innermostMark(opcodePosition)...)
            case 0x32: stack.append(try top(opcodePosition))                                 // DUP '2'
            case 0x4e: stack.append(.none)                                                   // NONE 'N'
            case 0x88: stack.append(.bool(true))                                             // NEWTRUE
            case 0x89: stack.append(.bool(false))                                            // NEWFALSE
            case 0x4a: stack.append(.int(Int(try reader.readInteger(Int32.self, "BININT"))))    // BININT 'J'
            case 0x4b: stack.append(.int(Int(try reader.readInteger(UInt8.self, "BININT1")))) // BININT1 'K'
            case 0x4d: stack.append(.int(Int(try reader.readInteger(UInt16.self, "BININT2")))) // BININT2 'M'
            case 0x8a: stack.append(try readLong(lengthBytes: 1))                            // LONG1
            case 0x8b: stack.append(try readLong(lengthBytes: 4))                            // LONG4
            case 0x47:                                                                       // BINFLOAT 'G', big-endian
                let bits = UInt64(bigEndian: try reader.read(8, "BINFLOAT").loadUnaligned(as: UInt64.self))
                stack.append(.float(Double(bitPattern: bits)))
            case 0x58: stack.append(.string(try readText(count: reader.readCount(UInt32.self, "BINUNICODE length"))))
            case 0x8c: stack.append(.string(try readText(count: reader.readCount(UInt8.self, "SHORT_BINUNICODE length"))))
            case 0x8d: stack.append(.string(try readText(count: reader.readCount(UInt64.self, "BINUNICODE8 length"))))
            // Python 2 `str` (old checkpoints' keys); torch loads it as UTF-8 text.
            case 0x54: stack.append(.string(try readText(count: reader.readCount(Int32.self, "BINSTRING length"))))
            case 0x55: stack.append(.string(try readText(count: reader.readCount(UInt8.self, "SHORT_BINSTRING length"))))
            case 0x42: stack.append(.bytes(try readBytes(count: reader.readCount(UInt32.self, "BINBYTES length"))))
            case 0x43: stack.append(.bytes(try readBytes(count: reader.readCount(UInt8.self, "SHORT_BINBYTES length"))))
            case 0x8e: stack.append(.bytes(try readBytes(count: reader.readCount(UInt64.self, "BINBYTES8 length"))))
            case 0x29: stack.append(tuple([]))                                               // EMPTY_TUPLE ')'
            case 0x74: stack.append(tuple(try popMark(opcodePosition)))                      // TUPLE 't'
            case 0x85, 0x86, 0x87:                                                           // TUPLE1, TUPLE2, TUPLE3
                stack.append(tuple(try pop(count: Int(opcode) - 0x84, opcodePosition)))
            case 0x5d: stack.append(list([]))                                                // EMPTY_LIST ']'
            case 0x6c: stack.append(list(try popMark(opcodePosition)))                       // LIST 'l'
            case 0x61: try append(try pop(count: 1, opcodePosition), opcodePosition)         // APPEND 'a'
            case 0x65: try append(try popMark(opcodePosition), opcodePosition)               // APPENDS 'e'
            case 0x7d: stack.append(dictionary([]))                                          // EMPTY_DICT '}'
            case 0x64: stack.append(dictionary(try pairs(try popMark(opcodePosition))))      // DICT 'd'
            case 0x73: try setItems(try pop(count: 2, opcodePosition), opcodePosition)       // SETITEM 's'
            case 0x75: try setItems(try popMark(opcodePosition), opcodePosition)             // SETITEMS 'u'
            case 0x63:                                                                       // GLOBAL 'c'
                let module = try readLine("GLOBAL module")
                stack.append(.global(module: module, name: try readLine("GLOBAL name")))
            case 0x93:                                                                       // STACK_GLOBAL
                let parts = try pop(count: 2, opcodePosition)
                guard let module = parts[0].stringValue, let name = parts[1].stringValue else {
                    throw malformed("STACK_GLOBAL needs two strings", at: opcodePosition)
                }
                stack.append(.global(module: module, name: name))
            case 0x52:                                                                       // REDUCE 'R'
                let parts = try pop(count: 2, opcodePosition)
                guard let arguments = parts[1].tupleItems else {
                    throw malformed("REDUCE arguments are \(parts[1].typeDescription), not a tuple", at: opcodePosition)
                }
                stack.append(register(try interpreter.reduce(parts[0], arguments: arguments)))
            case 0x81:                                                                       // NEWOBJ: cls.__new__(cls, *args)
                let parts = try pop(count: 2, opcodePosition)
                stack.append(.object(typeName: parts[0].typeDescription))
            case 0x62: _ = try pop(opcodePosition)                                           // BUILD 'b': state not modelled
            case 0x51: stack.append(register(try interpreter.persistentLoad(try pop(opcodePosition)))) // BINPERSID
            case 0x71: try memoize(at: Int(try reader.readInteger(UInt8.self, "BINPUT")), opcodePosition)
            case 0x72: try memoize(at: try reader.readCount(UInt32.self, "LONG_BINPUT"), opcodePosition)
            case 0x94: try memoize(at: memo.count, opcodePosition)                            // MEMOIZE
            case 0x68: stack.append(try memoValue(Int(try reader.readInteger(UInt8.self, "BINGET")), opcodePosition))
            case 0x6a: stack.append(try memoValue(try reader.readCount(UInt32.self, "LONG_BINGET"), opcodePosition))
            default:
                throw WeightFileProblem.unsupported(
                    "unsupported pickle opcode \(Self.opcodeName(opcode)) at byte \(opcodePosition)")
            }
        }
    }

    private func malformed(_ detail: String, at position: Int) -> WeightFileProblem {
        .malformed("corrupt pickle at byte \(position): \(detail)")
    }

    private mutating func tuple(_ items: [PickleValue]) -> PickleValue { register(.tuple(PickleContainer(items))) }
    private mutating func list(_ items: [PickleValue]) -> PickleValue { register(.list(PickleContainer(items))) }

    private mutating func dictionary(_ items: [(key: PickleValue, value: PickleValue)]) -> PickleValue {
        register(.dict(PickleDictionary(items)))
    }

    /// Records a container for `tearDown`, including the ones the interpreter builds (OrderedDict).
    private mutating func register(_ value: PickleValue) -> PickleValue {
        switch value {
        case .tuple(let container), .list(let container): containers.append(container)
        case .dict(let container): containers.append(container)
        default: break
        }
        return value
    }

    private func top(_ position: Int) throws -> PickleValue {
        guard stack.count > (markPositions.last ?? 0), let value = stack.last else {
            throw malformed("the stack is empty", at: position)
        }
        return value
    }

    private mutating func pop(_ position: Int) throws -> PickleValue {
        try pop(count: 1, position)[0]
    }

    /// The top `count` values, oldest first; never reaches below the innermost mark.
    private mutating func pop(count: Int, _ position: Int) throws -> [PickleValue] {
        guard stack.count - count >= (markPositions.last ?? 0) else {
            throw malformed("the stack holds too few values", at: position)
        }
        let values = Array(stack.suffix(count))
        stack.removeLast(count)
        return values
    }

    /// Pops the innermost mark: where the values pushed since it start.
    private mutating func innermostMark(_ position: Int) throws -> Int {
        guard let mark = markPositions.popLast() else { throw malformed("no MARK to pop to", at: position) }
        return mark
    }

    private mutating func popMark(_ position: Int) throws -> [PickleValue] {
        let mark = try innermostMark(position)
        let values = Array(stack[mark...])
        stack.removeSubrange(mark...)
        return values
    }

    private mutating func memoize(at index: Int, _ position: Int) throws {
        memo[index] = try top(position)
    }

    private func memoValue(_ index: Int, _ position: Int) throws -> PickleValue {
        guard let value = memo[index] else { throw malformed("memo entry \(index) was never stored", at: position) }
        return value
    }

    private mutating func append(_ values: [PickleValue], _ position: Int) throws {
        guard case .list(let container) = try top(position) else {
            throw malformed("APPEND to \(try top(position).typeDescription)", at: position)
        }
        container.items.append(contentsOf: values)
    }

    private mutating func setItems(_ values: [PickleValue], _ position: Int) throws {
        let newPairs = try pairs(values)
        switch try top(position) {
        case .dict(let container):
            container.items.append(contentsOf: newPairs)
        case .object:
            break  // an instance's __setitem__ state, not modelled
        case let other:
            throw malformed("SETITEM on \(other.typeDescription)", at: position)
        }
    }

    private func pairs(_ values: [PickleValue]) throws -> [(key: PickleValue, value: PickleValue)] {
        guard values.count.isMultiple(of: 2) else {
            throw WeightFileProblem.malformed("corrupt pickle: a dict with an odd number of keys and values")
        }
        return stride(from: 0, to: values.count, by: 2).map { (values[$0], values[$0 + 1]) }
    }

    private mutating func readLong(lengthBytes: Int) throws -> PickleValue {
        let count = lengthBytes == 1 ? try reader.readCount(UInt8.self, "LONG1 length")
                                     : try reader.readCount(Int32.self, "LONG4 length")
        let bytes = Array(try reader.read(count, "a LONG integer"))
        guard count <= 8 else { return .bigInt(bytes) }
        guard let last = bytes.last else { return .int(0) }
        // Sign-extend little-endian two's complement.
        var value: UInt64 = last & 0x80 != 0 ? ~0 : 0
        for byte in bytes.reversed() { value = (value << 8) | UInt64(byte) }
        return .int(Int(truncatingIfNeeded: value))
    }

    private mutating func readBytes(count: Int) throws -> [UInt8] {
        Array(try reader.read(count, "a pickled byte string"))
    }

    private mutating func readText(count: Int) throws -> String {
        String(decoding: try reader.read(count, "a pickled string"), as: UTF8.self)
    }

    /// A newline-terminated line (GLOBAL's module and name).
    private mutating func readLine(_ what: String) throws -> String {
        let start = reader.position
        while try reader.readInteger(UInt8.self, what) != 0x0a {}
        return String(decoding: reader.bytes[start..<(reader.position - 1)], as: UTF8.self)
    }

    /// Opcodes named as Python's pickletools names them, for the error message.
    private static func opcodeName(_ opcode: UInt8) -> String {
        let names: [UInt8: String] = [
            0x49: "INT", 0x4c: "LONG", 0x46: "FLOAT", 0x53: "STRING", 0x56: "UNICODE", 0x70: "PUT", 0x67: "GET",
            0x69: "INST", 0x6f: "OBJ", 0x50: "PERSID", 0x8f: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET",
            0x92: "NEWOBJ_EX", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER",
            0x98: "READONLY_BUFFER",
        ]
        let hex = "0x" + String(opcode, radix: 16, uppercase: false)
        return names[opcode].map { "\($0) (\(hex))" } ?? hex
    }
}
