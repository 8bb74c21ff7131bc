@testable import Bottleneck
import FuzzDriver

// Format detection and every weights reader (.pth zip, legacy .pth pickle, safetensors, HDF5), then each
// tensor a real load would read, up to 4 M elements (larger ones are legitimate, only slow to fuzz).
fuzz { bytes in
    let path = inputFile(bytes, named: "weights")
    do {
        let file = try StateDictFile.open(path: path)
        for entry in file.entries where entry.elementCount <= 1 << 22 {
            _ = try file.tensor(entry.key)
        }
        _ = try file.sha256()
    } catch {
        requireOneLineError(error, naming: path)
    }
}
