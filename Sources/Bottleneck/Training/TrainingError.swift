import BottleneckKernels

/// Why a training run, an evaluation or a prediction cannot go on, as one line for the user.
struct TrainingError: Error, CustomStringConvertible, Sendable {
    package enum Kind: Sendable {
        /// Settings or data that cannot train a classifier: one class, an empty split, NaN features, a bad flag.
        case invalidInput
        /// The loss or the parameters stopped being finite.
        case diverged
        /// A model used with another backbone, cut, weights or preprocessing than it was trained with.
        case mismatch
        /// A file that is not what it claims (a model.h5 without its metadata).
        case malformed
        /// The run directory cannot be written, or already holds a finished run.
        case runDirectory
    }

    package let kind: Kind
    package let description: String

    package init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}
