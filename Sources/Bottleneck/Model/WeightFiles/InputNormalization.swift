/// The per-channel normalisation a network's weights expect of its input, in R, G, B order on the [0, 1] scale
/// (`(x / 255 - mean) / std`): what a weights file implies when it was trained otherwise than torchvision's VGG.
package struct InputNormalization: Sendable, Equatable {
    package let mean: [Float]
    package let std: [Float]
    /// Where it comes from, for `inspect` and logs.
    package let origin: String

    /// "mean [0.482, 0.458, 0.408], std [0.00392, ...]": the values as a user would pass them.
    package var values: String {
        "mean \(mean), std \(std)"
    }
}
