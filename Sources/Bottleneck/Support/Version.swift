public enum BottleneckVersion {
    /// Recorded in caches and run directories so that results can be traced to a build.
    public static let current = "0.1.0"
}
