import Foundation

/// Progress and diagnostics go to stderr so that stdout stays the result.
func printErr(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
