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
}

extension ContinuousClock.Instant {
    /// Seconds from this instant until now, as the Double that throughput figures and logs divide by.
    package var secondsElapsed: Double {
        let elapsed = duration(to: .now).components
        return Double(elapsed.seconds) + Double(elapsed.attoseconds) * 1e-18
    }
}
