import Foundation
import BottleneckKernels

package extension Int {
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
