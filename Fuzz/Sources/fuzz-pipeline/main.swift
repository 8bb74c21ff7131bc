@testable import Bottleneck
import FuzzDriver

// A pipeline file as `run` and `run --check` read it.
fuzz { bytes in
    let path = inputFile(bytes, named: "pipeline.yaml")
    do {
        _ = try Pipeline(contentsOf: path)
    } catch {
        requireOneLineError(error, naming: path, exampleMayFollow: true)
    }
}
