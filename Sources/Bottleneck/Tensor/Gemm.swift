import COpenBLAS

/// C[M,N] = alpha * op(A) * op(B) + beta * C, all row-major, through OpenBLAS.
/// op(A) is [M,K] (A stored [K,M] when transposeA); op(B) is [K,N] (B stored [N,K] when transposeB).
@inline(__always)
public func sgemm(
    transposeA: Bool = false, transposeB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    a: UnsafePointer<Float>, b: UnsafePointer<Float>,
    beta: Float = 0,
    c: UnsafeMutablePointer<Float>
) {
    cblas_sgemm(
        CblasRowMajor,
        transposeA ? CblasTrans : CblasNoTrans,
        transposeB ? CblasTrans : CblasNoTrans,
        Int32(m), Int32(n), Int32(k),
        alpha,
        a, Int32(transposeA ? m : k),
        b, Int32(transposeB ? k : n),
        beta,
        c, Int32(n))
}
