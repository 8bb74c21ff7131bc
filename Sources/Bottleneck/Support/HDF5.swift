import CHDF5
import CHDF5Probe
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import BottleneckKernels

/// A failed HDF5 call: which operation, on what, and HDF5's own innermost reason, on one line.
struct HDF5Error: Error, CustomStringConvertible, Sendable {
    let operation: String
    package let reason: String

    package var description: String {
        reason.isEmpty ? "HDF5: cannot \(operation)" : "HDF5: cannot \(operation): \(reason)"
    }
}

/// Element types that map one to one onto an HDF5 native type (memory) and a
/// fixed little-endian type (what goes into files, so files look the same
/// whichever machine wrote them).
protocol HDF5Scalar: Sendable {
    static var hdf5MemoryType: hid_t { get }
    static var hdf5FileType: hid_t { get }
}

extension Float: HDF5Scalar {
    static var hdf5MemoryType: hid_t { bn_H5T_NATIVE_FLOAT() }
    static var hdf5FileType: hid_t { bn_H5T_IEEE_F32LE() }
}

extension Double: HDF5Scalar {
    static var hdf5MemoryType: hid_t { bn_H5T_NATIVE_DOUBLE() }
    static var hdf5FileType: hid_t { bn_H5T_IEEE_F64LE() }
}

extension Int32: HDF5Scalar {
    static var hdf5MemoryType: hid_t { bn_H5T_NATIVE_INT32() }
    static var hdf5FileType: hid_t { bn_H5T_STD_I32LE() }
}

extension Int64: HDF5Scalar {
    static var hdf5MemoryType: hid_t { bn_H5T_NATIVE_INT64() }
    static var hdf5FileType: hid_t { bn_H5T_STD_I64LE() }
}

extension UInt64: HDF5Scalar {
    static var hdf5MemoryType: hid_t { bn_H5T_NATIVE_UINT64() }
    static var hdf5FileType: hid_t { bn_H5T_STD_U64LE() }
}

extension UInt8: HDF5Scalar {
    static var hdf5MemoryType: hid_t { bn_H5T_NATIVE_UINT8() }
    static var hdf5FileType: hid_t { bn_H5T_STD_U8LE() }
}

/// What a dataset or attribute stores, as far as a reader needs to know.
enum HDF5ElementKind: Equatable, Sendable {
    case float(bytes: Int)
    case integer(bytes: Int, signed: Bool)
    case string
    case other
}

enum HDF5ObjectKind: Sendable {
    case group, dataset, other
}

/// Which object in which open file: two links that reach the same group give the same identity.
struct HDF5ObjectIdentity: Hashable, Sendable {
    let fileNumber: UInt
    let address: [UInt8]
}

/// How a new dataset is laid out on disk.
enum HDF5Layout: Sendable {
    /// One block, fixed shape: model weights, small tables.
    case contiguous
    /// Chunks of `chunkRows` rows along the first axis, which can grow without limit (rows appended in
    /// batches); `deflateLevel` 1–9 adds shuffle + deflate compression; `checksum` adds HDF5's fletcher32
    /// filter, so a read of a chunk whose bytes changed on disk fails instead of returning them.
    case extendibleRows(chunkRows: Int, deflateLevel: Int? = nil, checksum: Bool = false)
}

/// Runs one HDF5 call and turns a negative result into `HDF5Error`.
/// A thread-safe HDF5 keeps the error stack and its auto-print setting per
/// thread, so printing is switched off on whichever thread makes the call.
@discardableResult
func hdf5Call<Result: BinaryInteger>(_ operation: @autoclosure () -> String, _ call: () -> Result) throws -> Result {
    bn_h5_silence_errors()
    let result = call()
    guard result >= 0 else { throw HDF5Error(operation: operation(), reason: innermostHDF5ErrorMessage()) }
    return result
}

/// Refuses a read of `count` values of `elementSize` bytes that this machine could not hold: a file's
/// dataspace (a chunked dataset never written, an attribute's) can claim far more than the file stores.
private func checkReadable(_ count: Int, elementSize: Int, what: @autoclosure () -> String) throws {
    let (bytes, overflow) = count.multipliedReportingOverflow(by: elementSize)
    guard !overflow, bytes >= 0, bytes <= MemoryEstimate.fileReadLimitBytes else {
        throw HDF5Error(operation: "read \(what())",
                        reason: "it claims \(count) values of \(elementSize) bytes, more than half this machine's memory")
    }
}

/// The text of a C string libhdf5 (or the probe) wrote into `characters`, up to its terminator.
private func decodedCString(_ characters: [CChar]) -> String {
    String(decoding: characters.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Where HDF5's C iteration callbacks put the names they visit (passed as their client data).
private final class StringCollector {
    var strings: [String] = []

    static func from(_ clientData: UnsafeMutableRawPointer) -> StringCollector {
        Unmanaged<StringCollector>.fromOpaque(clientData).takeUnretainedValue()
    }

    var clientData: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
}

/// The deepest entry of the current thread's error stack: the one that says
/// what actually went wrong ("No such file or directory", "object 'x' doesn't exist").
private func innermostHDF5ErrorMessage() -> String {
    let messages = StringCollector()
    withExtendedLifetime(messages) {
        _ = H5Ewalk2(bn_H5E_DEFAULT(), H5E_WALK_DOWNWARD, { _, error, clientData in
            guard let error, let clientData, let description = error.pointee.desc else { return 0 }
            StringCollector.from(clientData).strings.append(String(cString: description))
            return 0
        }, messages.clientData)
    }
    H5Eclear2(bn_H5E_DEFAULT())
    guard let innermost = messages.strings.last else { return "" }
    // sec2 open failures bury errno's text inside a long key=value list.
    if let quoted = innermost.range(of: "error message = '"),
       let end = innermost[quoted.upperBound...].firstIndex(of: "'") {
        return String(innermost[quoted.upperBound..<end])
    }
    return innermost
}

/// Closes a short-lived HDF5 id (type, space, property list, attribute) when it goes out of scope.
private final class ScopedID {
    let id: hid_t
    init(_ id: hid_t) { self.id = id }
    deinit { H5Idec_ref(id) }
}

private func dimensions(_ shape: [Int]) -> [hsize_t] { shape.map { hsize_t($0) } }

private func simpleSpace(_ shape: [Int], maxShape: [hsize_t]? = nil, what: @autoclosure () -> String) throws -> ScopedID {
    var dims = dimensions(shape)
    if shape.isEmpty { return ScopedID(try hdf5Call("create a scalar dataspace for \(what())") { H5Screate(H5S_SCALAR) }) }
    let id: hid_t
    if var maxShape {
        id = try hdf5Call("create a dataspace for \(what())") { H5Screate_simple(Int32(dims.count), &dims, &maxShape) }
    } else {
        id = try hdf5Call("create a dataspace for \(what())") { H5Screate_simple(Int32(dims.count), &dims, nil) }
    }
    return ScopedID(id)
}

/// UTF-8 variable-length strings, h5py's `str` type.
private func variableStringType() throws -> ScopedID {
    let type = ScopedID(try hdf5Call("copy the string type") { H5Tcopy(bn_H5T_C_S1()) })
    try hdf5Call("make a variable-length string type") { H5Tset_size(type.id, bn_H5T_VARIABLE()) }
    try hdf5Call("make a UTF-8 string type") { H5Tset_cset(type.id, H5T_CSET_UTF8) }
    return type
}

private func fixedStringType(cellSize: Int) throws -> ScopedID {
    let type = ScopedID(try hdf5Call("copy the string type") { H5Tcopy(bn_H5T_C_S1()) })
    try hdf5Call("set the string size") { H5Tset_size(type.id, cellSize) }
    try hdf5Call("make a UTF-8 string type") { H5Tset_cset(type.id, H5T_CSET_UTF8) }
    try hdf5Call("make a NUL-padded string type") { H5Tset_strpad(type.id, H5T_STR_NULLPAD) }
    return type
}

private func kindOfType(_ type: hid_t) -> HDF5ElementKind {
    let size = H5Tget_size(type)
    switch H5Tget_class(type) {
    case H5T_FLOAT: return .float(bytes: size)
    case H5T_INTEGER: return .integer(bytes: size, signed: H5Tget_sign(type) == H5T_SGN_2)
    case H5T_STRING: return .string
    default: return .other
    }
}

/// Strings read through a buffer of C string pointers that HDF5 allocated (variable-length) or
/// fixed-size, NUL-padded cells.
private func readStringValues(count: Int, storedType: hid_t, what: String,
                         read: (hid_t, UnsafeMutableRawPointer) -> herr_t) throws -> [String] {
    guard count > 0 else { return [] }
    if H5Tis_variable_str(storedType) > 0 {
        try checkReadable(count, elementSize: MemoryLayout<UnsafeMutablePointer<CChar>?>.size, what: what)
        let memoryType = try variableStringType()
        // h5py stores Python bytes (Keras's `backend`, `keras_version`) as ASCII: HDF5 converts no ASCII to UTF-8.
        try hdf5Call("set the character set of \(what)") { H5Tset_cset(memoryType.id, H5Tget_cset(storedType)) }
        var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
        try hdf5Call("read \(what)") { pointers.withUnsafeMutableBytes { read(memoryType.id, $0.baseAddress!) } }
        let strings = pointers.map { $0.map { String(cString: $0) } ?? "" }
        let space = ScopedID(H5Screate_simple(1, [hsize_t(count)], nil))
        pointers.withUnsafeMutableBytes { _ = bn_vlen_reclaim(memoryType.id, space.id, $0.baseAddress!) }
        return strings
    }
    let cellSize = H5Tget_size(storedType)
    guard cellSize > 0 else { throw HDF5Error(operation: "read \(what)", reason: "its string type has no size") }
    try checkReadable(count, elementSize: cellSize, what: what)
    let memoryType = ScopedID(try hdf5Call("copy the type of \(what)") { H5Tcopy(storedType) })
    var cells = [UInt8](repeating: 0, count: count * cellSize)
    try hdf5Call("read \(what)") { cells.withUnsafeMutableBytes { read(memoryType.id, $0.baseAddress!) } }
    return (0..<count).map { index in
        let cell = cells[(index * cellSize)..<((index + 1) * cellSize)]
        return String(decoding: cell.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// An open HDF5 object: file, group or dataset. The id is released when the
/// Swift object goes away; HDF5 keeps a file open until its last object is
/// released, so a dataset stays usable after its file object is gone.
///
/// @unchecked Sendable: the only state is an immutable id, and Debian's HDF5
/// is built thread-safe (H5_HAVE_THREADSAFE), serialising calls behind its own
/// global lock.
class HDF5Object: @unchecked Sendable {
    let id: hid_t
    /// "file.h5:/group/name", for messages.
    let location: String

    init(id: hid_t, location: String) {
        self.id = id
        self.location = location
    }

    deinit { H5Idec_ref(id) }

    /// What a walk of the file remembers to stop at a link cycle (h5py's `g['loop'] = g`).
    func identity() throws -> HDF5ObjectIdentity {
        var fileNumber: UInt = 0
        var address = [UInt8](repeating: 0, count: 16)
        try hdf5Call("identify \(location)") { bn_object_identity(id, &fileNumber, &address) }
        return HDF5ObjectIdentity(fileNumber: fileNumber, address: address)
    }

    func attributeNames() throws -> [String] {
        let names = StringCollector()
        var index: hsize_t = 0
        _ = try withExtendedLifetime(names) {
            try hdf5Call("list the attributes of \(location)") {
                H5Aiterate2(id, H5_INDEX_NAME, H5_ITER_INC, &index, { _, name, _, clientData in
                    guard let name, let clientData else { return 0 }
                    StringCollector.from(clientData).strings.append(String(cString: name))
                    return 0
                }, names.clientData)
            }
        }
        return names.strings
    }

    /// nil when there is no attribute of that name.
    func attributeKind(_ name: String) throws -> HDF5ElementKind? {
        guard try hasAttribute(name) else { return nil }
        let attribute = try openAttribute(name)
        let type = ScopedID(try hdf5Call("get the type of attribute \(name) of \(location)") { H5Aget_type(attribute.id) })
        return kindOfType(type.id)
    }

    /// A fixed-length UTF-8 string: it is stored in the object header, which the 1.8 file format checksums;
    /// a variable-length one would live in the global heap, which nothing checks (and whose damage crashes
    /// libhdf5 1.10 itself).
    func setAttribute(_ name: String, _ value: String) throws {
        let bytes = Array(value.utf8)
        let type = try fixedStringType(cellSize: max(1, bytes.count))
        let space = try simpleSpace([], what: "attribute \(name)")
        let attribute = try createAttribute(name, type: type.id, space: space.id)
        let cell = bytes.isEmpty ? [0] : bytes
        _ = try cell.withUnsafeBytes { buffer in
            try hdf5Call("write attribute \(name) of \(location)") { H5Awrite(attribute.id, type.id, buffer.baseAddress) }
        }
    }

    func setAttribute<T: HDF5Scalar>(_ name: String, _ value: T) throws {
        let space = try simpleSpace([], what: "attribute \(name)")
        let attribute = try createAttribute(name, type: T.hdf5FileType, space: space.id)
        try withUnsafeBytes(of: value) { bytes in
            _ = try hdf5Call("write attribute \(name) of \(location)") {
                H5Awrite(attribute.id, T.hdf5MemoryType, bytes.baseAddress)
            }
        }
    }

    /// nil when there is no attribute of that name; throws when it is not a single string (HDF5 would write every
    /// string of an array into the one-string buffer).
    func stringAttribute(_ name: String) throws -> String? {
        guard try hasAttribute(name) else { return nil }
        let attribute = try openAttribute(name)
        let space = ScopedID(try hdf5Call("get the shape of attribute \(name)") { H5Aget_space(attribute.id) })
        guard H5Sget_simple_extent_npoints(space.id) == 1 else {
            throw HDF5Error(operation: "read attribute \(name) of \(location)", reason: "it is not a single value")
        }
        let type = ScopedID(try hdf5Call("get the type of attribute \(name) of \(location)") { H5Aget_type(attribute.id) })
        guard H5Tget_class(type.id) == H5T_STRING else {
            throw HDF5Error(operation: "read attribute \(name) of \(location)", reason: "it is not a string")
        }
        return try readStringValues(count: 1, storedType: type.id, what: "attribute \(name) of \(location)") {
            H5Aread(attribute.id, $0, $1)
        }.first
    }

    /// Every string of a string attribute of any shape (h5py's array of fixed-length bytes, Keras's `layer_names`);
    /// nil when there is no attribute of that name, [] when it holds no values, of whatever type (Keras saves an
    /// empty name list as an empty float64 array); throws when it holds values that are not strings.
    func stringsAttribute(_ name: String) throws -> [String]? {
        guard try hasAttribute(name) else { return nil }
        let attribute = try openAttribute(name)
        let space = ScopedID(try hdf5Call("get the shape of attribute \(name) of \(location)") { H5Aget_space(attribute.id) })
        let count = Int(try hdf5Call("count the values of attribute \(name) of \(location)") { H5Sget_simple_extent_npoints(space.id) })
        guard count > 0 else { return [] }
        let type = ScopedID(try hdf5Call("get the type of attribute \(name) of \(location)") { H5Aget_type(attribute.id) })
        guard H5Tget_class(type.id) == H5T_STRING else {
            throw HDF5Error(operation: "read attribute \(name) of \(location)", reason: "it is not a string")
        }
        return try readStringValues(count: count, storedType: type.id, what: "attribute \(name) of \(location)") {
            H5Aread(attribute.id, $0, $1)
        }
    }

    /// nil when there is no attribute of that name; HDF5 converts numeric types as needed.
    package func attribute<T: HDF5Scalar>(_ name: String, as type: T.Type) throws -> T? {
        guard try hasAttribute(name) else { return nil }
        let attribute = try openAttribute(name)
        let space = ScopedID(try hdf5Call("get the shape of attribute \(name)") { H5Aget_space(attribute.id) })
        guard H5Sget_simple_extent_npoints(space.id) == 1 else {
            throw HDF5Error(operation: "read attribute \(name) of \(location)", reason: "it is not a single value")
        }
        return try withUnsafeTemporaryAllocation(of: T.self, capacity: 1) { value in
            try hdf5Call("read attribute \(name) of \(location)") { H5Aread(attribute.id, T.hdf5MemoryType, value.baseAddress!) }
            return value[0]
        }
    }

    private func hasAttribute(_ name: String) throws -> Bool {
        try hdf5Call("look up attribute \(name) of \(location)") { H5Aexists(id, name) } > 0
    }

    private func openAttribute(_ name: String) throws -> ScopedID {
        ScopedID(try hdf5Call("open attribute \(name) of \(location)") { H5Aopen(id, name, bn_H5P_DEFAULT()) })
    }

    /// Replaces an existing attribute: attributes are small and rewritten whole (e.g. `rows_done`).
    private func createAttribute(_ name: String, type: hid_t, space: hid_t) throws -> ScopedID {
        if try hasAttribute(name) {
            try hdf5Call("replace attribute \(name) of \(location)") { H5Adelete(id, name) }
        }
        return ScopedID(try hdf5Call("create attribute \(name) of \(location)") {
            H5Acreate2(id, name, type, space, bn_H5P_DEFAULT(), bn_H5P_DEFAULT())
        })
    }
}

class HDF5Group: HDF5Object, @unchecked Sendable {
    private func childLocation(_ name: String) -> String {
        location.hasSuffix("/") ? location + name : location + "/" + name
    }

    /// Names of the links in this group, in name order.
    func memberNames() throws -> [String] {
        let names = StringCollector()
        _ = try withExtendedLifetime(names) {
            try hdf5Call("list \(location)") {
                bn_visit_link_names(id, { name, clientData in
                    guard let name, let clientData else { return 0 }
                    StringCollector.from(clientData).strings.append(String(cString: name))
                    return 0
                }, names.clientData)
            }
        }
        return names.strings
    }

    /// Whether a direct member of this group has this name.
    package func contains(_ name: String) throws -> Bool {
        try hdf5Call("look up \(childLocation(name))") { H5Lexists(id, name, bn_H5P_DEFAULT()) } > 0
    }

    package func kind(of name: String) throws -> HDF5ObjectKind {
        try refuseLinkOutsideTheFile(name)
        let object = ScopedID(try hdf5Call("open \(childLocation(name))") { H5Oopen(id, name, bn_H5P_DEFAULT()) })
        switch H5Iget_type(object.id) {
        case H5I_GROUP: return .group
        case H5I_DATASET: return .dataset
        default: return .other
        }
    }

    func openGroup(_ name: String) throws -> HDF5Group {
        let location = childLocation(name)
        try refuseLinkOutsideTheFile(name)
        return HDF5Group(id: try hdf5Call("open group \(location)") { H5Gopen2(id, name, bn_H5P_DEFAULT()) },
                         location: location)
    }

    func createGroup(_ name: String) throws -> HDF5Group {
        let location = childLocation(name)
        return HDF5Group(id: try hdf5Call("create group \(location)") {
            H5Gcreate2(id, name, bn_H5P_DEFAULT(), bn_H5P_DEFAULT(), bn_H5P_DEFAULT())
        }, location: location)
    }

    /// Refuses a dataset whose values live outside the file (see `refuseStorageOutsideTheFile`).
    func openDataset(_ name: String) throws -> HDF5Dataset {
        let location = childLocation(name)
        try refuseLinkOutsideTheFile(name)
        let dataset = HDF5Dataset(id: try hdf5Call("open dataset \(location)") { H5Dopen2(id, name, bn_H5P_DEFAULT()) },
                                  location: location)
        try dataset.refuseStorageOutsideTheFile()
        return dataset
    }

    /// Only hard and soft links are followed: an external (or user-defined) link would let what the file
    /// holds change while its own bytes, and so its sha256, stay the same.
    private func refuseLinkOutsideTheFile(_ name: String) throws {
        let type = try hdf5Call("look up the link \(childLocation(name))") { bn_link_type(id, name) }
        guard type == H5L_TYPE_HARD.rawValue || type == H5L_TYPE_SOFT.rawValue else {
            throw HDF5Error(operation: "open \(childLocation(name))",
                            reason: "it is an external link into another file, which bottleneck does not follow")
        }
    }

    /// A numeric dataset. With `.extendibleRows` the first axis of `shape` is the initial row count (often 0).
    func createDataset<T: HDF5Scalar>(_ name: String, of type: T.Type, shape: [Int],
                                             layout: HDF5Layout = .contiguous) throws -> HDF5Dataset {
        try createDataset(name, fileType: T.hdf5FileType, shape: shape, layout: layout)
    }

    /// A dataset holding `strings` as fixed-length, NUL-padded UTF-8 cells as wide as the longest
    /// (h5py: `.asstr()[:]`). Fixed-length cells live in the dataset's own chunks, where a checksum
    /// filter covers them; variable-length strings would live in the global heap, which nothing checks.
    @discardableResult
    func createStringDataset(_ name: String, strings: [String], layout: HDF5Layout = .contiguous) throws -> HDF5Dataset {
        let cellSize = max(1, strings.map(\.utf8.count).max() ?? 0)
        let type = try fixedStringType(cellSize: cellSize)
        let dataset = try createDataset(name, fileType: type.id, shape: [strings.count], layout: layout)
        guard !strings.isEmpty else { return dataset }
        var cells = [UInt8](repeating: 0, count: strings.count * cellSize)
        for (index, string) in strings.enumerated() {
            cells.replaceSubrange((index * cellSize)..<(index * cellSize + string.utf8.count), with: string.utf8)
        }
        try cells.withUnsafeBytes { bytes in
            _ = try hdf5Call("write strings to \(dataset.location)") {
                H5Dwrite(dataset.id, type.id, bn_H5S_ALL(), bn_H5S_ALL(), bn_H5P_DEFAULT(), bytes.baseAddress)
            }
        }
        return dataset
    }

    private func createDataset(_ name: String, fileType: hid_t, shape: [Int], layout: HDF5Layout) throws -> HDF5Dataset {
        let location = childLocation(name)
        let properties = ScopedID(try hdf5Call("create dataset properties for \(location)") {
            H5Pcreate(bn_H5P_DATASET_CREATE())
        })
        var maxShape: [hsize_t]?
        if case .extendibleRows(let chunkRows, let deflateLevel, let checksum) = layout {
            guard !shape.isEmpty, chunkRows > 0 else {
                throw HDF5Error(operation: "create dataset \(location)",
                                reason: "extendible rows need a shape with a first axis and chunkRows > 0")
            }
            maxShape = [bn_H5S_UNLIMITED()] + dimensions(Array(shape.dropFirst()))
            var chunk = [hsize_t(chunkRows)] + dimensions(shape.dropFirst().map { max($0, 1) })
            try hdf5Call("set the chunk shape of \(location)") { H5Pset_chunk(properties.id, Int32(chunk.count), &chunk) }
            if let deflateLevel {
                try hdf5Call("enable shuffle on \(location)") { H5Pset_shuffle(properties.id) }
                try hdf5Call("enable deflate on \(location)") { H5Pset_deflate(properties.id, UInt32(deflateLevel)) }
            }
            // Last in the pipeline: the checksum covers the bytes as stored, compressed or not.
            if checksum { try hdf5Call("enable fletcher32 on \(location)") { H5Pset_fletcher32(properties.id) } }
        }
        let space = try simpleSpace(shape, maxShape: maxShape, what: location)
        return HDF5Dataset(id: try hdf5Call("create dataset \(location)") {
            H5Dcreate2(id, name, fileType, space.id, bn_H5P_DEFAULT(), properties.id, bn_H5P_DEFAULT())
        }, location: location)
    }
}

final class HDF5File: HDF5Group, @unchecked Sendable {
    package enum Mode: Sendable {
        case readOnly, readWrite
        /// Create, replacing any existing file.
        case truncate
        /// Create, failing if the file exists.
        case createNew
    }

    package let path: String

    package init(path: String, mode: Mode) throws {
        let id: hid_t
        // libhdf5 opens with a blocking open(): a FIFO would hang it forever.
        if mode == .readOnly || mode == .readWrite {
            do { try DurableFiles.checkRegularFile(path) } catch { throw HDF5Error(operation: "open \(path)", reason: error.reason) }
            try Self.probeStructure(path)
        }
        switch mode {
        case .readOnly:
            id = try hdf5Call("open \(path)") { H5Fopen(path, bn_H5F_ACC_RDONLY(), bn_H5P_DEFAULT()) }
        case .readWrite:
            id = try hdf5Call("open \(path) for writing") { H5Fopen(path, bn_H5F_ACC_RDWR(), bn_H5P_DEFAULT()) }
        case .truncate, .createNew:
            // HDF5 1.8's file format, not the 1.0 default: its object headers and B-trees carry
            // checksums, so damaged metadata is an error on open rather than wrong values.
            let access = ScopedID(try hdf5Call("create file access properties for \(path)") { H5Pcreate(bn_H5P_FILE_ACCESS()) })
            try hdf5Call("set the file format of \(path)") { H5Pset_libver_bounds(access.id, H5F_LIBVER_V18, H5F_LIBVER_V110) }
            let flags = mode == .truncate ? bn_H5F_ACC_TRUNC() : bn_H5F_ACC_EXCL()
            id = try hdf5Call("create \(path)") { H5Fcreate(path, flags, bn_H5P_DEFAULT(), access.id) }
        }
        self.path = path
        super.init(id: id, location: path + ":/")
    }

    /// libhdf5 1.10 crashes inside itself on some damaged metadata (Fuzz/ found reads from address 0 and
    /// multi-gigabyte mallocs of sizes read from the file): a child process reads the whole structure first,
    /// so such a file ends as an error naming it, not as a dead job; a file the child could not read is not
    /// opened here at all.
    private static func probeStructure(_ path: String) throws {
        var message = [CChar](repeating: 0, count: 512)
        let outcome = bn_probe_hdf5_structure(path, Int32(structureProbeSeconds), &message, message.count)
        let said = decodedCString(message)
        switch outcome {
        case BN_PROBE_REFUSED, BN_PROBE_CRASHED, BN_PROBE_TIMED_OUT:
            throw HDF5Error(operation: "read the structure of \(path)", reason: said)
        default:
            // BN_PROBE_READ; or no process could be started, and the file is read here as it always was.
            return
        }
    }

    /// How long the child may read before the file counts as one libhdf5 loops on (Fuzz/ found such damage):
    /// the walk reads metadata only, milliseconds for a local cache of a million rows, so 20 s leaves room for
    /// a slow network file system. The fuzz targets lower it, so that a looping input costs them seconds.
    nonisolated(unsafe) package static var structureProbeSeconds = 20

    /// Whether `path` starts with HDF5's signature, opened or not: what tells a damaged HDF5 file from another kind of file.
    static func hasSignature(path: String) -> Bool {
        // libhdf5 opens the file blocking: a FIFO would hang it.
        guard (try? DurableFiles.checkRegularFile(path)) != nil else { return false }
        bn_h5_silence_errors()
        return H5Fis_hdf5(path) > 0
    }

    /// Pushes everything written so far to the operating system: what a
    /// resumable writer calls before recording progress.
    func flush() throws {
        try hdf5Call("flush \(path)") { H5Fflush(id, H5F_SCOPE_GLOBAL) }
    }
}

final class HDF5Dataset: HDF5Object, @unchecked Sendable {
    /// The current extent (it grows as rows are appended).
    package func shape() throws -> [Int] {
        let space = ScopedID(try hdf5Call("get the shape of \(location)") { H5Dget_space(id) })
        let rank = try hdf5Call("get the rank of \(location)") { H5Sget_simple_extent_ndims(space.id) }
        var dims = [hsize_t](repeating: 0, count: Int(rank))
        try hdf5Call("get the shape of \(location)") { H5Sget_simple_extent_dims(space.id, &dims, nil) }
        // Checked once here, every product of some of the sizes (a row's, the whole) is safe to compute.
        let shape = dims.compactMap { Int(exactly: $0) }
        guard shape.count == dims.count, checkedElementCount(shape.map { max($0, 1) }) != nil else {
            throw HDF5Error(operation: "get the shape of \(location)", reason: "its shape \(dims) has more values than can be counted")
        }
        return shape
    }

    /// Values kept in an external raw file or mapped from other files (a virtual dataset) could change while
    /// this file does not, and reading them would open files no one named.
    fileprivate func refuseStorageOutsideTheFile() throws {
        let properties = ScopedID(try hdf5Call("get the creation properties of \(location)") { H5Dget_create_plist(id) })
        if H5Pget_layout(properties.id) == H5D_VIRTUAL {
            throw HDF5Error(operation: "open \(location)",
                            reason: "it is a virtual dataset mapping other files, which bottleneck does not read")
        }
        if try hdf5Call("count the external files of \(location)", { H5Pget_external_count(properties.id) }) > 0 {
            throw HDF5Error(operation: "open \(location)",
                            reason: "its values are stored in external files, which bottleneck does not read")
        }
    }

    func elementKind() throws -> HDF5ElementKind {
        let type = ScopedID(try hdf5Call("get the type of \(location)") { H5Dget_type(id) })
        return kindOfType(type.id)
    }

    /// The whole dataset, converted by HDF5 to `T` (float16 or float64 data read as Float, for example).
    package func read<T: HDF5Scalar>(as type: T.Type) throws -> [T] {
        let count = try shape().reduce(1, *)
        try checkReadable(count, elementSize: MemoryLayout<T>.size, what: location)
        try checkStorageFitsTheFile()
        return try [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 {
                try hdf5Call("read \(location)") {
                    H5Dread(id, T.hdf5MemoryType, bn_H5S_ALL(), bn_H5S_ALL(), bn_H5P_DEFAULT(), buffer.baseAddress!)
                }
            }
            initialized = count
        }
    }

    /// Rows `rows` along the first axis, flattened.
    func readRows<T: HDF5Scalar>(_ rows: Range<Int>, as type: T.Type) throws -> [T] {
        let shape = try shape()
        let rowSize = shape.dropFirst().reduce(1, *)
        let selection = try rowSelection(rows, shape: shape)
        let count = rows.count * rowSize
        try checkReadable(count, elementSize: MemoryLayout<T>.size, what: "rows \(rows) of \(location)")
        return try [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 {
                try hdf5Call("read rows \(rows) of \(location)") {
                    H5Dread(id, T.hdf5MemoryType, selection.memory.id, selection.file.id, bn_H5P_DEFAULT(), buffer.baseAddress!)
                }
            }
            initialized = count
        }
    }

    /// Writes the whole dataset; `values` must have as many elements as the dataset.
    package func write<T: HDF5Scalar>(_ values: [T]) throws {
        let count = try shape().reduce(1, *)
        guard values.count == count else {
            throw HDF5Error(operation: "write \(location)", reason: "\(values.count) values for \(count) elements")
        }
        guard count > 0 else { return }
        _ = try values.withUnsafeBufferPointer { buffer in
            try hdf5Call("write \(location)") {
                H5Dwrite(id, T.hdf5MemoryType, bn_H5S_ALL(), bn_H5S_ALL(), bn_H5P_DEFAULT(), buffer.baseAddress!)
            }
        }
    }

    /// Writes whole rows starting at row `firstRow`, growing an extendible
    /// dataset when they reach past its end. `values.count` must be a multiple of the row size.
    func writeRows<T: HDF5Scalar>(_ values: UnsafeBufferPointer<T>, startingAt firstRow: Int) throws {
        let rows = try rowsToWrite(values.count, startingAt: firstRow)
        guard !rows.isEmpty else { return }
        let selection = try rowSelection(rows, shape: try shape())
        try hdf5Call("write rows \(rows) of \(location)") {
            H5Dwrite(id, T.hdf5MemoryType, selection.memory.id, selection.file.id, bn_H5P_DEFAULT(), values.baseAddress!)
        }
    }

    /// Sets the number of rows of an extendible dataset (growing or cutting it).
    func setRowCount(_ rows: Int) throws {
        var newShape = try shape()
        guard !newShape.isEmpty else {
            throw HDF5Error(operation: "resize \(location)", reason: "a scalar dataset has no rows")
        }
        newShape[0] = rows
        var dims = dimensions(newShape)
        try hdf5Call("resize \(location) to \(rows) rows") { H5Dset_extent(id, &dims) }
    }

    /// All strings of a one-dimensional string dataset (variable or fixed length).
    func readStrings() throws -> [String] {
        let type = ScopedID(try hdf5Call("get the type of \(location)") { H5Dget_type(id) })
        guard H5Tget_class(type.id) == H5T_STRING else {
            throw HDF5Error(operation: "read strings from \(location)", reason: "it does not hold strings")
        }
        let count = try shape().reduce(1, *)
        try checkStorageFitsTheFile()
        return try readStringValues(count: count, storedType: type.id, what: location) {
            H5Dread(id, $0, bn_H5S_ALL(), bn_H5S_ALL(), bn_H5P_DEFAULT(), $1)
        }
    }

    /// Refuses a dataset whose chunks claim more bytes than its whole file holds: libhdf5 allocates a damaged
    /// chunk's recorded size (4 GB from a 30 kB file, found by Fuzz/) before it finds the damage.
    private func checkStorageFitsTheFile() throws {
        let file = ScopedID(try hdf5Call("find the file of \(location)") { H5Iget_file_id(id) })
        var fileSize: hsize_t = 0
        try hdf5Call("get the size of the file of \(location)") { H5Fget_filesize(file.id, &fileSize) }
        let stored = H5Dget_storage_size(id)
        guard stored <= fileSize else {
            throw HDF5Error(operation: "read \(location)",
                            reason: "its chunks claim \(stored) bytes, more than the whole file's \(fileSize)")
        }
    }

    /// The rows `count` elements fill from `firstRow`, after growing the dataset to hold them.
    private func rowsToWrite(_ count: Int, startingAt firstRow: Int) throws -> Range<Int> {
        let shape = try shape()
        guard !shape.isEmpty else {
            throw HDF5Error(operation: "write rows of \(location)", reason: "a scalar dataset has no rows")
        }
        let rowSize = shape.dropFirst().reduce(1, *)
        guard rowSize > 0, count % rowSize == 0 else {
            throw HDF5Error(operation: "write rows of \(location)",
                            reason: "\(count) values are not whole rows of \(rowSize)")
        }
        let rows = firstRow..<(firstRow + count / rowSize)
        if rows.upperBound > shape[0] { try setRowCount(rows.upperBound) }
        return rows
    }

    private func rowSelection(_ rows: Range<Int>, shape: [Int]) throws -> (memory: ScopedID, file: ScopedID) {
        guard !shape.isEmpty, rows.lowerBound >= 0, rows.upperBound <= shape[0] else {
            throw HDF5Error(operation: "select rows \(rows) of \(location)",
                            reason: "the dataset has \(shape.first ?? 0) rows")
        }
        var start = [hsize_t(rows.lowerBound)] + [hsize_t](repeating: 0, count: shape.count - 1)
        var count = [hsize_t(rows.count)] + dimensions(Array(shape.dropFirst()))
        let file = ScopedID(try hdf5Call("get the shape of \(location)") { H5Dget_space(id) })
        try hdf5Call("select rows \(rows) of \(location)") {
            H5Sselect_hyperslab(file.id, H5S_SELECT_SET, &start, nil, &count, nil)
        }
        let memory = ScopedID(try hdf5Call("create a dataspace for rows of \(location)") {
            H5Screate_simple(Int32(count.count), &count, nil)
        })
        return (memory, file)
    }
}

// MARK: - Array attributes, storage description, scattered row reads (used by the feature cache)

/// How a dataset is stored, as `h5dump -p` or h5py's `.chunks` / `.compression` describe it.
struct HDF5Storage: Sendable, Equatable {
    struct Filter: Sendable, Equatable {
        /// HDF5's own filter name: "shuffle", "deflate", ...
        package let name: String
        /// The filter's client data: deflate's is its level.
        package let parameters: [UInt32]
    }

    /// nil for contiguous (or compact) data.
    let chunkShape: [Int]?
    /// In pipeline order.
    let filters: [Filter]
}

extension HDF5Object {
    /// A one-dimensional numeric attribute: h5py shows it as a numpy array.
    func setAttribute<T: HDF5Scalar>(_ name: String, values: [T]) throws {
        let space = try simpleSpace([values.count], what: "attribute \(name)")
        let attribute = try createAttribute(name, type: T.hdf5FileType, space: space.id)
        guard !values.isEmpty else { return }
        _ = try values.withUnsafeBytes { bytes in
            try hdf5Call("write attribute \(name) of \(location)") {
                H5Awrite(attribute.id, T.hdf5MemoryType, bytes.baseAddress)
            }
        }
    }

    /// Every value of a numeric attribute of any shape, flattened; nil when there is no attribute of that name.
    func attributeValues<T: HDF5Scalar>(_ name: String, as type: T.Type) throws -> [T]? {
        guard try hasAttribute(name) else { return nil }
        let attribute = try openAttribute(name)
        let space = ScopedID(try hdf5Call("get the shape of attribute \(name)") { H5Aget_space(attribute.id) })
        let count = Int(try hdf5Call("count the values of attribute \(name)") { H5Sget_simple_extent_npoints(space.id) })
        try checkReadable(count, elementSize: MemoryLayout<T>.size, what: "attribute \(name) of \(location)")
        return try [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 {
                try hdf5Call("read attribute \(name) of \(location)") {
                    H5Aread(attribute.id, T.hdf5MemoryType, buffer.baseAddress!)
                }
            }
            initialized = count
        }
    }
}

extension HDF5Dataset {
    func storage() throws -> HDF5Storage {
        let properties = ScopedID(try hdf5Call("get the creation properties of \(location)") { H5Dget_create_plist(id) })
        var chunkShape: [Int]?
        if H5Pget_layout(properties.id) == H5D_CHUNKED {
            var chunk = [hsize_t](repeating: 0, count: Int(H5S_MAX_RANK))
            let rank = try hdf5Call("get the chunk shape of \(location)") {
                H5Pget_chunk(properties.id, Int32(chunk.count), &chunk)
            }
            chunkShape = chunk.prefix(Int(rank)).map { Int($0) }
        }
        let filterCount = try hdf5Call("count the filters of \(location)") { H5Pget_nfilters(properties.id) }
        let filters = try (0..<UInt32(filterCount)).map { index in
            var flags: UInt32 = 0
            var parameterCount = 8
            var parameters = [UInt32](repeating: 0, count: parameterCount)
            var name = [CChar](repeating: 0, count: 64)
            var configuration: UInt32 = 0
            try hdf5Call("read filter \(index) of \(location)") {
                H5Pget_filter2(properties.id, index, &flags, &parameterCount, &parameters, name.count, &name, &configuration)
            }
            return HDF5Storage.Filter(name: decodedCString(name),
                                      parameters: Array(parameters.prefix(min(parameterCount, parameters.count))))
        }
        return HDF5Storage(chunkShape: chunkShape, filters: filters)
    }

    /// The rows of several ranges in one read, one after another in file order (ranges
    /// sorted, not overlapping): HDF5 then visits each chunk once, however the rows are spread.
    func readRows<T: HDF5Scalar>(_ ranges: [Range<Int>], into buffer: UnsafeMutableBufferPointer<T>) throws {
        let shape = try shape()
        let rowSize = shape.dropFirst().reduce(1, *)
        let rowCount = ranges.reduce(0) { $0 + $1.count }
        guard buffer.count == rowCount * rowSize else {
            throw HDF5Error(operation: "read rows of \(location)",
                            reason: "a buffer of \(buffer.count) values for \(rowCount) rows of \(rowSize)")
        }
        guard rowCount > 0 else { return }
        let file = ScopedID(try hdf5Call("get the shape of \(location)") { H5Dget_space(id) })
        var operation = H5S_SELECT_SET
        for rows in ranges where !rows.isEmpty {
            guard rows.lowerBound >= 0, rows.upperBound <= shape[0] else {
                throw HDF5Error(operation: "select rows \(rows) of \(location)", reason: "the dataset has \(shape[0]) rows")
            }
            var start = [hsize_t(rows.lowerBound)] + [hsize_t](repeating: 0, count: shape.count - 1)
            var count = [hsize_t(rows.count)] + dimensions(Array(shape.dropFirst()))
            try hdf5Call("select rows \(rows) of \(location)") {
                H5Sselect_hyperslab(file.id, operation, &start, nil, &count, nil)
            }
            operation = H5S_SELECT_OR
        }
        let memory = try simpleSpace([rowCount] + shape.dropFirst(), what: "rows of \(location)")
        try hdf5Call("read \(rowCount) rows of \(location)") {
            H5Dread(id, T.hdf5MemoryType, memory.id, file.id, bn_H5P_DEFAULT(), buffer.baseAddress!)
        }
    }
}
