import BottleneckKernels

extension Sequence where Element: Hashable {
    /// The first element that equals an earlier one: what a file that must name each thing once (paths, classes,
    /// state-dict keys) is refused for.
    func firstRepeated() -> Element? {
        var seen = Set<Element>()
        return first { !seen.insert($0).inserted }
    }
}
