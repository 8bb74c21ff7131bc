/// " (did you mean 'fc7'?)" after a name that is not known: pipeline keys, stage kinds and names, layer names.
enum Suggestion {
    /// The known word closest to `word` when one is within two edits, compared without letter case, `_` and `-`
    /// (so that `fc_7` finds `fc7` and `batchsize` finds `batch_size`); else "".
    static func didYouMean(_ word: String, among known: [String]) -> String {
        let scored = known.map { ($0, editDistance(normalised(word), normalised($0))) }.filter { $0.1 <= 2 }
        guard let best = scored.min(by: { $0.1 < $1.1 }) else { return "" }
        return " (did you mean '\(best.0)'?)"
    }

    private static func normalised(_ word: String) -> String {
        String(word.lowercased().filter { $0 != "_" && $0 != "-" })
    }

    private static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var previous = Array(0...b.count)
        for (i, characterOfA) in a.enumerated() {
            var current = [i + 1]
            for (j, characterOfB) in b.enumerated() {
                current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (characterOfA == characterOfB ? 0 : 1)))
            }
            previous = current
        }
        return previous[b.count]
    }
}
