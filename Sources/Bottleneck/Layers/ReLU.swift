/// max(0, x), elementwise.
public enum ReLU {
    /// x [any] -> x [same], in place: activations are the largest buffers, so no copy.
    public static func forward(_ x: inout Tensor) {
        x.data.withUnsafeMutableBufferPointer { values in
            for index in values.indices where values[index] < 0 { values[index] = 0 }
        }
    }
}
