import Foundation

/// Runs `executable` with `arguments` and this process's environment plus `environment`, and returns its exit status
/// and its stdout and stderr together. The output goes through a file in `logFolder`, not a pipe: a full pipe would
/// block a chatty child and look like a hang. Past `timeout` seconds the child gets SIGTERM (mpirun and srun pass it
/// on to their ranks) and the status is -1.
func runChild(_ executable: String, _ arguments: [String], environment: [String: String] = [:], in directory: URL? = nil,
              timeout: TimeInterval, logFolder: String) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.currentDirectoryURL = directory
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let log = "\(logFolder)/child-\(UUID().uuidString).log"
    guard FileManager.default.createFile(atPath: log, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    defer { try? handle.close() }
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    let giveUp = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < giveUp { usleep(50_000) }
    let timedOut = process.isRunning
    if timedOut { process.terminate() }
    process.waitUntilExit()
    let output = try String(contentsOfFile: log, encoding: .utf8)
    let commandLine = ([executable] + arguments).joined(separator: " ")
    return timedOut ? (-1, "timed out after \(Int(timeout)) s: \(commandLine)\n\(output)") : (process.terminationStatus, output)
}

/// A test's own failure with its reason, thrown where the test cannot go on (a service it needs did not start).
struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
