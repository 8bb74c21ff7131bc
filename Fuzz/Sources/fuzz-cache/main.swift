@testable import Bottleneck
import FuzzDriver

// A feature cache as `inspect` and `train-head` read it: the reader, a few rows, the inspection report.
fuzz { bytes in
    let path = inputFile(bytes, named: "features.h5")
    do {
        let cache = try FeatureCacheReader(path: path, allowIncomplete: true)
        _ = try cache.readRows(0..<min(cache.count, 8))
        if cache.count > 0 { _ = try cache.readRows(at: [cache.count - 1, 0]) }
        _ = try CacheInspection(path: path).report
    } catch {
        requireOneLineError(error, naming: path)
    }
}
