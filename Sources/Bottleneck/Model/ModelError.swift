import BottleneckKernels

/// Errors of building or running a network, each a one-line message for the user.
enum ModelError: Error, CustomStringConvertible, Sendable {
    /// `suggestion`: " (did you mean 'fc7'?)" or "".
    case unknownLayer(String, suggestion: String, known: [String])
    case inputTooSmall(size: Int, layer: String)
    case badInput(String)

    package var description: String {
        switch self {
        case .unknownLayer(let name, let suggestion, let known):
            return "unknown layer '\(name)'\(suggestion); use one of: \(known.joined(separator: ", "))"
        case .inputTooSmall(let size, let layer):
            return "a \(size) px input is too small to reach \(layer): every 2x2 pool halves it (use at least 32 px)"
        case .badInput(let message):
            return message
        }
    }
}
