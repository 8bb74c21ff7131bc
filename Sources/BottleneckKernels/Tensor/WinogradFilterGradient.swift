/// The weight gradient of a 3x3 / stride 1 / padding 1 convolution through the same F(4x4, 3x3) transforms as
/// `Winograd.convolve`. The forward is linear in each transformed filter U = G g Gᵀ:
///
///     Y_t = Aᵀ [ Σ_c U[k,c] ⊙ V_t[c] ] A,   V_t[c] = Bᵀ d_t[c] B
///
/// so for the tiles t of every image, with dY_t the 4x4 output gradient of tile t (zero past the image edge),
///
///     dL/dU[k,c] = Σ_t (A dY_t[k] Aᵀ) ⊙ V_t[c],   dL/dg[k,c] = Gᵀ (dL/dU[k,c]) G.
///
/// The tile sum at each of the 36 positions ξ is a gemm, dU[ξ] [Cout, Cin] += W[ξ] [Cout, T] · V[ξ]ᵀ [T, Cin]:
/// 2.25 multiply-adds per output position and filter pair instead of im2col's 9.
extension Winograd {
    /// x [N, Cin, H, W] (the forward's input), dy [N, Cout, H, W] -> dWeight [Cout, Cin, 3, 3] and dBias [Cout].
    /// The batch's tiles are cut into blocks; each core takes a run of consecutive blocks and, in its own buffers,
    /// transforms V [36, Cin, T] and W [36, Cout, T] = A dY Aᵀ for each block and adds their 36 products into a
    /// dU [36, Cout, Cin] of its own. The cores' dU are then summed in core order and transformed back, so the
    /// result depends on the machine's core count, never on the thread budget. Blocks are the forward's
    /// (`preferredTilesPerBlock`), for the same reasons: measured at full size on 2 cores, conv1_2's gradient took
    /// 98 ms in blocks of 32-64 tiles against 112 in 256 and 135 in 512, conv4_2's 72 ms in 256 against 79 in 32.
    /// `tilesPerBlock` is a parameter only so tests can force many blocks.
    static func filterGradient(input x: Tensor, gradOutput dy: Tensor, weight gradWeight: inout Tensor,
                               bias gradBias: inout Tensor, tilesPerBlock: Int? = nil) {
        let (batch, inChannels, height, width) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let outChannels = dy.shape[1]
        precondition(dy.shape == [batch, outChannels, height, width], "Winograd gradient: input \(x.shape), gradient \(dy.shape)")
        let grid = TileGrid(height: height, width: width)
        let blocking = Blocking(totalTiles: batch * grid.tilesPerImage, inChannels: inChannels, outChannels: outChannels,
                                preferredTilesPerBlock: tilesPerBlock, cores: availableCores)
        let pairs = outChannels * inChannels
        let partialCount = positions * pairs
        var biasSums = [Double](repeating: 0, count: max(1, blocking.workers) * outChannels)
        gradWeight.reshapeKeepingStorage([outChannels, inChannels, 3, 3])
        guard batch * grid.tilesPerImage > 0 else {
            gradWeight.data.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            gradBias = Tensor(zeros: [outChannels])
            return
        }
        x.data.withUnsafeBufferPointer { input in
            dy.data.withUnsafeBufferPointer { gradOut in
                biasSums.withUnsafeMutableBufferPointer { biasSums in
                    gradWeight.data.withUnsafeMutableBufferPointer { gradWeights in
                        WinogradWorkspace.shared.withBuffer(count: blocking.workers * blocking.floatsPerWorker) { workspace in
                            WinogradWorkspace.shared.withBuffer(count: blocking.workers * partialCount) { partials in
                                let shared = (input.baseAddress!, gradOut.baseAddress!, workspace, partials,
                                                                biasSums.baseAddress!)
                                BLASThreads.withSingleThreadedGemm {
                                    parallelFor(blocking.workers) { worker in
                                        let (input, gradOut, workspace, partials, biasSums) = shared
                                        let transformedInput = workspace + worker * blocking.floatsPerWorker
                                        let transformedOutput = transformedInput + positions * blocking.inputPositionStride
                                        let partial = partials + worker * partialCount
                                        for (index, block) in blocking.blocks(of: worker).enumerated() {
                                            let tiles = blocking.tiles(ofBlock: block)
                                            transformInput(input, channels: inChannels, grid: grid, tiles: tiles,
                                                           into: transformedInput, columnStride: blocking.tilesPerBlock,
                                                           positionStride: blocking.inputPositionStride)
                                            transformOutputGradient(gradOut, channels: outChannels, grid: grid, tiles: tiles,
                                                                    into: transformedOutput,
                                                                    columnStride: blocking.tilesPerBlock,
                                                                    positionStride: blocking.productPositionStride)
                                            for position in 0..<positions {
                                                sgemm(transposeB: true, m: outChannels, n: inChannels, k: tiles.count,
                                                      a: transformedOutput + position * blocking.productPositionStride,
                                                      lda: blocking.tilesPerBlock,
                                                      b: transformedInput + position * blocking.inputPositionStride,
                                                      ldb: blocking.tilesPerBlock,
                                                      beta: index == 0 ? 0 : 1, c: partial + position * pairs)
                                            }
                                            addTileSums(transformedOutput + tileSumPosition * blocking.productPositionStride,
                                                        columnStride: blocking.tilesPerBlock, channels: outChannels,
                                                        tiles: tiles.count, into: biasSums + worker * outChannels)
                                        }
                                    }
                                }
                                // Into core 0's, in core order for every element, as each core's blocks are fixed by the core count.
                                parallelForChunks(blocking.workers > 1 ? partialCount : 0) { chunk in
                                    for worker in 1..<blocking.workers {
                                        let partial = partials + worker * partialCount
                                        for index in chunk { partials[index] += partial[index] }
                                    }
                                }
                                transformFilterGradients(partials, outChannels: outChannels, inChannels: inChannels,
                                                         into: gradWeights.baseAddress!)
                            }
                        }
                    }
                }
            }
        }
        gradBias = Tensor(shape: [outChannels]) { biases in
            for channel in 0..<outChannels {
                var sum = 0.0
                for worker in 0..<blocking.workers { sum += biasSums[worker * outChannels + channel] }
                biases[channel] = Float(sum)
            }
        }
    }

    /// Position ξ = 6·1 + 1 of A dY Aᵀ: row 1 of A is all ones, so there W holds the tile's plain sum, the bias's gradient.
    static let tileSumPosition = inputTile + 1

    /// sums[k] += Σ_t W[ξ][k][t] over a block's `tiles` columns, for the bias gradient.
    static func addTileSums(_ row: UnsafePointer<Float>, columnStride: Int, channels: Int, tiles: Int,
                            into sums: UnsafeMutablePointer<Double>) {
        for channel in 0..<channels {
            let values = row + channel * columnStride
            var sum: Float = 0
            for tile in 0..<tiles { sum += values[tile] }
            sums[channel] += Double(sum)
        }
    }

    /// dU [36, Cout, Cin] -> dWeight [Cout, Cin, 3, 3] = Gᵀ dU[k,c] G per filter, in Double like `transformFilters`.
    static func transformFilterGradients(_ transformed: UnsafePointer<Float>, outChannels: Int, inChannels: Int,
                                         into weights: UnsafeMutablePointer<Float>) {
        let pairs = outChannels * inChannels
        filterMatrix.withUnsafeBufferPointer { g in
            let g = g.baseAddress!
            parallelForChunks(pairs, minimumParallelCount: 1024) { chunk in
                withUnsafeTemporaryAllocation(of: Double.self, capacity: 3 * inputTile) { right in
                    for pair in chunk {
                        // right = dU G, [6, 3]
                        for i in 0..<inputTile {
                            for s in 0..<3 {
                                var sum = 0.0
                                for j in 0..<inputTile { sum += Double(transformed[(i * inputTile + j) * pairs + pair]) * g[j * 3 + s] }
                                right[i * 3 + s] = sum
                            }
                        }
                        // dW = Gᵀ right, [3, 3]
                        for r in 0..<3 {
                            for s in 0..<3 {
                                var sum = 0.0
                                for i in 0..<inputTile { sum += g[i * 3 + r] * right[i * 3 + s] }
                                weights[pair * 9 + r * 3 + s] = Float(sum)
                            }
                        }
                    }
                }
            }
        }
    }

    /// dy [N, C, H, W] -> W [36, positionStride ≥ C * columnStride], W[ξ][c * columnStride + t] = (A dY Aᵀ)[ξ] for
    /// the block's tile t and channel c. Tiles hanging over the bottom or right edge read zeros there.
    static func transformOutputGradient(_ gradOut: UnsafePointer<Float>, channels: Int, grid: TileGrid, tiles: Range<Int>,
                                        into transformed: UnsafeMutablePointer<Float>, columnStride: Int,
                                        positionStride: Int) {
        forEachTileGroup(gradOut, channels: channels, grid: grid, tiles: tiles, windowRows: outputTile,
                         windowColumns: lanes * outputTile, margin: 0, into: transformed, columnStride: columnStride) {
            window, rowStride, tileCount, destination in
            transformOutputGradientGroup(window, rowStride: rowStride, tileCount: tileCount, into: destination,
                                         positionStride: positionStride)
        }
    }

    /// window [4, ≥16] (row stride `rowStride`) holding four side-by-side 4x4 gradient tiles -> W[ξ][q] at
    /// transformed + ξ * positionStride for the first `tileCount` tiles q.
    @inline(__always)
    static func transformOutputGradientGroup(_ window: UnsafePointer<Float>, rowStride: Int, tileCount: Int,
                                             into transformed: UnsafeMutablePointer<Float>, positionStride: Int) {
        withUnsafeTemporaryAllocation(of: Lanes.self, capacity: outputTile * inputTile) { rowPass in
            // rowPass[r][j] = Σ_s dY[r][s] A[j][s], lane q holding tile q: the row's 16 values transposed.
            for windowRow in 0..<outputTile {
                let row = window + windowRow * rowStride
                let (column0, column1, column2, column3) = transpose(load(row), load(row + 4), load(row + 8), load(row + 12))
                let r = multiplyByA(column0, column1, column2, column3)
                let base = windowRow * inputTile
                (rowPass[base], rowPass[base + 1], rowPass[base + 2]) = (r.0, r.1, r.2)
                (rowPass[base + 3], rowPass[base + 4], rowPass[base + 5]) = (r.3, r.4, r.5)
            }
            // W[i][j] = Σ_r A[i][r] rowPass[r][j]
            for j in 0..<inputTile {
                let w = multiplyByA(rowPass[j], rowPass[inputTile + j], rowPass[2 * inputTile + j], rowPass[3 * inputTile + j])
                @inline(__always) func emit(_ i: Int, _ value: Lanes) {
                    store(value, to: transformed + (i * inputTile + j) * positionStride, count: tileCount)
                }
                emit(0, w.0); emit(1, w.1); emit(2, w.2); emit(3, w.3); emit(4, w.4); emit(5, w.5)
            }
        }
    }

    /// A · (y0 ... y3), one pass of A dY Aᵀ; A is Aᵀ's transpose, [6, 4].
    @inline(__always)
    static func multiplyByA(_ y0: Lanes, _ y1: Lanes, _ y2: Lanes, _ y3: Lanes)
        -> (Lanes, Lanes, Lanes, Lanes, Lanes, Lanes) {
        let (evenSum, oddSum) = (y0 + y2, y1 + y3)
        let half: Float = 0.5, quarter: Float = 0.25, eighth: Float = 0.125, two: Float = 2, four: Float = 4, eight: Float = 8
        let w3: Lanes = y0 + half * y1 + quarter * y2 + eighth * y3
        let w4: Lanes = y0 - two * y1 + four * y2 - eight * y3
        return (y0, evenSum + oddSum, evenSum - oddSum, w3, w4, y3)
    }
}
