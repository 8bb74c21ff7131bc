@testable import Bottleneck
import FuzzDriver

// The extraction journal, as `inspect` recovers it when only CACHE.partial exists (what a killed extract leaves).
fuzz { bytes in
    let cachePath = scratchFolder + "/features.h5"
    let journalPath = inputFile(bytes, named: "features.h5.partial")
    do {
        _ = try CacheInspection(path: cachePath).report
    } catch {
        requireOneLineError(error, naming: journalPath)
    }
}
