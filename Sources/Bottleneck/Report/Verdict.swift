import Foundation

/// The report's first lines, the answer to the question the tool exists for: freeze (a head on cached features)
/// or fine-tune everything? Which approach won on the shared validation images, by how much, at what cost from
/// images to model (a head's includes the extraction that made its cache), and on which backbone weights.
struct Verdict {
    /// The answer in one sentence: the winner and its margin, a tie, or why there is none.
    var answer: String
    /// What each run took from images to model.
    var cost: String
    /// Which weights the runs started from; a warning when any were random.
    var weights: String
    /// Whether `weights` warns of random weights.
    var randomWeights: Bool

    /// Accuracies closer than this are a tie: they differ by less than one image of any validation set.
    private static let tieTolerance = 1e-9

    init(runs: [RunRecord], comparable: Bool) {
        answer = Self.answer(runs: runs, comparable: comparable)
        cost = "Cost from images to model: " + runs.map { "\($0.name) \(Self.cost($0))" }.joined(separator: "; ")
            + Self.costRatio(runs: runs) + "."
        randomWeights = runs.contains(where: \.usesRandomWeights)
        weights = Self.weights(runs: runs)
    }

    /// "head (train-head)"
    private static func named(_ run: RunRecord) -> String { "\(run.name) (\(Report.modeName(run.mode)))" }

    /// Best first: higher validation accuracy, then lower validation loss.
    private static func ranked(_ runs: [RunRecord]) -> [RunRecord] {
        runs.sorted { ($0.bestValidationAccuracy, -$0.bestValidationLoss) > ($1.bestValidationAccuracy, -$1.bestValidationLoss) }
    }

    private static func answer(runs: [RunRecord], comparable: Bool) -> String {
        let ranked = ranked(runs)
        guard let best = ranked.first else { return "No runs." }
        guard comparable else {
            return "No winner: the runs did not validate on the same images, so their accuracies do not compare."
        }
        let figures = { (run: RunRecord) in
            String(format: "%.4f validation accuracy, loss %.4f", run.bestValidationAccuracy, run.bestValidationLoss)
        }
        let other = Report.modeName(best.mode == .head ? .finetune : .head)
        guard ranked.count > 1 else {
            return "One run: \(named(best)) reaches \(figures(best)) (chance \(String(format: "%.3f", best.chanceAccuracy))). "
                + "Nothing to compare it with: report it with a \(other) run "
                + "validated on the same images to answer freeze or fine-tune."
        }
        // The best of the other approach when there is one: that is the question; else the runner-up.
        let rival = ranked.first { $0.mode != best.mode } ?? ranked[1]
        let bothApproaches = rival.mode != best.mode
        let sameApproachNote = bothApproaches ? ""
            : " Every run \(best.mode == .head ? "trains a head on cached features" : "fine-tunes the network"), so this does not "
                + "answer freeze or fine-tune: add a \(other) run on the same images."
        let points = (best.bestValidationAccuracy - rival.bestValidationAccuracy) * 100
        let losses = String(format: "validation loss %.4f vs %.4f", best.bestValidationLoss, rival.bestValidationLoss)
        if points < tieTolerance * 100 {
            let lead = bothApproaches ? "Tie between freeze and fine-tune" : "Tie"
            return "\(lead): \(named(best)) and \(named(rival)) both reach "
                + String(format: "%.4f validation accuracy", best.bestValidationAccuracy) + " (\(losses))."
                + cheaperAtEqualAccuracy(best, rival) + sameApproachNote
        }
        let lead = bothApproaches ? "\(best.mode == .head ? "Freeze" : "Fine-tune") wins" : "Best run"
        return "\(lead): \(named(best)) beats \(named(rival)) by " + String(format: "%.1f accuracy points", points)
            + String(format: " (%.4f vs %.4f validation accuracy; ", best.bestValidationAccuracy, rival.bestValidationAccuracy)
            + "\(losses))." + sameApproachNote
    }

    private static func cheaperAtEqualAccuracy(_ first: RunRecord, _ second: RunRecord) -> String {
        guard let one = first.totalSeconds, let other = second.totalSeconds, one != other else { return "" }
        let cheaper = one < other ? first : second
        return " At equal accuracy the cheaper is \(cheaper.name)."
    }

    /// "3.74 s (0.54 s training + 3.20 s extracting its cache)" for a head, "2 min 05 s" for a fine-tuning.
    static func cost(_ run: RunRecord) -> String {
        let training = Report.duration(run.wallSeconds)
        guard let cache = run.cache else { return training }
        guard let total = run.totalSeconds, let extraction = cache.extractionSeconds else {
            return "\(training) training + extraction time unknown (its cache "
                + "\((cache.path as NSString).lastPathComponent) does not record it: made before caches did, or merged from shards)"
        }
        return "\(Report.duration(total)) (\(training) training + \(Report.duration(extraction)) extracting its cache)"
    }

    /// " (finetune took 34× as long as head)": the best run of each approach, when both costs are known.
    private static func costRatio(runs: [RunRecord]) -> String {
        let ranked = ranked(runs)
        guard let head = ranked.first(where: { $0.mode == .head }), let finetune = ranked.first(where: { $0.mode == .finetune }),
              let headSeconds = head.totalSeconds, let finetuneSeconds = finetune.totalSeconds,
              headSeconds > 0, finetuneSeconds > 0 else { return "" }
        let (slow, fast) = headSeconds > finetuneSeconds ? (head, finetune) : (finetune, head)
        let ratio = max(headSeconds, finetuneSeconds) / min(headSeconds, finetuneSeconds)
        return " (\(slow.name) took " + String(format: ratio < 10 ? "%.1f" : "%.0f", ratio) + "× as long as \(fast.name))"
    }

    /// "random weights", "vgg16-397923af.pth · sha256 397923af"
    static func weightsLabel(_ run: RunRecord) -> String {
        run.usesRandomWeights ? "random weights"
            : "\((run.weights.source as NSString).lastPathComponent) · sha256 \(run.weights.fingerprint.prefix(8))"
    }

    private static func weights(runs: [RunRecord]) -> String {
        let labels = Set(runs.map(weightsLabel))
        let which = labels.count == 1 ? "\(runs.count == 1 ? "the run starts" : "all runs start") from \(labels.first!)"
            : runs.map { "\($0.name): \(weightsLabel($0))" }.joined(separator: ", ")
        guard runs.contains(where: \.usesRandomWeights) else { return "Weights: \(which)." }
        return "RANDOM WEIGHTS: \(which). A comparison on random weights is not meaningful for ImageNet transfer; "
            + "get the pretrained torchvision weights with '\(WeightsChoice.downloadCommand)' and train again."
    }
}
