#if canImport(Glibc)
import Glibc
#endif
import Foundation

public enum ResourceUsage {
    /// Peak resident set size of this process so far, in bytes (getrusage's ru_maxrss is in KiB on Linux).
    public static var peakResidentBytes: Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss * 1024
    }

    /// Monotonic seconds, for throughput figures.
    public static var now: Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) * 1e-9
    }
}

public extension Int {
    /// 1.88 GB-style sizes for summaries.
    var formattedBytes: String {
        let value = Double(self)
        switch value {
        case ..<1_000: return "\(self) B"
        case ..<1_000_000: return String(format: "%.1f kB", value / 1e3)
        case ..<1_000_000_000: return String(format: "%.1f MB", value / 1e6)
        default: return String(format: "%.2f GB", value / 1e9)
        }
    }
}
