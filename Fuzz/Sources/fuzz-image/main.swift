@testable import Bottleneck
import FuzzDriver

// JPEG and PNG, through the same in-memory entry the extractor's decoding goes through. The pixel limit is
// lowered from Pillow's 179 Mpx so a valid but huge header costs milliseconds, not a 0.5 GB decode per input.
fuzz { bytes in
    do {
        _ = try ImageDecoder.decode(bytes: bytes, name: "input", pixelLimit: 1 << 22)
    } catch {
        requireOneLineError(error, naming: "input")
    }
}
