import COpenBLAS

/// C[M,N] = alpha * op(A) * op(B) + beta * C, all row-major, through OpenBLAS.
/// op(A) is [M,K] (A stored [K,M] when transposeA); op(B) is [K,N] (B stored [N,K] when transposeB).
/// Leading dimensions default to packed rows; pass them to work on a block of a larger matrix.
@inline(__always)
package func sgemm(
    transposeA: Bool = false, transposeB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int? = nil,
    b: UnsafePointer<Float>, ldb: Int? = nil,
    beta: Float = 0,
    c: UnsafeMutablePointer<Float>, ldc: Int? = nil
) {
    cblas_sgemm(
        CblasRowMajor,
        transposeA ? CblasTrans : CblasNoTrans,
        transposeB ? CblasTrans : CblasNoTrans,
        Int32(m), Int32(n), Int32(k),
        alpha,
        a, Int32(lda ?? (transposeA ? m : k)),
        b, Int32(ldb ?? (transposeB ? k : n)),
        beta,
        c, Int32(ldc ?? n))
}

/// OpenBLAS's own threading suits one large gemm (the linear layers); convolutions
/// instead run one single-threaded gemm per core on independent tiles, which keeps
/// each tile's im2col buffer in cache and avoids OpenBLAS's spinning threads
/// competing with ours.
package enum BLASThreads {
    package static func withSingleThreadedGemm<Result>(_ body: () throws -> Result) rethrows -> Result {
        let previous = openblas_get_num_threads()
        guard previous > 1 else { return try body() }
        openblas_set_num_threads(1)
        defer { openblas_set_num_threads(previous) }
        return try body()
    }
}

/// How a layer runs one of its gemms: whole, as one OpenBLAS call (which threads itself when large), or
/// cut into blocks of a fixed size spread over `threads` cores, each block a single-threaded OpenBLAS call
/// (inside `BLASThreads.withSingleThreadedGemm`). Blocks suit the thin gemms of a small head, which
/// OpenBLAS's own threads slow down. The blocks depend on the shapes alone, never on `threads`, so a
/// result is the same bits on any number of cores.
package enum GemmSplit: Sendable {
    case whole
    case blocks(threads: Int)

    /// body(range) for consecutive ranges that cover 0..<count: the whole range at once, or ranges of
    /// `blockSize` (the last shorter) shared out over the cores. Each range must write its own part.
    func forEachBlock(of count: Int, blockSize: Int, _ body: (Range<Int>) -> Void) {
        guard case .blocks(let threads) = self, count > blockSize else {
            body(0..<count)
            return
        }
        let blocks = (count + blockSize - 1) / blockSize
        let workers = max(1, min(threads, blocks))
        parallelFor(workers) { worker in
            for block in stride(from: worker, to: blocks, by: workers) {
                body((block * blockSize)..<min((block + 1) * blockSize, count))
            }
        }
    }
}
