/// A dense, contiguous, row-major Float tensor. Nothing more: no strides, no
/// views, no autograd. Layers take and return these; hot loops reach the
/// storage through `withUnsafe(Mutable)BufferPointer`.
package struct Tensor: Sendable, Equatable {
    package var shape: [Int]
    package var data: [Float]

    package init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count,
                     "Tensor shape \(shape) needs \(shape.reduce(1, *)) values, got \(data.count)")
        self.shape = shape
        self.data = data
    }

    package init(zeros shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: 0, count: shape.reduce(1, *))
    }

    /// Allocates without zeroing; `fill` must write every element.
    package init(shape: [Int], unsafeUninitialized fill: (UnsafeMutableBufferPointer<Float>) -> Void) {
        let count = shape.reduce(1, *)
        self.shape = shape
        self.data = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            fill(buffer)
            initialized = count
        }
    }

    package var count: Int { data.count }
    package var rank: Int { shape.count }

    /// Same values, new shape with the same element count (flatten, unflatten).
    package func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, data: data)
    }

    /// Rows `range` along the first axis, as their own tensor.
    package func rows(_ range: Range<Int>) -> Tensor {
        let rowSize = shape.dropFirst().reduce(1, *)
        var newShape = shape
        newShape[0] = range.count
        return Tensor(shape: newShape, data: Array(data[(range.lowerBound * rowSize)..<(range.upperBound * rowSize)]))
    }
}

package extension Tensor {
    /// Largest absolute value; the scale used for relative comparisons.
    var maxAbs: Float {
        data.withUnsafeBufferPointer { values in
            var best: Float = 0
            for value in values { best = max(best, abs(value)) }
            return best
        }
    }

    /// max |self - other| / max |other|: the parity measure of the test suite.
    func relativeDifference(to reference: Tensor) -> Float {
        precondition(shape == reference.shape, "shape \(shape) vs reference \(reference.shape)")
        var worst: Float = 0
        data.withUnsafeBufferPointer { mine in
            reference.data.withUnsafeBufferPointer { theirs in
                for index in 0..<mine.count { worst = max(worst, abs(mine[index] - theirs[index])) }
            }
        }
        let scale = reference.maxAbs
        return scale == 0 ? worst : worst / scale
    }
}

extension Tensor {
    /// Becomes a tensor of `shape` in the storage it has when that is large enough, so a buffer reused
    /// for tensors of several shapes is allocated once. The values are unspecified (what was there, or zeros).
    package mutating func reshapeKeepingStorage(_ newShape: [Int]) {
        guard shape != newShape else { return }
        let count = newShape.reduce(1, *)
        if data.count > count {
            data.removeLast(data.count - count)
        } else {
            data.append(contentsOf: repeatElement(0, count: count - data.count))
        }
        shape = newShape
    }
}
