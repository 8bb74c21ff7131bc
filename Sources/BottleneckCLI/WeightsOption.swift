import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

/// `--weights`, shared by every command that runs the network.
struct WeightsOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("""
        Pretrained weights: a torchvision .pth (legacy or zip), .safetensors or bottleneck .h5 file; or \
        'random' / 'random:SEED' for torchvision's initialisation. Default: vgg16-397923af.pth from \
        $TORCH_HOME/hub/checkpoints or ~/.cache/torch/hub/checkpoints, else random weights with a warning.
        """, valueName: "FILE|random"))
    var weights: String?

    /// The choice, after warning loudly when random weights stand in for missing pretrained ones
    /// that the command would use (`extract --layer input` uses none).
    func resolved(usingWeights: Bool = true) -> WeightsChoice {
        let (choice, fellBack) = WeightsChoice.resolve(weights)
        if fellBack && usingWeights { printErr(WeightsChoice.randomFallbackWarning()) }
        return choice
    }
}

/// A command's failure: one line on stderr, exit status 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
