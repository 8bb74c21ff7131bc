import Foundation
import BottleneckKernels

/// Which weights a command runs with: `--weights FILE`, `--weights random[:SEED]`, or,
/// with no flag, torchvision's cached download when there is one.
package enum WeightsChoice: Sendable, Equatable, CustomStringConvertible {
    case file(String)
    case random(seed: UInt64)

    static let torchvisionFileName = PretrainedWeights.vgg16.fileName
    static let torchvisionSHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
    static let defaultRandomSeed: UInt64 = 0

    /// Parses the `--weights` value; nil means the flag was not given.
    package static func resolve(_ argument: String?, environment: [String: String] = ProcessInfo.processInfo.environment)
        -> (choice: WeightsChoice, fellBackToRandom: Bool)
    {
        if let argument {
            let lowered = argument.lowercased()
            if lowered == "random" { return (.random(seed: defaultRandomSeed), false) }
            if lowered.hasPrefix("random:"), let seed = UInt64(lowered.dropFirst("random:".count)) {
                return (.random(seed: seed), false)
            }
            return (.file(argument), false)
        }
        if let found = torchvisionCandidates(environment: environment).first(where: FileManager.default.fileExists) {
            return (.file(found), false)
        }
        return (.random(seed: defaultRandomSeed), true)
    }

    /// Where torch.hub keeps downloads: $TORCH_HOME/hub/checkpoints, else
    /// $XDG_CACHE_HOME/torch/hub/checkpoints, else ~/.cache/torch/hub/checkpoints.
    package static func torchvisionCandidates(environment: [String: String]) -> [String] {
        torchHubFolders(environment: environment).map { $0 + "/" + torchvisionFileName }
    }

    /// The folders of `torchvisionCandidates`, first the one torch.hub itself downloads into.
    package static func torchHubFolders(environment: [String: String]) -> [String] {
        var roots: [String] = []
        if let torchHome = environment["TORCH_HOME"], !torchHome.isEmpty { roots.append(torchHome) }
        if let cache = environment["XDG_CACHE_HOME"], !cache.isEmpty { roots.append(cache + "/torch") }
        let home = environment["HOME"] ?? NSHomeDirectory()
        roots.append(home + "/.cache/torch")
        var seen = Set<String>()
        return roots.map { $0 + "/hub/checkpoints" }.filter { seen.insert($0).inserted }
    }

    package var description: String {
        switch self {
        case .file(let path): return path
        case .random(let seed): return "random (torchvision init, seed \(seed))"
        }
    }

    /// The warning printed whenever random weights stand in for pretrained ones by default.
    package static func randomFallbackWarning(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        """
        WARNING: no pretrained weights found; using RANDOM weights (seed \(defaultRandomSeed)). \
        Features from a random network are not ImageNet features. Looked for \
        \(torchvisionCandidates(environment: environment).joined(separator: ", ")); run '\(downloadCommand)' \
        to fetch torchvision's, or pass --weights FILE (torchvision .pth, .safetensors or .h5) or --weights random \
        to silence this.
        """
    }

    /// The command that puts torchvision's file where `resolve` looks first.
    package static let downloadCommand = "bottleneck weights download"
}
