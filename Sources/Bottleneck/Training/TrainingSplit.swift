import BottleneckKernels

/// Which rows train and which validate, decided by each image alone, so that train-head (cache rows),
/// full-finetune (folder files), evaluate and report agree by construction.
///
/// When the rows include `val/` images (the folder's `train/` and `val/`, as the cache records them),
/// `train/` rows train and `val/` rows validate. Otherwise a labeled image validates exactly when
///
///     (top 53 bits of the first 8 bytes of SHA-256("SEED/CLASS/PATH" in UTF-8), big-endian) / 2^53  <  fraction
///
/// with PATH relative to the image root (`cats/a.jpg`, as the cache's `/paths` holds it) and CLASS its
/// class name. In Python:
/// `(int.from_bytes(hashlib.sha256(f"{seed}/{cls}/{path}".encode()).digest()[:8], "big") >> 11) / 2**53 < fraction`.
/// As TensorFlow's retrain.py did by hashing file names, membership is a pure function of the image: the
/// unreadable files a folder has and its cache lacks change no other image's side, adding images never moves
/// the old ones, and the name of a class (not its index) keeps a new class from reshuffling the others.
///
/// The price: fractions are approximate per class, and no class is promised a validation or a training
/// row, since a per-class minimum would make an image's side depend on its neighbours. Instead a split
/// whose validation side is empty, or that leaves a class no training row, is refused with the numbers.
/// Unlabeled and test rows do neither.
package struct TrainingSplit: Sendable, Equatable {
    package enum Source: String, Codable, Sendable {
        /// The folder's train/ and val/.
        case folder
        /// Each image by the hash of its seed, class and path.
        case hashed
    }

    /// How a split was decided: what a model records, so that evaluate can find its held-out rows again.
    package struct Rule: Codable, Sendable, Equatable {
        package var source: Source
        package var seed: UInt64
        package var validationFraction: Double

        package init(source: Source, seed: UInt64, validationFraction: Double) {
            self.source = source
            self.seed = seed
            self.validationFraction = validationFraction
        }

        /// "the folder's train/ and val/", "hashed split, seed 0, fraction 0.2".
        package var description: String {
            switch source {
            case .folder: "the folder's train/ and val/"
            case .hashed: "hashed split, seed \(seed), fraction \(validationFraction)"
            }
        }
    }

    /// Which images a run validated on: its rule, how many images it scored, and a digest of their paths.
    /// Two runs with the same record were validated on the same images; report compares them.
    package struct Record: Codable, Sendable, Equatable {
        var rule: Rule
        var validationRows: Int
        /// SHA-256 of the scored images' relative paths, sorted by their UTF-8 bytes, each followed by "\n".
        var validationPathsSha256: String

        package init(rule: Rule, validationPaths: [String]) {
            self.rule = rule
            validationRows = validationPaths.count
            let sorted = validationPaths.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            validationPathsSha256 = SHA256.hex(SHA256.digest(Array(sorted.map { $0 + "\n" }.joined().utf8)))
        }

        /// "15 rows (hashed split, seed 0, fraction 0.2; paths sha256 1a2b3c4d…)"
        package var description: String {
            "\(validationRows) rows (\(rule.description); paths sha256 \(validationPathsSha256.prefix(12))…)"
        }
    }

    let rule: Rule
    /// Row indices, ascending.
    let trainRows: [Int]
    let validationRows: [Int]

    package init(rule: Rule, trainRows: [Int], validationRows: [Int]) {
        self.rule = rule
        self.trainRows = trainRows
        self.validationRows = validationRows
    }

    package var source: Source { rule.source }

    /// The split for training; refuses one that leaves either side empty or a hashed class without training rows.
    package static func make(paths: [String], labels: [Int32], splits: [ImageFolder.Split], classes: [String],
                            seed: UInt64, validationFraction: Double) throws -> TrainingSplit {
        guard labels.contains(where: { $0 >= 0 }) else {
            throw TrainingError(.invalidInput, "no labeled rows: every image was loose in the folder, outside a class subfolder")
        }
        let split = assign(paths: paths, labels: labels, splits: splits, classes: classes, seed: seed,
                           validationFraction: validationFraction)
        let flags = "--val-fraction \(validationFraction), --split-seed \(seed)"
        switch split.source {
        case .folder:
            guard !split.trainRows.isEmpty else {
                throw TrainingError(.invalidInput, "the train split is empty: the rows include val/ images but no labeled train/ ones")
            }
        case .hashed:
            guard !split.trainRows.isEmpty || !split.validationRows.isEmpty else {
                throw TrainingError(.invalidInput, "the train split is empty: every labeled row is a test row")
            }
            guard !split.validationRows.isEmpty else {
                throw TrainingError(.invalidInput, "the validation split is empty: none of the \(split.trainRows.count) labeled rows "
                                    + "hashes below \(flags); raise --val-fraction, try another --split-seed, or give the folder a val/")
            }
            let training = Set(split.trainRows.map { labels[$0] })
            if let starved = split.validationRows.map({ labels[$0] }).first(where: { !training.contains($0) }) {
                let count = split.validationRows.count { labels[$0] == starved }
                throw TrainingError(.invalidInput, "class \(classes[Int(starved)]) has no training rows: all \(count) of its rows "
                                    + "hash to validation under \(flags); lower --val-fraction, try another --split-seed, or add images")
            }
        }
        return split
    }

    /// Every labeled row's side, unchecked (evaluate scores what it is asked for): the folder's val/ when
    /// the rows include any, else the hash.
    static func assign(paths: [String], labels: [Int32], splits: [ImageFolder.Split], classes: [String],
                       seed: UInt64, validationFraction: Double) -> TrainingSplit {
        let labeled = labels.indices.filter { labels[$0] >= 0 }
        if labeled.contains(where: { splits[$0] == .val }) {
            return TrainingSplit(rule: Rule(source: .folder, seed: seed, validationFraction: validationFraction),
                                 trainRows: labeled.filter { splits[$0] == .train }, validationRows: labeled.filter { splits[$0] == .val })
        }
        let pool = labeled.filter { splits[$0] == .train || splits[$0] == .none }
        let validates = pool.map { hashPosition(path: paths[$0], className: classes[Int(labels[$0])], seed: seed) < validationFraction }
        return TrainingSplit(rule: Rule(source: .hashed, seed: seed, validationFraction: validationFraction),
                             trainRows: zip(pool, validates).filter { !$1 }.map(\.0),
                             validationRows: zip(pool, validates).filter { $1 }.map(\.0))
    }

    /// Where the image falls in [0, 1): it validates when this is below the fraction.
    static func hashPosition(path: String, className: String, seed: UInt64) -> Double {
        let digest = SHA256.digest(Array("\(seed)/\(className)/\(path)".utf8))
        let value = digest.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        // The top 53 bits: a Double holds them exactly, so the comparison is the same in any language.
        return Double(value >> 11) / Double(UInt64(1) << 53)
    }
}
