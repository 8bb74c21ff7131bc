import BottleneckKernels

/// Every random draw of a training run comes from a stream of its own, seeded from the run's seed and
/// what the draw is for. A dropout mask is therefore a function of (seed, epoch, row, layer) alone: the
/// same whether the row's activation came from the cache or from the frozen network run on its image,
/// whatever batch it landed in and whichever thread drew it. That is what makes cached training equal
/// to uncached training, and a run reproducible from its seed.
enum TrainingRandomness {
    enum Purpose: UInt64 {
        case headInitialisation = 1
        case shuffle
        case dropout
        /// Full fine-tuning's random crop and flip of an image in an epoch. (4 drew the validation split
        /// before the split became a hash of the image; 5 keeps a seed's crops those of earlier runs.)
        case augmentation = 5
        /// An augmented view that `extract --views` stores.
        case cachedView
        /// Which stored view a row trains on in an epoch.
        case viewChoice
    }

    /// SplitMix64's finaliser folded over the parts: distinct inputs give unrelated seeds.
    static func seed(_ seed: UInt64, _ purpose: Purpose, _ parts: UInt64...) -> UInt64 {
        var state = seed
        for part in [purpose.rawValue] + parts {
            state = (state ^ part) &+ 0x9E37_79B9_7F4A_7C15
            state = (state ^ (state >> 30)) &* 0xBF58_476D_1CE4_E5B9
            state = (state ^ (state >> 27)) &* 0x94D0_49BB_1331_11EB
            state ^= state >> 31
        }
        return state
    }

    /// The generator of the dropout mask that the layer at `layerPosition` (in `VGGConfig.layers`) puts on
    /// cache row `row` in `epoch` (from 0).
    static func dropoutGenerator(seed: UInt64, epoch: Int, row: Int, layerPosition: Int) -> SeededGenerator {
        SeededGenerator(seed: Self.seed(seed, .dropout, UInt64(epoch), UInt64(row), UInt64(layerPosition)))
    }

    /// The generator of augmented view `view` (from 1) that `extract --views` stores for the image at `path` (relative to
    /// the image root, as `/paths` holds it): a function of the two alone, so a rerun, or an image added to the
    /// folder, leaves every other image's views as they were.
    static func cachedViewGenerator(path: String, view: Int) -> SeededGenerator {
        let pathHash = SHA256.digest(Array(path.utf8)).prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return SeededGenerator(seed: Self.seed(0, .cachedView, pathHash, UInt64(view)))
    }

    /// The stored view (0..<views) that cache row `row` trains on in `epoch` (from 0).
    static func viewChoice(seed: UInt64, epoch: Int, row: Int, views: Int) -> Int {
        var generator = SeededGenerator(seed: Self.seed(seed, .viewChoice, UInt64(epoch), UInt64(row)))
        return Int(generator.next().multipliedFullWidth(by: UInt64(views)).high)
    }

    /// `rows` in the order `epoch` visits them: a uniform shuffle that depends only on the seed and epoch.
    package static func shuffled(_ rows: [Int], seed: UInt64, epoch: Int) -> [Int] {
        var generator = SeededGenerator(seed: Self.seed(seed, .shuffle, UInt64(epoch)))
        var order = rows
        order.shuffleReproducibly(using: &generator)
        return order
    }
}

extension Array {
    /// Fisher–Yates with a fixed way of drawing each index (Lemire's multiply-shift, its bias below
    /// 2⁻⁶⁴ · count), so an order depends on the generator alone and not on the standard library's
    /// `shuffle`, whose algorithm may change between Swift releases.
    mutating func shuffleReproducibly(using generator: inout SeededGenerator) {
        guard count > 1 else { return }
        for index in stride(from: count - 1, to: 0, by: -1) {
            let other = Int(generator.next().multipliedFullWidth(by: UInt64(index + 1)).high)
            swapAt(index, other)
        }
    }
}
