/// torchvision's `nn.Dropout(p)`: identity in evaluation; in training each element is
/// zeroed with probability p and the survivors scaled by 1/(1-p).
public struct Dropout: Sendable {
    public let probability: Float

    public init(probability: Float = 0.5) {
        precondition(probability >= 0 && probability < 1, "dropout probability must be in [0, 1)")
        self.probability = probability
    }

    /// x [any] -> x [same]. Evaluation mode: unchanged.
    public func forwardEvaluation(_ x: Tensor) -> Tensor { x }
}
