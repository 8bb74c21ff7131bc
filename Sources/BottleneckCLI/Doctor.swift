import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print one line per fact: libraries, CPU, the BLAS kernel in use and its speed, the weights found.",
        discussion: """
        The OpenBLAS that Debian ships does not recognise every CPU and then runs its slow Prescott kernel. \
        bottleneck restarts itself once with OPENBLAS_CORETYPE set for an AVX-512 or AVX2 CPU, unless you \
        set that variable yourself; the 'openblas core' line says which kernel runs and who chose it.
        """)

    func run() throws {
        print("bottleneck: \(BottleneckVersion.current)")
        print("openblas: \(BLASRuntime.configuration)")
        print("openblas core: \(BLASRuntime.coreName) (\(BLASRuntime.selectionNote))")
        print("openblas threads: \(BLASRuntime.threads)")
        print("features independent of the batch: " + (BLASRuntime.keepsFeaturesBatchInvariant
            ? "yes (an incremental cache has the bytes of a fresh one)"
            : "no, to about 2e-6 relative on this kernel (an incremental cache equals a fresh one to that)"))
        print(String(format: "sgemm 1024x1024x1024: %.0f GFLOP/s", GemmProbe.measureGigaflops()))
        print("cpu: \(CPUInfo.modelName), \(availableCores) cores")
        print("cpu simd: \(CPUInfo.simdSummary)")
        print("hdf5: \(LibraryVersions.hdf5)")
        print("libjpeg: \(LibraryVersions.libjpeg)")
        print("libpng: \(LibraryVersions.libpng)")
        print(Self.weightsLine(environment: ProcessInfo.processInfo.environment))
    }

    /// Where the pretrained weights are, or how to get them.
    static func weightsLine(environment: [String: String]) -> String {
        let (choice, fellBack) = WeightsChoice.resolve(nil, environment: environment)
        guard fellBack else { return "weights: \(choice)" }
        return "weights: none found (looked in \(WeightsChoice.torchvisionCandidates(environment: environment).joined(separator: ", ")))"
            + "; commands would use random weights. Get torchvision's with: \(WeightsChoice.downloadCommand)"
    }
}
