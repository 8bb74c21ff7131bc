import BottleneckKernels

package enum BottleneckVersion {
    /// Recorded in caches and run directories so that results can be traced to a build.
    package static let current = "0.1.0"
}
