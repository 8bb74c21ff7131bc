import COpenBLAS
#if canImport(Glibc)
import Glibc
#endif

/// Which OpenBLAS kernel runs, and getting a fast one on CPUs that Debian's
/// OpenBLAS 0.3.21 does not recognise (it silently falls back to Prescott,
/// ~8x slower sgemm on an AVX-512 machine).
package enum BLASRuntime {
    static let coreTypeVariable = "OPENBLAS_CORETYPE"
    static let reexecMarker = "BOTTLENECK_BLAS_REEXEC"

    package static var coreName: String { String(cString: openblas_get_corename()) }
    package static var configuration: String { String(cString: openblas_get_config()) }
    package static var threads: Int { Int(openblas_get_num_threads()) }

    /// The OpenBLAS core this CPU should run, from its SIMD features; nil when
    /// OpenBLAS's own detection is as good as anything we could name.
    static func preferredCoreType(features: Set<String> = CPUInfo.features) -> String? {
        let avx512 = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]
        if avx512.allSatisfy(features.contains) {
            return features.contains("avx512_bf16") ? "Cooperlake" : "SkylakeX"
        }
        if features.contains("avx2") && features.contains("fma") { return "Haswell" }
        return nil
    }

    /// Kernels no faster than SSE3; what OpenBLAS picks for a core it does not know.
    static let slowCores: Set<String> = ["prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai",
                                          "coppermine", "northwood", "banias", "opteron", "opteron_sse3", "barcelona"]

    /// Re-executes this process once with OPENBLAS_CORETYPE set when the loaded
    /// kernel is a slow fallback on a CPU that has a fast one. The variable is
    /// read when libopenblas loads, before `main`, so setting it in-process is
    /// too late. A value the user set is never overridden.
    package static func reexecWithFastKernelIfNeeded() {
        let environment = ProcessInfo.processInfo.environment
        guard environment[coreTypeVariable] == nil, environment[reexecMarker] == nil,
              slowCores.contains(coreName.lowercased()),
              let preferred = preferredCoreType() else { return }
        setenv(coreTypeVariable, preferred, 1)
        setenv(reexecMarker, "1", 1)
        let arguments = CommandLine.arguments
        var cArguments = arguments.map { strdup($0) }
        cArguments.append(nil)
        execv("/proc/self/exe", cArguments)
        // execv only returns on failure: carry on with the slow kernel rather than stop.
        unsetenv(coreTypeVariable)
        unsetenv(reexecMarker)
    }

    /// Whether the running kernel gives an image's features the same bits in any batch: measured for OpenBLAS
    /// 0.3.21's AVX-512 sgemm kernels with the Winograd blocks cut at whole groups of tiles. Haswell's (AVX2)
    /// sums the first and last 8 columns of every gemm in another order, so there an image's features move
    /// by about 2e-6 with its batch-mates, and an incremental cache equals a fresh one only to that.
    package static var keepsFeaturesBatchInvariant: Bool {
        ["cooperlake", "skylakex", "sapphirerapids"].contains(coreName.lowercased())
    }

    /// How the kernel was chosen, for `doctor`.
    package static var selectionNote: String {
        let environment = ProcessInfo.processInfo.environment
        guard let value = environment[coreTypeVariable] else { return "chosen by OpenBLAS" }
        return environment[reexecMarker] != nil
            ? "\(coreTypeVariable)=\(value) set by bottleneck for this CPU"
            : "\(coreTypeVariable)=\(value) set by the user"
    }
}

import Foundation

/// CPU facts read from /proc/cpuinfo (Linux).
package enum CPUInfo {
    package static let features: Set<String> = Set((firstProcessor["flags"] ?? "").split(separator: " ").map(String.init))

    package static let modelName: String = firstProcessor["model name"] ?? "unknown"

    /// The fields of the first processor's entry ("flags", "model name", ...), read once.
    private static let firstProcessor: [String: String] = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return [:] }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            guard !line.isEmpty else { break }
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            fields[key] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return fields
    }()

    /// The SIMD extensions that matter for the kernels, in a stable order.
    package static var simdSummary: String {
        let interesting = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                           "avx512_bf16", "amx_tile", "amx_bf16"]
        return interesting.filter(features.contains).joined(separator: " ")
    }
}
