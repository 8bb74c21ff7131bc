@testable import Bottleneck
import Foundation

@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// Set once, before libFuzzer starts calling back, and only read afterwards.
nonisolated(unsafe) private var readInput: (UnsafeRawBufferPointer) -> Void = { _ in }

/// libFuzzer's own `main` cannot be used: SwiftPM links every executable with `main` aliased to the module's
/// top-level code. So each target's main.swift hands its reader to this, which runs libFuzzer's driver with the
/// command line (the usual libFuzzer flags and corpus folders).
public func fuzz(_ reader: @escaping (UnsafeRawBufferPointer) -> Void) -> Never {
    readInput = reader
    // The library reads each HDF5 file's structure in a forked child first (Sources/CHDF5Probe): libhdf5's own
    // crashes and gigabyte mallocs end there, and the job reports the file. libFuzzer's malloc hook still runs in
    // that child and would report an out-of-memory and write it as a finding of this run; the child's reports go
    // nowhere instead (stderr to /dev/null, and a working folder with no findings/ for the relative artifact path).
    // libhdf5 loops forever on some damage; the probe's child is killed after this, well inside -timeout.
    HDF5File.structureProbeSeconds = 2
    pthread_atfork(nil, nil) {
        let null = open("/dev/null", O_WRONLY)
        if null >= 0 { dup2(null, STDERR_FILENO) }
        _ = chdir("/")
    }
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        readInput(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    })
}

/// A folder of this process's own for readers that only take a path (libhdf5, mmap, the journal's pread).
public let scratchFolder: String = {
    let folder = NSTemporaryDirectory() + "bottleneck-fuzz-\(getpid())"
    try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    atexit { try? FileManager.default.removeItem(atPath: NSTemporaryDirectory() + "bottleneck-fuzz-\(getpid())") }
    return folder
}()

/// Writes the input to `scratchFolder/name` (replacing the previous input) and returns its path.
public func inputFile(_ bytes: UnsafeRawBufferPointer, named name: String) -> String {
    let path = scratchFolder + "/" + name
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
        fatalError("the fuzz driver cannot write \(path)")
    }
    return path
}

/// The readers' contract (issue 11): a file's contents may only cause a one-line error that names the file.
/// Anything else is a finding, so it stops the run like a crash does. `exampleMayFollow`: pipeline errors are
/// `FILE:LINE: what is wrong` followed by an example of the right form, by design.
public func requireOneLineError(_ error: any Error, naming path: String, exampleMayFollow: Bool = false) {
    let message = String(describing: error)
    let firstLine = message.prefix { $0 != "\n" }
    if !firstLine.contains(path) || (!exampleMayFollow && firstLine.count != message.count) {
        fatalError("the error for \(path) is not one line naming the file: \(message)")
    }
}
