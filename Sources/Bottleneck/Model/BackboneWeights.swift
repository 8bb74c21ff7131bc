/// The VGG16 weights the frozen network runs with.
public enum BackboneWeights: Sendable, Equatable {
    /// torchvision's `vgg16-397923af.pth` where torch.hub keeps it (`$TORCH_HOME/hub/checkpoints`, else
    /// `~/.cache/torch/hub/checkpoints`); when it is not there, seeded random weights, and the log says so loudly.
    case torchvisionCache
    /// A torchvision `.pth` (legacy or zip), a `.safetensors` or a bottleneck `.h5` state dict, or Keras's VGG `.h5`.
    case file(String)
    /// torchvision's initialisation from this seed: for trying the tool out, never for real features.
    case random(seed: UInt64)

    /// The weights to load, after warning through `log` when random ones stand in for missing pretrained ones.
    func resolved(log: (String) -> Void) -> WeightsChoice {
        switch self {
        case .torchvisionCache:
            let (choice, fellBack) = WeightsChoice.resolve(nil)
            if fellBack { log(WeightsChoice.randomFallbackWarning()) }
            return choice
        case .file(let path): return .file(path)
        case .random(let seed): return .random(seed: seed)
        }
    }
}
