import Foundation
import BottleneckKernels

/// Hugging Face safetensors: u64 little-endian header length N, N bytes of
/// JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {…}},
/// then the raw little-endian data, offsets relative to its start.
enum SafetensorsFormat {
    private static let dtypes: [String: WeightDType] = [
        "F32": .float32, "F16": .float16, "BF16": .bfloat16, "F64": .float64,
        "I64": .int64, "I32": .int32, "I16": .int16, "I8": .int8,
        "U8": .uint8, "U16": .uint16, "U32": .uint32, "U64": .uint64, "BOOL": .bool,
        "F8_E4M3": .float8_e4m3fn, "F8_E5M2": .float8_e5m2, "C64": .complex64,
    ]
    /// The reference implementation refuses larger headers; so do we, before allocating for one.
    private static let maximumHeaderSize = 100_000_000

    /// A plausible header length followed by a JSON object.
    static func looksLike(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count > 9 else { return false }
        let headerSize = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
        return headerSize >= 2 && headerSize <= UInt64(bytes.count - 8) && bytes[8] == UInt8(ascii: "{")
    }

    static func parse(_ file: MappedFile) throws -> ParsedStateDict {
        var reader = ByteReader(file.bytes)
        let headerSize = try reader.readCount(UInt64.self, "the safetensors header length")
        guard headerSize <= maximumHeaderSize else {
            throw WeightFileProblem.malformed("the safetensors header claims \(headerSize) bytes")
        }
        let headerBytes = try reader.read(headerSize, "the safetensors header")
        let dataStart = reader.absolutePosition
        let dataSize = reader.remaining

        let header: [String: Any]
        do {
            guard let object = try JSONSerialization.jsonObject(with: Data(headerBytes)) as? [String: Any] else {
                throw WeightFileProblem.malformed("the safetensors header is not a JSON object")
            }
            header = object
        } catch let problem as WeightFileProblem {
            throw problem
        } catch {
            throw WeightFileProblem.malformed("the safetensors header is not valid JSON")
        }

        var metadata: [String: String] = [:]
        var tensors: [(begin: Int, end: Int, tensor: ParsedTensor)] = []
        for (key, value) in header {
            if key == "__metadata__" {
                metadata = (value as? [String: Any])?.compactMapValues { $0 as? String } ?? [:]
                continue
            }
            guard let description = value as? [String: Any],
                  let dtypeName = description["dtype"] as? String,
                  let shapeValues = description["shape"] as? [Any],
                  let offsetValues = description["data_offsets"] as? [Any] else {
                throw WeightFileProblem.malformed("tensor \(key) lacks dtype, shape or data_offsets in the safetensors header")
            }
            guard let dtype = dtypes[dtypeName] else {
                throw WeightFileProblem.unsupported("tensor \(key) has dtype \(dtypeName)")
            }
            let shape = shapeValues.compactMap { $0 as? Int }
            let offsets = offsetValues.compactMap { $0 as? Int }
            guard shape.count == shapeValues.count, shape.allSatisfy({ $0 >= 0 }), offsets.count == 2,
                  offsets[0] >= 0, offsets[0] <= offsets[1] else {
                throw WeightFileProblem.malformed("tensor \(key) has an invalid shape or data_offsets")
            }
            guard offsets[1] <= dataSize else {
                throw WeightFileProblem.truncated("tensor \(key) has data_offsets \(offsets) past the end of the data "
                                                  + "(\(dataSize) bytes after the header)")
            }
            let strides = contiguousStrides(shape)
            guard byteSpan(shape: shape, strides: strides, elementSize: dtype.byteSize) == offsets[1] - offsets[0] else {
                throw WeightFileProblem.malformed(
                    "tensor \(key): shape \(shape) of \(dtype) does not fill data_offsets \(offsets)")
            }
            tensors.append((offsets[0], offsets[1], ParsedTensor(key: key, dtype: dtype, shape: shape,
                                                     location: .mapped(byteOffset: dataStart + offsets[0], strides: strides))))
        }
        // JSON objects have no order; the data does. As the reference implementation requires, the tensors
        // tile the data exactly: bytes shared by two tensors, or claimed by none, are a damaged or forged file.
        tensors.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var end = 0
        for (begin, tensorEnd, tensor) in tensors {
            guard begin == end else {
                let found = begin < end ? "bytes an earlier tensor holds (up to \(end)): tensors overlap"
                                        : "after bytes \(end)..<\(begin), which belong to no tensor"
                throw WeightFileProblem.malformed("tensor \(tensor.key) starts at data offset \(begin), \(found)")
            }
            end = tensorEnd
        }
        guard end == dataSize else {
            throw WeightFileProblem.malformed("bytes \(end)..<\(dataSize) after the header belong to no tensor")
        }
        return ParsedStateDict(format: .safetensors, tensors: tensors.map(\.tensor), metadata: metadata)
    }
}
