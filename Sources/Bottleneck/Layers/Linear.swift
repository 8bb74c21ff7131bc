/// Fully connected layer, torchvision's `nn.Linear`: y = x · weightᵀ + bias.
public struct Linear: Sendable {
    /// [outFeatures, inFeatures]
    public var weight: Tensor
    /// [outFeatures]
    public var bias: Tensor

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    public init(weight: Tensor, bias: Tensor) {
        precondition(weight.rank == 2 && bias.shape == [weight.shape[0]], "linear needs weight [out, in], bias [out]")
        self.weight = weight
        self.bias = bias
    }

    /// x [N, inFeatures] (any shape whose trailing size is inFeatures per row) -> y [N, outFeatures]
    public func forward(_ x: Tensor) -> Tensor {
        let batch = x.shape[0]
        precondition(x.count == batch * inFeatures, "linear expects [N, \(inFeatures)], got \(x.shape)")
        let (inFeatures, outFeatures) = (self.inFeatures, self.outFeatures)
        return Tensor(shape: [batch, outFeatures]) { out in
            bias.data.withUnsafeBufferPointer { biases in
                for row in 0..<batch {
                    (out.baseAddress! + row * outFeatures).update(from: biases.baseAddress!, count: outFeatures)
                }
            }
            x.data.withUnsafeBufferPointer { input in
                weight.data.withUnsafeBufferPointer { weights in
                    sgemm(transposeB: true, m: batch, n: outFeatures, k: inFeatures,
                          a: input.baseAddress!, b: weights.baseAddress!, beta: 1, c: out.baseAddress!)
                }
            }
        }
    }
}
