import Foundation

/// Winograd minimal filtering F(4x4, 3x3) for 3x3 / stride 1 / padding 1 convolutions
/// (Lavin & Gray 2015, "Fast Algorithms for Convolutional Neural Networks"). Each 4x4 block of
/// outputs ("tile") of output channel k is
///
///     Y = Aᵀ [ Σ_c (G g[k,c] Gᵀ) ⊙ (Bᵀ d[c] B) ] A
///
/// where d[c] is the tile's 6x6 input window of channel c. The channel sum at each of the 36
/// positions ξ of the 6x6 product is a gemm, M[ξ] = U[ξ] · V[ξ]: 36 gemms of 2.25 multiplies per
/// output instead of 9 for direct convolution.
///
/// Interpolation points 0, 1, -1, 1/2, -2 and ∞ rather than Lavin's 0, ±1, ±2: Barabasz, Anderson,
/// Soodhalter & Gregg 2020 ("Error analysis and improving the accuracy of Winograd convolution for
/// deep neural networks") show they lose fewer bits in fp32; measured here 5e-6 against 1.6e-5
/// relative error for a 512-channel layer.
///
///     Aᵀ = [1  1  1  1    1  0]    G = [ 1/2    0     0  ]    Bᵀ = [2 -3 -4  3  2  0]
///          [0  1 -1  1/2 -2  0]        [ 1/6   1/6   1/6 ]         [0 -2  1  5  2  0]
///          [0  1  1  1/4  4  0]        [ 1/6  -1/6   1/6 ]         [0 -2  5 -1 -2  0]
///          [0  1 -1  1/8 -8  1]        [16/15  8/15  4/15]         [0  2  1 -2 -1  0]
///                                      [ 1/30 -1/15  2/15]         [0  1 -2 -1  2  0]
///                                      [ 0     0     1/2 ]         [0  2 -3 -4  3  2]
enum Winograd {
    /// Output tile side (m in F(m, r)) and input window side (m + r - 1).
    static let outputTile = 4
    static let inputTile = 6
    /// Positions of a transformed tile: one gemm each.
    static let positions = inputTile * inputTile

    /// Tiles are transformed four at a time, side by side in a tile row, one per SIMD lane.
    typealias Lanes = SIMD4<Float>
    static let lanes = Lanes.scalarCount
    /// Input columns a group of four tiles reads: 4 * 4 + 2.
    static let groupWindowWidth = lanes * outputTile + 2

    /// Blocking: see `preferredTilesPerBlock`.
    static let cacheBytes = 1 << 20
    static let largestCachedFilterBytes = 128 << 10
    static let tilesForFilterReuse = 256

    /// Tiles reach the gemms in groups of this many: blocks are whole groups, and the last block's gemms
    /// run on whole groups too, their extra columns computed from stale workspace and never read. OpenBLAS's
    /// AVX-512 sgemm (SkylakeX, Cooperlake) then gives a tile's column the same bits wherever it sits in
    /// whichever block, so an image's output depends neither on its batch-mates nor on the batch size nor
    /// on the core count. Its small-matrix kernel (M·N·K ≤ 10⁶) sums a last group of 1-8 columns in
    /// another order: without whole groups, VGG16's fc7 at 224 px moved by 2e-6 relative between batch 1
    /// and 16. (Its AVX2 Haswell kernel gives a gemm's first and last 8 columns other bits even so.)
    static let tileGroup = 16

    /// Tiles per block for a layer. Where one position's filter matrix U[ξ] is small (≤ 128 KB), as
    /// many tiles as keep the block's V and M within `cacheBytes`, about L2, so each pass hands its
    /// result to the next in cache (measured, conv1_2: 164 ms CPU at 32 tiles, 222 at 256). Larger
    /// U[ξ] come from memory and each gemm packs them afresh, which costs as much as the multiply
    /// unless spread over `tilesForFilterReuse` tiles (conv4_2: 56 GFLOP/s per core at 40 tiles, 95 at 256).
    static func preferredTilesPerBlock(inChannels: Int, outChannels: Int) -> Int {
        let floatSize = MemoryLayout<Float>.size
        guard inChannels * outChannels * floatSize <= largestCachedFilterBytes else { return tilesForFilterReuse }
        return max(tileGroup, cacheBytes / (positions * (inChannels + outChannels) * floatSize))
    }

    // MARK: Filter transform

    /// G [6, 3], row-major.
    static let filterMatrix: [Double] = [
        1.0 / 2, 0, 0,
        1.0 / 6, 1.0 / 6, 1.0 / 6,
        1.0 / 6, -1.0 / 6, 1.0 / 6,
        16.0 / 15, 8.0 / 15, 4.0 / 15,
        1.0 / 30, -1.0 / 15, 2.0 / 15,
        0, 0, 1.0 / 2,
    ]

    /// Filters transformed together, one per SIMD lane: consecutive filters of U, so each position's values are
    /// stored as one vector. Double, so the only rounding is the final one to Float.
    typealias FilterLanes = SIMD8<Double>

    /// weight [Cout, Cin, 3, 3] -> U [36, Cout, Cin], U[ξ = 6i + j][k][c] = (G g[k,c] Gᵀ)[i][j]; or, when
    /// `transposingAndFlipping`, the filters of the input gradient's convolution, U [36, Cin, Cout] with
    /// U[ξ][c][k] = (G g'[k,c] Gᵀ)[ξ] for g' the filter turned by 180°. Groups of filters are split between the cores
    /// in contiguous ranges. Vectorised over filters: transformed one at a time, the 36 scattered stores and the
    /// scalar Double arithmetic made the forward of a 512-channel layer at batch 8 spend as long transforming its
    /// filters (about 30 ms on 2 cores) as convolving; fine-tuning transforms every layer's twice a step.
    static func transformFilters(_ weight: Tensor, transposingAndFlipping transposing: Bool = false) -> [Float] {
        precondition(weight.rank == 4 && weight.shape[2] == 3 && weight.shape[3] == 3, "Winograd needs 3x3 filters")
        let (outChannels, inChannels) = (weight.shape[0], weight.shape[1])
        let pairs = outChannels * inChannels
        let width = FilterLanes.scalarCount
        let groups = (pairs + width - 1) / width
        let workers = max(1, min(groups, availableCores))
        return [Float](unsafeUninitializedCapacity: positions * pairs) { transformed, initialized in
            weight.data.withUnsafeBufferPointer { weights in
                filterMatrix.withUnsafeBufferPointer { g in
                    let shared = (weights.baseAddress!, g.baseAddress!, transformed.baseAddress!)
                    parallelFor(workers) { worker in
                        let (weights, g, transformed) = shared
                        withUnsafeTemporaryAllocation(of: FilterLanes.self, capacity: 9) { taps in
                            let taps = taps.baseAddress!
                            taps.initialize(repeating: FilterLanes(), count: 9)
                            for group in (worker * groups / workers)..<((worker + 1) * groups / workers) {
                                let first = group * width
                                let count = min(width, pairs - first)
                                for lane in 0..<count {
                                    if transposing {
                                        // U[ξ] is [Cin, Cout]: filter (c, k) is weight k's c-th, turned.
                                        let (input, output) = (first + lane).quotientAndRemainder(dividingBy: outChannels)
                                        let filter = weights + (output * inChannels + input) * 9
                                        for tap in 0..<9 { taps[tap][lane] = Double(filter[8 - tap]) }
                                    } else {
                                        let filter = weights + (first + lane) * 9
                                        for tap in 0..<9 { taps[tap][lane] = Double(filter[tap]) }
                                    }
                                }
                                transformFilterGroup(taps, g: g, count: count, into: transformed + first, positionStride: pairs)
                            }
                        }
                    }
                }
            }
            initialized = positions * pairs
        }
    }

    /// taps [9] (a 3x3 filter per lane, row-major) -> (G filter Gᵀ)[ξ] at transformed + ξ * positionStride, the first
    /// `count` lanes.
    @inline(__always)
    static func transformFilterGroup(_ taps: UnsafePointer<FilterLanes>, g: UnsafePointer<Double>, count: Int,
                                     into transformed: UnsafeMutablePointer<Float>, positionStride: Int) {
        withUnsafeTemporaryAllocation(of: FilterLanes.self, capacity: inputTile * 3) { left in
            // left = G · filter, [6, 3]
            for i in 0..<inputTile {
                for column in 0..<3 {
                    var sum = FilterLanes()
                    for r in 0..<3 { sum += g[i * 3 + r] * taps[r * 3 + column] }
                    left[i * 3 + column] = sum
                }
            }
            // U = left · Gᵀ, [6, 6]
            for i in 0..<inputTile {
                for j in 0..<inputTile {
                    var sum = FilterLanes()
                    for r in 0..<3 { sum += left[i * 3 + r] * g[j * 3 + r] }
                    let values = SIMD8<Float>(sum)
                    let target = transformed + (i * inputTile + j) * positionStride
                    if count == FilterLanes.scalarCount {
                        UnsafeMutableRawPointer(target).storeBytes(of: values, as: SIMD8<Float>.self)
                    } else {
                        for lane in 0..<count { target[lane] = values[lane] }
                    }
                }
            }
        }
    }

    // MARK: Convolution

    /// x [N, Cin, H, W], filters U [36, Cout, Cin] (from `transformFilters`), bias [Cout]
    /// -> y [N, Cout, H, W], with ReLU applied in the output transform when `fusingReLU`, and each output kept only
    /// where `mask` [N, Cout, H, W], when given, is > 0 (zero elsewhere).
    /// The tiles of the whole batch, numbered image by image and row by row, are cut into blocks;
    /// each core takes a run of consecutive blocks and for each runs, in its own buffers:
    ///   V [36, Cin, T] = Bᵀ d B of the block's T tiles,
    ///   M[ξ] [Cout, T] = U[ξ] · V[ξ] for the 36 positions (single-threaded sgemm),
    ///   y tiles = Aᵀ M A + bias.
    /// `tilesPerBlock` (rounded down to whole groups) is a parameter only so tests can force many small blocks.
    static func convolve(_ x: Tensor, filters: [Float], bias: Tensor, fusingReLU: Bool, mask: UnsafePointer<Float>? = nil,
                         tilesPerBlock: Int? = nil) -> Tensor {
        let (batch, inChannels, height, width) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let outChannels = bias.count
        precondition(filters.count == positions * outChannels * inChannels, "filters do not match the input channels")
        let grid = TileGrid(height: height, width: width)
        guard batch * grid.tilesPerImage > 0 else { return Tensor(zeros: [batch, outChannels, height, width]) }
        let blocking = Blocking(totalTiles: batch * grid.tilesPerImage, inChannels: inChannels, outChannels: outChannels,
                                preferredTilesPerBlock: tilesPerBlock, cores: availableCores)
        return Tensor(shape: [batch, outChannels, height, width]) { out in
            x.data.withUnsafeBufferPointer { input in
                filters.withUnsafeBufferPointer { filters in
                    bias.data.withUnsafeBufferPointer { biases in
                        WinogradWorkspace.shared.withBuffer(count: blocking.workers * blocking.floatsPerWorker) { workspace in
                            let shared = (input.baseAddress!, filters.baseAddress!, biases.baseAddress!,
                                                            workspace, out.baseAddress!)
                            BLASThreads.withSingleThreadedGemm {
                                parallelFor(blocking.workers) { worker in
                                    let (input, filters, biases, workspace, out) = shared
                                    let transformedInput = workspace + worker * blocking.floatsPerWorker
                                    let products = transformedInput + positions * blocking.inputPositionStride
                                    for block in blocking.blocks(of: worker) {
                                        let tiles = blocking.tiles(ofBlock: block)
                                        let columns = roundedUpToGroups(tiles.count)
                                        transformInput(input, channels: inChannels, grid: grid, tiles: tiles,
                                                       into: transformedInput, columnStride: blocking.tilesPerBlock,
                                                       positionStride: blocking.inputPositionStride)
                                        for position in 0..<positions {
                                            sgemm(m: outChannels, n: columns, k: inChannels,
                                                  a: filters + position * outChannels * inChannels,
                                                  b: transformedInput + position * blocking.inputPositionStride,
                                                  ldb: blocking.tilesPerBlock,
                                                  c: products + position * blocking.productPositionStride,
                                                  ldc: blocking.tilesPerBlock)
                                        }
                                        transformOutput(products, columnStride: blocking.tilesPerBlock,
                                                        positionStride: blocking.productPositionStride, biases: biases,
                                                        channels: outChannels, fusingReLU: fusingReLU, mask: mask,
                                                        grid: grid, tiles: tiles, into: out)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// How a batch's tiles are cut into blocks, which blocks each core runs, and the layout of a
    /// core's buffers: V [36, positionStride] and M [36, positionStride] back to back.
    struct Blocking {
        let totalTiles: Int
        let tilesPerBlock: Int
        let blockCount: Int
        let workers: Int
        let inputPositionStride: Int
        let productPositionStride: Int
        var floatsPerWorker: Int { positions * (inputPositionStride + productPositionStride) }

        /// Blocks of whole `tileGroup`s, of equal size but for a shorter last one, as many as a multiple of
        /// the core count, so no core idles at the end.
        init(totalTiles: Int, inChannels: Int, outChannels: Int, preferredTilesPerBlock preferred: Int?, cores: Int) {
            let preferred = preferred ?? Winograd.preferredTilesPerBlock(inChannels: inChannels, outChannels: outChannels)
            let groups = roundedUpToGroups(totalTiles) / tileGroup
            let preferredGroups = max(1, preferred / tileGroup)
            let blocksPerCore = (groups + cores * preferredGroups - 1) / (cores * preferredGroups)
            self.totalTiles = totalTiles
            tilesPerBlock = tileGroup * ((groups + cores * blocksPerCore - 1) / (cores * blocksPerCore))
            blockCount = (totalTiles + tilesPerBlock - 1) / tilesPerBlock
            workers = min(blockCount, cores)
            inputPositionStride = Self.paddedPositionStride(inChannels * tilesPerBlock)
            productPositionStride = Self.paddedPositionStride(outChannels * tilesPerBlock)
        }

        /// Consecutive blocks, so the two input rows that neighbouring tile rows share are still in
        /// the core's cache.
        func blocks(of worker: Int) -> Range<Int> {
            (worker * blockCount / workers)..<((worker + 1) * blockCount / workers)
        }

        func tiles(ofBlock block: Int) -> Range<Int> {
            (block * tilesPerBlock)..<min(totalTiles, (block + 1) * tilesPerBlock)
        }

        /// Distance between consecutive positions' matrices of `count` floats: rounded up to 4 KB and
        /// then one cache line more, because the transforms touch all 36 at once and streams a multiple
        /// of 4 KB apart share L1 cache sets. The extra line is also the slack the output transform's
        /// four-lane loads may read past a matrix's last column.
        static func paddedPositionStride(_ count: Int) -> Int {
            let page = 1024, cacheLine = 16
            return (count + page - 1) / page * page + cacheLine
        }
    }

    /// `count` rounded up to a multiple of `tileGroup`.
    static func roundedUpToGroups(_ count: Int) -> Int {
        (count + tileGroup - 1) / tileGroup * tileGroup
    }

    /// How one image's H x W outputs divide into 4x4 tiles (the last row and column of tiles
    /// may hang over the edge), and the runs of a block's tiles that share a tile row.
    struct TileGrid {
        let height: Int
        let width: Int
        let tilesDown: Int
        let tilesAcross: Int
        var tilesPerImage: Int { tilesDown * tilesAcross }

        init(height: Int, width: Int) {
            self.height = height
            self.width = width
            tilesDown = (height + outputTile - 1) / outputTile
            tilesAcross = (width + outputTile - 1) / outputTile
        }

        /// Calls `body(image, tileRow, tileColumns, blockColumn)` for each run of `tiles` (flattened
        /// tile numbers) within one tile row; blockColumn is the run's first tile's index in the block.
        @inline(__always)
        func forEachRowRun(in tiles: Range<Int>, _ body: (Int, Int, Range<Int>, Int) -> Void) {
            var tile = tiles.lowerBound
            while tile < tiles.upperBound {
                let (image, inImage) = tile.quotientAndRemainder(dividingBy: tilesPerImage)
                let (tileRow, tileColumn) = inImage.quotientAndRemainder(dividingBy: tilesAcross)
                let count = min(tiles.upperBound - tile, tilesAcross - tileColumn)
                body(image, tileRow, tileColumn..<(tileColumn + count), tile - tiles.lowerBound)
                tile += count
            }
        }
    }

    // MARK: Input transform

    /// x [N, C, H, W] -> V [36, positionStride ≥ C * columnStride], V[ξ][c * columnStride + t] = (Bᵀ d B)[ξ]
    /// for the block's tile t and channel c.
    static func transformInput(_ input: UnsafePointer<Float>, channels: Int, grid: TileGrid, tiles: Range<Int>,
                               into transformed: UnsafeMutablePointer<Float>, columnStride: Int, positionStride: Int) {
        forEachTileGroup(input, channels: channels, grid: grid, tiles: tiles, windowRows: inputTile,
                         windowColumns: groupWindowWidth, margin: 1, into: transformed, columnStride: columnStride) {
            window, rowStride, tileCount, destination in
            transformInputGroup(window, rowStride: rowStride, tileCount: tileCount, into: destination, positionStride: positionStride)
        }
    }

    /// Calls `transform(window, rowStride, tileCount, destination)` for each group of up to four side-by-side tiles of
    /// the block's `tiles`, in every channel of `planes` [N, C, H, W]: `window` is the group's `windowRows` x
    /// `windowColumns` window of the plane, from `margin` rows and columns before the group's first output (the
    /// padding); `destination` is the group's first column in `transformed`, channel c's at c * columnStride. Windows
    /// that reach over the plane's edge are first copied into a zero-filled scratch window.
    @inline(__always)
    static func forEachTileGroup(_ planes: UnsafePointer<Float>, channels: Int, grid: TileGrid, tiles: Range<Int>,
                                 windowRows: Int, windowColumns: Int, margin: Int,
                                 into transformed: UnsafeMutablePointer<Float>, columnStride: Int,
                                 _ transform: (UnsafePointer<Float>, Int, Int, UnsafeMutablePointer<Float>) -> Void) {
        let (height, width) = (grid.height, grid.width)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: windowRows * windowColumns) { scratch in
            let scratch = scratch.baseAddress!
            for channel in 0..<channels {
                let row = transformed + channel * columnStride
                grid.forEachRowRun(in: tiles) { image, tileRow, tileColumns, blockColumn in
                    let plane = planes + (image * channels + channel) * height * width
                    let top = tileRow * outputTile - margin
                    for firstTile in Swift.stride(from: tileColumns.lowerBound, to: tileColumns.upperBound, by: lanes) {
                        let tileCount = min(lanes, tileColumns.upperBound - firstTile)
                        let left = firstTile * outputTile - margin
                        let destination = row + blockColumn + firstTile - tileColumns.lowerBound
                        if top >= 0 && top + windowRows <= height && left >= 0 && left + windowColumns <= width {
                            transform(plane + top * width + left, width, tileCount, destination)
                        } else {
                            copyWindow(plane, height: height, width: width, top: top, left: left,
                                       rows: windowRows, columns: windowColumns, into: scratch)
                            transform(scratch, windowColumns, tileCount, destination)
                        }
                    }
                }
            }
        }
    }

    /// plane [H, W] -> window [rows, columns]: rows top..<top+rows, columns left..<left+columns, zero outside the
    /// plane (an input group's 6 x 18 window, or an output gradient group's 4 x 16).
    static func copyWindow(_ plane: UnsafePointer<Float>, height: Int, width: Int, top: Int, left: Int,
                           rows: Int, columns: Int, into window: UnsafeMutablePointer<Float>) {
        window.update(repeating: 0, count: rows * columns)
        let firstColumn = max(0, left), endColumn = min(width, left + columns)
        guard firstColumn < endColumn else { return }
        for windowRow in 0..<rows where (0..<height).contains(top + windowRow) {
            (window + windowRow * columns + firstColumn - left)
                .update(from: plane + (top + windowRow) * width + firstColumn, count: endColumn - firstColumn)
        }
    }

    /// window [6, ≥18] (row stride `rowStride`) holding four side-by-side tiles' windows, which
    /// overlap by two columns -> V[ξ][q] at transformed + ξ * positionStride for the first `tileCount` tiles q.
    @inline(__always)
    static func transformInputGroup(_ window: UnsafePointer<Float>, rowStride: Int, tileCount: Int,
                                    into transformed: UnsafeMutablePointer<Float>, positionStride: Int) {
        withUnsafeTemporaryAllocation(of: Lanes.self, capacity: positions) { rowPass in
            // rowPass[r][j] = Σ_s d[r][s] Bᵀ[j][s]; lane q holds tile q, whose column s is window column 4q + s:
            // a 4x4 transpose of the row's first 16 values gives columns 0-3, and columns 4 and 5 are
            // columns 0 and 1 of the next tile.
            for windowRow in 0..<inputTile {
                let row = window + windowRow * rowStride
                let (column0, column1, column2, column3) = transpose(load(row), load(row + 4), load(row + 8), load(row + 12))
                let column4 = Lanes(column0[1], column0[2], column0[3], row[16])
                let column5 = Lanes(column1[1], column1[2], column1[3], row[17])
                let v = multiplyByBTransposed(column0, column1, column2, column3, column4, column5)
                let rowBase = windowRow * inputTile
                (rowPass[rowBase], rowPass[rowBase + 1], rowPass[rowBase + 2]) = (v.0, v.1, v.2)
                (rowPass[rowBase + 3], rowPass[rowBase + 4], rowPass[rowBase + 5]) = (v.3, v.4, v.5)
            }
            // V[i][j] = Σ_r Bᵀ[i][r] rowPass[r][j]
            for j in 0..<inputTile {
                let v = multiplyByBTransposed(rowPass[j], rowPass[6 + j], rowPass[12 + j],
                                              rowPass[18 + j], rowPass[24 + j], rowPass[30 + j])
                @inline(__always) func emit(_ i: Int, _ value: Lanes) {
                    store(value, to: transformed + (i * inputTile + j) * positionStride, count: tileCount)
                }
                emit(0, v.0); emit(1, v.1); emit(2, v.2); emit(3, v.3); emit(4, v.4); emit(5, v.5)
            }
        }
    }

    /// Bᵀ · (d0 ... d5), one pass of Bᵀ d B.
    @inline(__always)
    static func multiplyByBTransposed(_ d0: Lanes, _ d1: Lanes, _ d2: Lanes, _ d3: Lanes, _ d4: Lanes, _ d5: Lanes)
        -> (Lanes, Lanes, Lanes, Lanes, Lanes, Lanes) {
        // Rows of Bᵀ grouped around d1 - d3 and d2 - d4, which four of them share; spelled out
        // term by term because Swift's type checker gives up on the one-expression rows.
        let oddDifference = d1 - d3, evenDifference = d2 - d4
        let three: Float = 3, four: Float = 4, five: Float = 5
        let v0: Lanes = (d0 + d4) + (d0 + d4) - three * oddDifference - four * d2
        let v1: Lanes = five * d3 + d2 - (d1 - d4) - (d1 - d4)
        let v2: Lanes = five * d2 - d3 - (d1 + d4) - (d1 + d4)
        let v3: Lanes = oddDifference + oddDifference + evenDifference
        let v4: Lanes = oddDifference - evenDifference - evenDifference
        let v5: Lanes = (d1 + d5) + (d1 + d5) - three * evenDifference - four * d3
        return (v0, v1, v2, v3, v4, v5)
    }

    // MARK: Output transform

    /// M [36, positionStride ≥ Cout * columnStride] -> y [N, Cout, H, W] for the block's tiles:
    /// y tile = Aᵀ M A + bias[k], then max(0, ·) when fusing ReLU, then zeroed where `mask` (as y) is not > 0.
    /// Tiles hanging over the bottom or right edge keep only their part inside the image.
    static func transformOutput(_ products: UnsafePointer<Float>, columnStride: Int, positionStride: Int,
                                biases: UnsafePointer<Float>, channels: Int, fusingReLU: Bool,
                                mask: UnsafePointer<Float>?, grid: TileGrid,
                                tiles: Range<Int>, into output: UnsafeMutablePointer<Float>) {
        let (height, width) = (grid.height, grid.width)
        for channel in 0..<channels {
            let row = products + channel * columnStride
            let bias = biases[channel]
            grid.forEachRowRun(in: tiles) { image, tileRow, tileColumns, blockColumn in
                let top = tileRow * outputTile
                let plane = (image * channels + channel) * height * width
                for firstTile in Swift.stride(from: tileColumns.lowerBound, to: tileColumns.upperBound, by: lanes) {
                    let left = firstTile * outputTile
                    let corner = plane + top * width + left
                    transformOutputGroup(row + blockColumn + firstTile - tileColumns.lowerBound,
                                         positionStride: positionStride,
                                         tileCount: min(lanes, tileColumns.upperBound - firstTile), bias: bias,
                                         fusingReLU: fusingReLU, mask: mask.map { $0 + corner }, into: output + corner,
                                         rowStride: width, rows: min(outputTile, height - top), columns: width - left)
                }
            }
        }
    }

    /// M[ξ][q] at products + ξ * positionStride for `tileCount` side-by-side tiles q -> their 4x4 outputs
    /// at output (row stride `rowStride`), keeping `rows` rows and the first `columns` columns.
    @inline(__always)
    static func transformOutputGroup(_ products: UnsafePointer<Float>, positionStride: Int, tileCount: Int, bias: Float,
                                     fusingReLU: Bool, mask: UnsafePointer<Float>?, into output: UnsafeMutablePointer<Float>,
                                     rowStride: Int, rows: Int, columns: Int) {
        withUnsafeTemporaryAllocation(of: Lanes.self, capacity: outputTile * inputTile) { columnPass in
            // columnPass[i][j] = Σ_r Aᵀ[i][r] M[r][j]
            for j in 0..<inputTile {
                // All four lanes are read even for fewer tiles: the columns past them are the next
                // tiles' or the slack `Blocking.paddedPositionStride` leaves after each position.
                @inline(__always) func product(_ r: Int) -> Lanes { load(products + (r * inputTile + j) * positionStride) }
                let t = multiplyByATransposed(product(0), product(1), product(2), product(3), product(4), product(5))
                (columnPass[j], columnPass[6 + j], columnPass[12 + j], columnPass[18 + j]) = t
            }
            let fullWidth = tileCount == lanes && columns >= lanes * outputTile
            for i in 0..<rows {
                let base = i * inputTile
                let y = multiplyByATransposed(columnPass[base], columnPass[base + 1], columnPass[base + 2],
                                              columnPass[base + 3], columnPass[base + 4], columnPass[base + 5])
                @inline(__always) func finish(_ value: Lanes) -> Lanes {
                    let value = value + bias
                    return fusingReLU ? value.replacing(with: 0, where: value .< 0) : value
                }
                // y.j holds column j of the four tiles; transposed, tiles[q] is tile q's row, output columns 4q..<4q+4.
                let tiles = transpose(finish(y.0), finish(y.1), finish(y.2), finish(y.3))
                @inline(__always) func emit(_ q: Int, _ tileRow: Lanes) {
                    let count = fullWidth ? outputTile : q < tileCount ? max(0, min(outputTile, columns - q * outputTile)) : 0
                    guard count > 0 else { return }
                    let offset = i * rowStride + q * outputTile
                    var tileRow = tileRow
                    if let mask { tileRow.replace(with: 0, where: .!(load(mask + offset, count: count) .> 0)) }
                    store(tileRow, to: output + offset, count: count)
                }
                emit(0, tiles.0); emit(1, tiles.1); emit(2, tiles.2); emit(3, tiles.3)
            }
        }
    }

    /// Aᵀ · (m0 ... m5), one pass of Aᵀ M A.
    @inline(__always)
    static func multiplyByATransposed(_ m0: Lanes, _ m1: Lanes, _ m2: Lanes, _ m3: Lanes, _ m4: Lanes, _ m5: Lanes)
        -> (Lanes, Lanes, Lanes, Lanes) {
        let (sum, difference) = (m1 + m2, m1 - m2)
        return (m0 + sum + m3 + m4,
                difference + 0.5 * m3 - 2 * m4,
                sum + 0.25 * m3 + 4 * m4,
                difference + 0.125 * m3 - 8 * m4 + m5)
    }

    // MARK: Lanes in memory

    /// Rows (a, b, c, d) -> columns: result.k = (a[k], b[k], c[k], d[k]). Compiles to shuffles.
    @inline(__always)
    static func transpose(_ a: Lanes, _ b: Lanes, _ c: Lanes, _ d: Lanes) -> (Lanes, Lanes, Lanes, Lanes) {
        (Lanes(a[0], b[0], c[0], d[0]), Lanes(a[1], b[1], c[1], d[1]),
         Lanes(a[2], b[2], c[2], d[2]), Lanes(a[3], b[3], c[3], d[3]))
    }

    /// The four values at `pointer`.
    @inline(__always)
    static func load(_ pointer: UnsafePointer<Float>) -> Lanes {
        UnsafeRawPointer(pointer).loadUnaligned(as: Lanes.self)
    }

    /// The first `count` values at `pointer`, zeros in the lanes past them, reading nothing past them.
    @inline(__always)
    static func load(_ pointer: UnsafePointer<Float>, count: Int) -> Lanes {
        guard count < lanes else { return load(pointer) }
        var value = Lanes()
        for lane in 0..<count { value[lane] = pointer[lane] }
        return value
    }

    /// Writes the first `count` values of `value` at `pointer`, nothing past them.
    @inline(__always)
    static func store(_ value: Lanes, to pointer: UnsafeMutablePointer<Float>, count: Int) {
        if count == lanes {
            UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: Lanes.self)
        } else {
            for lane in 0..<count { pointer[lane] = value[lane] }
        }
    }
}

/// Memory for the transformed tiles and products, kept from one convolution to the next: fresh pages
/// for a layer's 50-75 MB would cost more in page faults (measured 1-2.5 GB/s first touch here) than
/// its transforms. Holds one buffer per convolution running at the same time, each as large as the
/// largest asked of it (at most 2 cores x 36 x 1024 channels x 256 tiles, 75 MB).
final class WinogradWorkspace: @unchecked Sendable {
    static let shared = WinogradWorkspace()
    private let lock = NSLock()
    private var idle: [UnsafeMutableBufferPointer<Float>] = []

    /// Runs `body` with `count` initialized floats (zeros at first, then whatever the last user left)
    /// that no other caller uses meanwhile.
    func withBuffer<Result>(count: Int, _ body: (UnsafeMutablePointer<Float>) -> Result) -> Result {
        var buffer = lock.withLock { idle.popLast() } ?? UnsafeMutableBufferPointer(start: nil, count: 0)
        if buffer.count < count {
            buffer.deallocate()
            buffer = .allocate(capacity: count)
            buffer.initialize(repeating: 0)
        }
        defer { lock.withLock { idle.append(buffer) } }
        return body(buffer.baseAddress!)
    }
}

/// The transformed filters of one convolution, computed on first use and kept: the transform
/// costs a pass over the weights per forward otherwise. Conv2D replaces its cache whenever its
/// weights change, so a cache never outlives the weights it was made from.
final class WinogradFilterCache: @unchecked Sendable {
    private let lock = NSLock()
    private var filters: [Float]?

    /// U [36, Cout, Cin] for `weight` [Cout, Cin, 3, 3]; the weights given on the first call are
    /// the ones transformed.
    func filters(for weight: Tensor) -> [Float] {
        lock.withLock {
            if let filters { return filters }
            let transformed = Winograd.transformFilters(weight)
            filters = transformed
            return transformed
        }
    }
}
