/// max(0, x), elementwise.
package enum ReLU {
    /// x [any] -> x [same], in place: activations are the largest buffers, so no copy.
    package static func forward(_ x: inout Tensor) {
        let count = x.count
        x.data.withUnsafeMutableBufferPointer { values in
            let values = values.baseAddress!
            parallelForChunks(count) { chunk in
                for index in chunk where values[index] < 0 { values[index] = 0 }
            }
        }
    }

    /// y [any], dy [same] -> dx [same] in dy's storage: dx = dy where y > 0, else 0.
    /// Reads the forward's output, not its input, because the forward ran in place and the input is gone;
    /// y > 0 exactly where x > 0, so the mask is the same (torch's threshold_backward on the result).
    package static func backward(output y: Tensor, gradOutput dy: inout Tensor) {
        precondition(y.shape == dy.shape, "relu backward: output \(y.shape) vs gradient \(dy.shape)")
        y.data.withUnsafeBufferPointer { outputs in
            dy.data.withUnsafeMutableBufferPointer { gradients in
                let (outputs, gradients) = (outputs.baseAddress!, gradients.baseAddress!)
                parallelForChunks(y.count) { chunk in
                    for index in chunk { gradients[index] = outputs[index] > 0 ? gradients[index] : 0 }
                }
            }
        }
    }
}
