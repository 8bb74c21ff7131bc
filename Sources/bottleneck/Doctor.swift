import ArgumentParser
import Bottleneck

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print one line per fact about the libraries, the CPU and the BLAS kernel in use.")

    func run() throws {
        print("openblas: \(BLASRuntime.configuration)")
        print("openblas core: \(BLASRuntime.coreName) (\(BLASRuntime.selectionNote))")
        print("openblas threads: \(BLASRuntime.threads)")
        print("cpu: \(CPUInfo.modelName)")
        print("cpu simd: \(CPUInfo.simdSummary)")
    }
}
