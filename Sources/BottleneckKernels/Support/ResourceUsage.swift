#if canImport(Glibc)
import Glibc
#endif
import Foundation

package enum ResourceUsage {
    /// Peak resident set size of this process so far, in bytes (getrusage's ru_maxrss is in KiB on Linux).
    package static var peakResidentBytes: Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss * 1024
    }

    /// Monotonic seconds, for throughput figures.
    package static var now: Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) * 1e-9
    }
}
