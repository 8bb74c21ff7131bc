import Dispatch

/// Runs `body(i)` for i in 0..<count on all cores. The body writes disjoint parts of
/// buffers it captured as unsafe pointers; callers guarantee that disjointness.
@inline(__always)
func parallelFor(_ count: Int, _ body: (Int) -> Void) {
    if count <= 1 {
        for index in 0..<count { body(index) }
        return
    }
    withoutActuallyEscaping(body) { body in
        let unchecked = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: count) { index in unchecked.value(index) }
    }
}

/// Wraps a value the compiler cannot prove Sendable but which the caller shares safely
/// (unsafe pointers into buffers partitioned between threads).
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
