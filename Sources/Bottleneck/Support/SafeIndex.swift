extension Array {
    /// The element at `index`, or nil outside the array: for looking at a layer's neighbours at either end.
    subscript(safe index: Int) -> Element? { indices.contains(index) ? self[index] : nil }
}
