import BottleneckKernels

/// Everything that stops a feature cache from being written or read, as one line naming the file.
package struct FeatureCacheError: Error, CustomStringConvertible, Sendable {
    package enum Kind: Sendable {
        case missing
        /// Not HDF5, or HDF5 without the cache's schema.
        case notACache
        /// A cache missing a dataset, or with datasets that disagree; a journal with a bad header.
        case damaged
        /// `complete` is 0 and the reader was not asked to accept that.
        case incomplete
        /// Made with other weights, layer, preprocessing, backbone or image root.
        case mismatch
        /// The output folder is missing or read-only, or writing failed (disk full).
        case writeFailed
        /// Another process is extracting into the same cache.
        case busy
        /// The caller handed in rows that do not fit (wrong feature count, a path already cached).
        case invalidInput
    }

    package let kind: Kind
    package let description: String
    /// What is wrong, without the advice to a person at the command line (a pipeline acts on it itself).
    let finding: String

    init(_ kind: Kind, _ description: String, finding: String? = nil) {
        self.kind = kind
        self.description = description
        self.finding = finding ?? description
    }

    static func mismatch(_ path: String, _ differences: [String]) -> FeatureCacheError {
        let finding = "\(path) was made with \(differences.joined(separator: ", "))"
        return FeatureCacheError(.mismatch, finding + "; use --overwrite to start afresh, or another --out", finding: finding)
    }
}

extension FeatureCacheError {
    /// Runs a file operation of the cache, calling its failure the cache's own error of `kind`: a failed write is
    /// `.writeFailed`, a failed read of the journal `.damaged`.
    static func whenFileFails<Result>(_ kind: Kind, _ body: () throws -> Result) throws -> Result {
        do {
            return try body()
        } catch let error as DurableFileError {
            throw FeatureCacheError(kind, error.description)
        }
    }
}
