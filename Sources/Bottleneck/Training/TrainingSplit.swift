/// Which rows of a cache train and which validate: the cache's own train/val split when it has a
/// val split, else a split of each class by seed (stratified). Unlabeled and test rows do neither.
public struct TrainingSplit: Codable, Sendable, Equatable {
    public enum Source: String, Codable, Sendable {
        /// The folder's train/ and val/.
        case cache
        /// `validationFraction` of each class, drawn by seed.
        case stratified
    }

    public let source: Source
    /// Cache row indices, ascending.
    public let trainRows: [Int]
    public let validationRows: [Int]

    public init(source: Source, trainRows: [Int], validationRows: [Int]) {
        self.source = source
        self.trainRows = trainRows
        self.validationRows = validationRows
    }

    /// The split of rows with `labels` (-1 unlabeled) and `splits`; refuses one that leaves either side empty.
    public static func make(labels: [Int32], splits: [ImageFolder.Split], classCount: Int, validationFraction: Double,
                            seed: UInt64) throws -> TrainingSplit {
        let labeled = labels.indices.filter { labels[$0] >= 0 }
        guard !labeled.isEmpty else {
            throw TrainingError(.invalidInput, "no labeled rows: every image was loose in the folder, outside a class subfolder")
        }
        let split: TrainingSplit
        if labeled.contains(where: { splits[$0] == .val }) {
            split = TrainingSplit(source: .cache, trainRows: labeled.filter { splits[$0] == .train },
                                  validationRows: labeled.filter { splits[$0] == .val })
            guard !split.trainRows.isEmpty else {
                throw TrainingError(.invalidInput, "the train split is empty: the cache has val rows but no labeled train rows")
            }
        } else {
            let pool = labeled.filter { splits[$0] == .train || splits[$0] == .none }
            guard !pool.isEmpty else { throw TrainingError(.invalidInput, "the train split is empty: every labeled row is a test row") }
            split = stratified(pool, labels: labels, classCount: classCount, validationFraction: validationFraction, seed: seed)
            guard !split.validationRows.isEmpty else {
                throw TrainingError(.invalidInput, "the validation split is empty: --val-fraction \(validationFraction) of "
                                    + "\(pool.count) rows holds out none (a class needs 2 rows to give one to validation)")
            }
        }
        return split
    }

    /// Per class, round(fraction · n) of its rows (at least 1 and at most n - 1 when n ≥ 2, none of a
    /// single row) to validation, drawn by seed; classes in order, one generator.
    static func stratified(_ rows: [Int], labels: [Int32], classCount: Int, validationFraction: Double,
                           seed: UInt64) -> TrainingSplit {
        var generator = SeededGenerator(seed: TrainingRandomness.seed(seed, .validationSplit))
        var byClass = Array(repeating: [Int](), count: classCount)
        for row in rows { byClass[Int(labels[row])].append(row) }
        var train: [Int] = []
        var validation: [Int] = []
        for var members in byClass where !members.isEmpty {
            members.shuffleReproducibly(using: &generator)
            let held = members.count < 2 ? 0 : min(max(Int((validationFraction * Double(members.count)).rounded()), 1), members.count - 1)
            validation += members.prefix(held)
            train += members.dropFirst(held)
        }
        return TrainingSplit(source: .stratified, trainRows: train.sorted(), validationRows: validation.sorted())
    }
}
