@testable import Bottleneck
import FuzzDriver

// model.h5 as `predict` and `evaluate` load it: attributes, state dict, then the head built from them.
fuzz { bytes in
    let path = inputFile(bytes, named: "model.h5")
    do {
        let model = try TrainedModel(contentsOf: path)
        _ = try model.head()
    } catch {
        requireOneLineError(error, naming: path)
    }
}
