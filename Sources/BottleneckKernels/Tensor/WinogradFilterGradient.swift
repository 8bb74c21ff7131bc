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
    /// How the weight gradient shares its work between the cores.
    enum FilterGradientSplit {
        /// Each core takes a run of blocks of tiles (`tilesPerBlock`, nil: the forward's `preferredTilesPerBlock`),
        /// transforms them and adds their 36 products into a dU of its own; the cores' dU are summed at the end. The
        /// forward's blocks for the same reasons: measured at full size on 2 cores, conv1_2's gradient took 98 ms in
        /// blocks of 32-64 tiles against 112 in 256 and 135 in 512.
        case tiles(tilesPerBlock: Int?)
        /// The cores transform the whole batch's tiles into shared buffers, then each takes whole positions: the gemm
        /// of position ξ runs over every tile straight into dU[ξ], with no per-core dU to sum.
        case positions
    }

    /// Largest whole-batch transforms (V and W, all tiles) the `.positions` split holds at once. conv4 and conv5 at
    /// 224 px and batch 8 need 43-58 MB; conv1-conv3 need 115-460 MB, and split by tiles instead.
    static let largestWholeBatchTransformBytes = 64 << 20

    /// `.positions` where the whole batch's transforms fit in `largestWholeBatchTransformBytes`, else `.tiles`. Split by
    /// tiles, a 512-channel layer's per-core dU is 38 MB to write, read and sum for the few blocks conv4 and conv5 have,
    /// on every core: 600 MB on 16. Split by positions it is written once, whatever the core count. (On 2 cores the two
    /// measured alike: a fine-tuning step within 1%, alternating runs.)
    static func preferredFilterGradientSplit(inChannels: Int, outChannels: Int, totalTiles: Int) -> FilterGradientSplit {
        let bytes = positions * (inChannels + outChannels) * roundedUpToGroups(totalTiles) * MemoryLayout<Float>.size
        return bytes <= largestWholeBatchTransformBytes ? .positions : .tiles(tilesPerBlock: nil)
    }

    /// x [N, Cin, H, W] (the forward's input), dy [N, Cout, H, W] -> dWeight [Cout, Cin, 3, 3] and dBias [Cout], the
    /// cores sharing the work by `split` (nil: `preferredFilterGradientSplit`). Either way the sums' order depends on
    /// the shapes and the machine's core count alone, never on the thread budget. `split` is a parameter only so
    /// tests can run both.
    static func filterGradient(input x: Tensor, gradOutput dy: Tensor, weight gradWeight: inout Tensor,
                               bias gradBias: inout Tensor, split: FilterGradientSplit? = nil) {
        let (batch, inChannels, height, width) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let outChannels = dy.shape[1]
        precondition(dy.shape == [batch, outChannels, height, width], "Winograd gradient: input \(x.shape), gradient \(dy.shape)")
        let grid = TileGrid(height: height, width: width)
        let totalTiles = batch * grid.tilesPerImage
        gradWeight.reshapeKeepingStorage([outChannels, inChannels, 3, 3])
        var biasSums = [Double](repeating: 0, count: outChannels)
        if totalTiles == 0 {
            gradWeight.data.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        } else {
            x.data.withUnsafeBufferPointer { input in
                dy.data.withUnsafeBufferPointer { gradOut in
                    biasSums.withUnsafeMutableBufferPointer { biasSums in
                        gradWeight.data.withUnsafeMutableBufferPointer { gradWeights in
                            let layer = FilterGradientLayer(input: input.baseAddress!, gradOut: gradOut.baseAddress!,
                                                            inChannels: inChannels, outChannels: outChannels, grid: grid,
                                                            totalTiles: totalTiles)
                            switch split ?? preferredFilterGradientSplit(inChannels: inChannels, outChannels: outChannels,
                                                                         totalTiles: totalTiles) {
                            case .tiles(let tilesPerBlock):
                                filterGradientByTiles(layer, tilesPerBlock: tilesPerBlock, into: gradWeights.baseAddress!,
                                                      biasSums: biasSums.baseAddress!)
                            case .positions:
                                filterGradientByPositions(layer, into: gradWeights.baseAddress!, biasSums: biasSums.baseAddress!)
                            }
                        }
                    }
                }
            }
        }
        gradBias = Tensor(shape: [outChannels]) { biases in
            for channel in 0..<outChannels { biases[channel] = Float(biasSums[channel]) }
        }
    }

    /// What both splits read: the layer's input and output gradient, their shapes and tiles.
    struct FilterGradientLayer: @unchecked Sendable {
        let input: UnsafePointer<Float>
        let gradOut: UnsafePointer<Float>
        let inChannels: Int
        let outChannels: Int
        let grid: TileGrid
        let totalTiles: Int
        var pairs: Int { inChannels * outChannels }
    }

    /// `.tiles`: dU [36, Cout, Cin] -> the core 0's partial, then Gᵀ dU G into `gradWeights`; the bias sums into
    /// `biasSums` [Cout], added core by core.
    private static func filterGradientByTiles(_ layer: FilterGradientLayer, tilesPerBlock: Int?,
                                              into gradWeights: UnsafeMutablePointer<Float>,
                                              biasSums: UnsafeMutablePointer<Double>) {
        let (inChannels, outChannels, grid, pairs) = (layer.inChannels, layer.outChannels, layer.grid, layer.pairs)
        let blocking = Blocking(totalTiles: layer.totalTiles, inChannels: inChannels, outChannels: outChannels,
                                preferredTilesPerBlock: tilesPerBlock, cores: availableCores)
        let partialCount = positions * pairs
        var coreBiasSums = [Double](repeating: 0, count: blocking.workers * outChannels)
        coreBiasSums.withUnsafeMutableBufferPointer { coreBiasSums in
            WinogradWorkspace.shared.withBuffer(count: blocking.workers * blocking.floatsPerWorker) { workspace in
                WinogradWorkspace.shared.withBuffer(count: blocking.workers * partialCount) { partials in
                    let shared = (workspace, partials, coreBiasSums.baseAddress!)
                    BLASThreads.withSingleThreadedGemm {
                        parallelFor(blocking.workers) { worker in
                            let (workspace, partials, coreBiasSums) = shared
                            let transformedInput = workspace + worker * blocking.floatsPerWorker
                            let transformedOutput = transformedInput + positions * blocking.inputPositionStride
                            let partial = partials + worker * partialCount
                            for (index, block) in blocking.blocks(of: worker).enumerated() {
                                let tiles = blocking.tiles(ofBlock: block)
                                transformInput(layer.input, channels: inChannels, grid: grid, tiles: tiles,
                                               into: transformedInput, columnStride: blocking.tilesPerBlock,
                                               positionStride: blocking.inputPositionStride)
                                transformOutputGradient(layer.gradOut, channels: outChannels, grid: grid, tiles: tiles,
                                                        into: transformedOutput, columnStride: blocking.tilesPerBlock,
                                                        positionStride: blocking.productPositionStride)
                                for position in 0..<positions {
                                    sgemm(transposeB: true, m: outChannels, n: inChannels, k: tiles.count,
                                          a: transformedOutput + position * blocking.productPositionStride,
                                          lda: blocking.tilesPerBlock,
                                          b: transformedInput + position * blocking.inputPositionStride,
                                          ldb: blocking.tilesPerBlock, beta: index == 0 ? 0 : 1, c: partial + position * pairs)
                                }
                                addTileSums(transformedOutput + tileSumPosition * blocking.productPositionStride,
                                            columnStride: blocking.tilesPerBlock, channels: outChannels,
                                            tiles: tiles.count, into: coreBiasSums + worker * outChannels)
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
                    transformFilterGradients(partials, outChannels: outChannels, inChannels: inChannels, into: gradWeights)
                }
            }
            for worker in 0..<blocking.workers {
                for channel in 0..<outChannels { biasSums[channel] += coreBiasSums[worker * outChannels + channel] }
            }
        }
    }

    /// `.positions`: V [36, Cin, T] and W [36, Cout, T] of all T tiles, each core transforming a contiguous run of
    /// them; then dU[ξ] = W[ξ] · V[ξ]ᵀ, one position per index of a parallel loop; then Gᵀ dU G into `gradWeights` and
    /// the bias sums (position `tileSumPosition`'s rows) into `biasSums` [Cout].
    private static func filterGradientByPositions(_ layer: FilterGradientLayer, into gradWeights: UnsafeMutablePointer<Float>,
                                                  biasSums: UnsafeMutablePointer<Double>) {
        let (inChannels, outChannels, grid, pairs, totalTiles) = (layer.inChannels, layer.outChannels, layer.grid,
                                                                  layer.pairs, layer.totalTiles)
        let columnStride = roundedUpToGroups(totalTiles)
        let inputStride = Blocking.paddedPositionStride(inChannels * columnStride)
        let outputStride = Blocking.paddedPositionStride(outChannels * columnStride)
        let workers = min(availableCores, (totalTiles + lanes - 1) / lanes)
        WinogradWorkspace.shared.withBuffer(count: positions * (inputStride + outputStride + pairs)) { workspace in
            let (transformedInput, transformedOutput) = (workspace, workspace + positions * inputStride)
            let transformedGradient = transformedOutput + positions * outputStride
            parallelFor(workers) { worker in
                let tiles = (worker * totalTiles / workers)..<((worker + 1) * totalTiles / workers)
                transformInput(layer.input, channels: inChannels, grid: grid, tiles: tiles,
                               into: transformedInput + tiles.lowerBound, columnStride: columnStride, positionStride: inputStride)
                transformOutputGradient(layer.gradOut, channels: outChannels, grid: grid, tiles: tiles,
                                        into: transformedOutput + tiles.lowerBound, columnStride: columnStride,
                                        positionStride: outputStride)
            }
            BLASThreads.withSingleThreadedGemm {
                parallelFor(positions) { position in
                    sgemm(transposeB: true, m: outChannels, n: inChannels, k: totalTiles,
                          a: transformedOutput + position * outputStride, lda: columnStride,
                          b: transformedInput + position * inputStride, ldb: columnStride,
                          c: transformedGradient + position * pairs)
                }
            }
            addTileSums(transformedOutput + tileSumPosition * outputStride, columnStride: columnStride, channels: outChannels,
                        tiles: totalTiles, into: biasSums)
            transformFilterGradients(transformedGradient, outChannels: outChannels, inChannels: inChannels, into: gradWeights)
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
