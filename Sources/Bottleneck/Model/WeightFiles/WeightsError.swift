#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import BottleneckKernels

/// Everything that can be wrong with a weights file, as one line naming the file.
package struct WeightsError: Error, CustomStringConvertible, Sendable {
    package enum Kind: Sendable {
        case missingFile, unreadable, emptyFile, truncated
        /// Not a PyTorch, safetensors or HDF5 weights file at all.
        case unrecognizedFormat
        /// A weights file, but using something this reader does not handle (compressed zip entries,
        /// an unknown pickle opcode, the pre-0.4 tar format, ...).
        case unsupported
        /// Internally inconsistent: offsets that disagree, bad JSON, a pickle that does not add up.
        case malformed
        case missingKey
        case nonFloatTensor
        /// A parameter holds NaN or infinity.
        case nonFinite
        /// The keys or shapes do not match what the model expects.
        case mismatch
        case writeFailed
    }

    package let kind: Kind
    package let path: String
    package let detail: String
    /// What the file is to the command that read or wrote it ("weights file", "model file"): the message's first words.
    let role: String

    package init(_ kind: Kind, path: String, _ detail: String, role: String = "weights file") {
        self.kind = kind
        self.path = path
        self.detail = detail
        self.role = role
    }

    /// A weights file that could not be opened or is not a regular file.
    init(opening error: FileAccessError) {
        self.init(error.code == ENOENT ? .missingFile : .unreadable, path: error.path, error.reason)
    }

    /// The same error for a file that holds a state dict in another role (a trained model).
    package func naming(role: String) -> WeightsError {
        WeightsError(kind, path: path, detail, role: role)
    }

    package var description: String {
        let line = "\(role) \(path): \(detail)"
        return line.contains("\n") ? line.split(whereSeparator: \.isNewline).joined(separator: " ") : line
    }
}

/// A problem found while parsing, before the path is known to the code that finds it;
/// `StateDictFile` turns it into a `WeightsError` naming the file.
struct WeightFileProblem: Error {
    let kind: WeightsError.Kind
    let detail: String

    init(_ kind: WeightsError.Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    static func truncated(_ detail: String) -> WeightFileProblem { WeightFileProblem(.truncated, detail) }
    static func malformed(_ detail: String) -> WeightFileProblem { WeightFileProblem(.malformed, detail) }
    static func unsupported(_ detail: String) -> WeightFileProblem { WeightFileProblem(.unsupported, detail) }
}

/// Runs `body`, attaching `path` to any problem it reports and to HDF5 failures.
func namingFile<Result>(_ path: String, _ body: () throws -> Result) throws(WeightsError) -> Result {
    do {
        return try body()
    } catch let error as WeightsError {
        throw error
    } catch let problem as WeightFileProblem {
        throw WeightsError(problem.kind, path: path, problem.detail)
    } catch let problem as ByteLayoutProblem {
        throw WeightsError(problem.kind == .truncated ? .truncated : .malformed, path: path, problem.detail)
    } catch let error as HDF5Error {
        throw WeightsError(.malformed, path: path, error.description)
    } catch {
        throw WeightsError(.malformed, path: path, "\(error)")
    }
}

/// Runs `body`, calling the file `role` in the weights error it throws: models and checkpoints are read and
/// written as state dicts, and a message about one must not call it a weights file.
func inRole<Result>(_ role: String, _ body: () throws -> Result) throws -> Result {
    do {
        return try body()
    } catch let error as WeightsError {
        throw error.naming(role: role)
    }
}

/// "1 key", "3 keys".
func counted(_ count: Int, _ noun: String) -> String {
    "\(count) \(noun)\(count == 1 ? "" : "s")"
}

/// "a, b, c and 7 more": keeps one-line messages short whatever the count.
func listFew(_ items: [String], limit: Int = 3) -> String {
    let shown = items.prefix(limit).joined(separator: ", ")
    return items.count > limit ? "\(shown) and \(items.count - limit) more" : shown
}
