import BottleneckKernels

/// Element types found in state dicts, named as torch names them (`torch.float16` → `.float16`).
enum WeightDType: String, Sendable, CaseIterable, CustomStringConvertible {
    case float32, float16, bfloat16, float64
    case int64, int32, int16, int8, uint8, uint16, uint32, uint64, bool
    case float8_e4m3fn, float8_e5m2, complex64, complex128

    var byteSize: Int {
        switch self {
        case .int8, .uint8, .bool, .float8_e4m3fn, .float8_e5m2: 1
        case .float16, .bfloat16, .int16, .uint16: 2
        case .float32, .int32, .uint32: 4
        case .float64, .int64, .uint64, .complex64: 8
        case .complex128: 16
        }
    }

    /// Whether `StateDictFile.tensor` can return it (converted to float32 when stored otherwise).
    var isReadableAsFloat32: Bool {
        switch self {
        case .float32, .float16, .bfloat16, .float64: true
        default: false
        }
    }

    package var description: String { rawValue }
}

/// Float32 values of a tensor of `dtype` stored at `byteOffset` of a mapped
/// file with element strides `strides`, converted as they are copied. The
/// source may be unaligned (legacy .pth storages start at any byte). Source
/// pages are released as they are consumed, so loading fc6 (411 MB) never
/// holds both the mapped and the copied values in memory.
func readFloat32(from file: MappedFile, byteOffset: Int, dtype: WeightDType, shape: [Int], strides: [Int]) -> Tensor {
    let base = file.bytes.baseAddress! + byteOffset
    return Tensor(shape: shape) { output in
        guard output.count > 0 else { return }
        if strides == contiguousStrides(shape) || shape.count <= 1 {
            let stride = strides.last ?? 1
            let chunkElements = 1 << 22
            for chunkStart in Swift.stride(from: 0, to: output.count, by: chunkElements) {
                let count = min(chunkElements, output.count - chunkStart)
                let sourceStart = chunkStart * stride * dtype.byteSize
                convertRun(from: base + sourceStart, dtype: dtype, stride: stride, count: count,
                           into: output.baseAddress! + chunkStart)
                let sourceEnd = sourceStart + ((count - 1) * stride + 1) * dtype.byteSize
                file.releasePages((byteOffset + sourceStart)..<(byteOffset + sourceEnd))
            }
            return
        }
        // Walk every index of the outer axes (an odometer) and copy the innermost axis as one strided run.
        let innerCount = shape[shape.count - 1]
        let innerStride = strides[strides.count - 1]
        var outerIndex = [Int](repeating: 0, count: shape.count - 1)
        var written = 0
        while written < output.count {
            var elementOffset = 0
            for axis in 0..<outerIndex.count { elementOffset += outerIndex[axis] * strides[axis] }
            convertRun(from: base + elementOffset * dtype.byteSize, dtype: dtype, stride: innerStride,
                       count: innerCount, into: output.baseAddress! + written)
            written += innerCount
            var axis = outerIndex.count - 1
            while axis >= 0 {
                outerIndex[axis] += 1
                if outerIndex[axis] < shape[axis] { break }
                outerIndex[axis] = 0
                axis -= 1
            }
        }
        let span = byteSpan(shape: shape, strides: strides, elementSize: dtype.byteSize) ?? 0
        file.releasePages(byteOffset..<(byteOffset + span))
    }
}

/// Row-major strides, in elements, of a dense tensor of this shape.
func contiguousStrides(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    for axis in shape.indices.dropLast().reversed() { strides[axis] = strides[axis + 1] * shape[axis + 1] }
    return strides
}

/// `count` elements `stride` elements apart, converted to Float.
private func convertRun(from source: UnsafeRawPointer, dtype: WeightDType, stride: Int, count: Int,
                        into destination: UnsafeMutablePointer<Float>) {
    let step = stride * dtype.byteSize
    switch dtype {
    case .float32:
        if stride == 1 {
            UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: count * 4)
        } else {
            for index in 0..<count { destination[index] = source.loadUnaligned(fromByteOffset: index * step, as: Float.self) }
        }
    case .float16:
        for index in 0..<count {
            destination[index] = floatFromHalfBits(source.loadUnaligned(fromByteOffset: index * step, as: UInt16.self))
        }
    case .bfloat16:
        // bfloat16 is the top half of a float32.
        for index in 0..<count {
            let bits = source.loadUnaligned(fromByteOffset: index * step, as: UInt16.self)
            destination[index] = Float(bitPattern: UInt32(bits) << 16)
        }
    case .float64:
        for index in 0..<count { destination[index] = Float(source.loadUnaligned(fromByteOffset: index * step, as: Double.self)) }
    default:
        preconditionFailure("\(dtype) is not readable as float32; callers check isReadableAsFloat32")
    }
}

/// IEEE half → single, exact for every value (subnormals, infinities, NaN payloads),
/// without relying on a Float16 type some platforms lack.
@inline(__always)
func floatFromHalfBits(_ half: UInt16) -> Float {
    let sign = UInt32(half & 0x8000) << 16
    let exponent = UInt32(half >> 10) & 0x1f
    let mantissa = UInt32(half & 0x3ff)
    switch exponent {
    case 0:
        // Zero or subnormal: mantissa × 2^-24, exactly representable in float32.
        let magnitude = Float(mantissa) * 0x1p-24
        return sign == 0 ? magnitude : -magnitude
    case 0x1f:
        return Float(bitPattern: sign | 0x7f80_0000 | (mantissa << 13))
    default:
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }
}
