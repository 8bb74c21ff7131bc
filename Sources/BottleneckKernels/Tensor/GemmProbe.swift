/// A short sgemm measurement for `doctor`: tells at a glance whether the fast kernel runs.
package enum GemmProbe {
    package static func measureGigaflops(size: Int = 1024, repetitions: Int = 4) -> Double {
        let a = [Float](repeating: 0.5, count: size * size)
        let b = [Float](repeating: 0.25, count: size * size)
        var c = [Float](repeating: 0, count: size * size)
        var best = Double.infinity
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                c.withUnsafeMutableBufferPointer { c in
                    for _ in 0...repetitions {
                        let start = ContinuousClock.now
                        sgemm(m: size, n: size, k: size, a: a.baseAddress!, b: b.baseAddress!, c: c.baseAddress!)
                        best = min(best, start.secondsElapsed)
                    }
                }
            }
        }
        return 2 * Double(size * size * size) / best / 1e9
    }
}
