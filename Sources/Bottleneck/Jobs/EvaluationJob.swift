import Foundation
import BottleneckKernels

/// `bottleneck evaluate`: a trained model's accuracy, per-class precision and recall and confusion
/// matrix, on the rows of a feature cache (made like the model's training cache) or on an image folder
/// (run through the frozen prefix first). Classes are matched by name.
package struct EvaluationJob: Sendable {
    package enum Source: Sendable {
        case cache(String)
        case images(String)
    }

    package var modelPath: String
    package var source: Source
    /// "train", "val", "test" or "all"; nil: test when there is one, else val. val and train are the sides
    /// of the split the model was trained with: the source's val/ when it has one, else the model's hashed
    /// split (its seed and fraction) applied to the source's rows.
    package var split: String?
    /// Backbone weights for `.images`; nil: the ones the model records.
    package var weights: WeightsChoice?
    /// Images per forward pass (images only).
    package var batchSize = 8
    /// Bytes a run may plan to use; nil: MemAvailable from /proc/meminfo.
    var memoryLimitBytes: Int?
    package var allowIncomplete = false

    package init(modelPath: String, source: Source) {
        self.modelPath = modelPath
        self.source = source
    }

    package struct Result: Sendable {
        package var metrics: ClassificationMetrics
        /// The split evaluated ("val", "all", …).
        package var split: String
        /// What the scored rows were, after their count: "held-out validation rows of the split the model
        /// was trained with (hashed split, seed 0, fraction 0.2)".
        package var scored: String
        /// Images that could not be read (images only).
        package var failed: [(path: String, reason: String)]
        /// The backbone weights the model was trained on.
        package var weights: WeightsIdentity
    }

    package func run(log: (String) -> Void) throws -> Result {
        let model = try TrainedModel(contentsOf: modelPath)
        switch source {
        case .cache(let path): return try evaluateCache(path, model: model)
        case .images(let root): return try evaluateImages(root, model: model, log: log)
        }
    }

    private func evaluateCache(_ path: String, model: TrainedModel) throws -> Result {
        let cache = try FeatureCacheReader(path: path, allowIncomplete: allowIncomplete)
        var wanted = cache.fingerprint
        wanted.backbone = model.config.name
        wanted.layer = model.cutName
        wanted.layerPath = model.cut.layer.path
        wanted.activationShape = model.cut.activationShape(config: model.config, imageSize: model.preprocessing.crop)
        wanted.weightsSHA256 = model.weights.fingerprint
        wanted.weightsSource = model.weights.source
        wanted.preprocess = model.preprocessing.jsonDescription
        let differences = cache.fingerprint.differences(from: wanted)
        guard differences.isEmpty else {
            throw TrainingError(.mismatch, "\(path) was made with \(differences.joined(separator: ", ")): the model \(modelPath) "
                                + "takes \(model.cutName) features of its own backbone weights and preprocessing")
        }
        let labels = try modelLabels(cache.labels, sourceClasses: cache.classes, model: model, source: path)
        let (split, rows, scored) = try selectRows(paths: cache.paths, labels: labels, splits: cache.splits, model: model, source: path)
        let head = try model.head()
        var metrics = ClassificationMetrics(classes: model.classes)
        let readRows = max(1, (64 << 20) / (cache.rowSize * MemoryLayout<Float>.size))
        for start in stride(from: 0, to: rows.count, by: readRows) {
            let group = Array(rows[start..<min(start + readRows, rows.count)])
            metrics.add(logits: head.forward(try cache.readRows(at: group)), labels: group.map { labels[$0] })
        }
        return Result(metrics: metrics, split: split, scored: scored, failed: [], weights: model.weights)
    }

    private func evaluateImages(_ root: String, model: TrainedModel, log: (String) -> Void) throws -> Result {
        if let problem = MemoryEstimate.batchSizeProblem(batchSize) { throw TrainingError(.invalidInput, problem) }
        let folder = try ImageFolder(root: root)
        for warning in folder.warnings { log("warning: \(warning)") }
        let labels = try modelLabels(folder.items.map(\.label), sourceClasses: folder.classes, model: model, source: root)
        let (split, rows, scored) = try selectRows(paths: folder.items.map(\.path), labels: labels, splits: folder.items.map(\.split),
                                                   model: model, source: root)
        let largestBatch = min(batchSize, rows.count)
        if let refusal = MemoryEstimate.refusal(forward: model.config, imageShape: model.preprocessing.outputShape,
                                                batchSize: largestBatch, limit: memoryLimitBytes) {
            throw TrainingError(.invalidInput, refusal)
        }
        let classifier = try ImageClassifier(model: model, weights: weights)
        log("evaluating \(rows.count) images of \(root) through \(model.cutName) and the head: \(scored)")
        let items = rows.map { folder.items[$0] }
        let labelOfPath = Dictionary(uniqueKeysWithValues: rows.map { (folder.items[$0].path, labels[$0]) })
        let decoder = BatchDecoder(folder: folder, items: items, batchSize: batchSize, preprocessing: model.preprocessing)
        defer { decoder.cancel() }
        let progress = ProgressReporter(label: "images", total: items.count)
        var metrics = ClassificationMetrics(classes: model.classes)
        var failed: [(path: String, reason: String)] = []
        var done = 0
        while let batch = decoder.next() {
            failed += batch.failed
            if !batch.items.isEmpty {
                metrics.add(logits: try classifier.logits(batch.images), labels: batch.items.map { labelOfPath[$0.path]! })
            }
            done += batch.items.count + batch.failed.count
            progress.update(done: done)
        }
        progress.finish()
        guard metrics.count > 0 else {
            throw TrainingError(.invalidInput, "no image of \(root) could be read (\(failed.count) failed)")
        }
        return Result(metrics: metrics, split: split, scored: scored, failed: failed, weights: model.weights)
    }

    /// Source labels (indices into `sourceClasses`, -1 unlabeled) as indices into the model's classes.
    private func modelLabels(_ labels: [Int32], sourceClasses: [String], model: TrainedModel, source: String) throws -> [Int32] {
        let modelIndex = Dictionary(uniqueKeysWithValues: model.classes.enumerated().map { ($1, Int32($0)) })
        let used = Set(labels.filter { $0 >= 0 })
        if let unknown = sourceClasses.indices.first(where: { used.contains(Int32($0)) && modelIndex[sourceClasses[$0]] == nil }) {
            throw TrainingError(.mismatch, "\(source) has class '\(sourceClasses[unknown])', which the model does not know "
                                + "(its classes: \(model.classes.joined(separator: ", ")))")
        }
        return labels.map { $0 < 0 ? -1 : modelIndex[sourceClasses[Int($0)]]! }
    }

    /// The split to evaluate, its labeled rows and what they are; refuses an empty one, and val or train
    /// where the model's held-out rows cannot be found again.
    private func selectRows(paths: [String], labels: [Int32], splits: [ImageFolder.Split], model: TrainedModel,
                            source: String) throws -> (String, [Int], String) {
        let labeled = labels.indices.filter { labels[$0] >= 0 }
        let present = Set(labeled.map { splits[$0] })
        var chosen = split ?? (present.contains(.test) ? "test" : "val")
        guard ["train", "val", "test", "all"].contains(chosen) else {
            throw TrainingError(.invalidInput, "--split \(chosen): use train, val, test or all")
        }
        let rule = model.split
        var rows: [Int]
        var scored: String
        switch chosen {
        case "all":
            (rows, scored) = (labeled, "labeled rows, all of them (any the model trained on included)")
        case "test":
            (rows, scored) = (labeled.filter { splits[$0] == .test }, "test rows")
        default:
            let partition = TrainingSplit.assign(paths: paths, labels: labels, splits: splits, classes: model.classes,
                                                 seed: rule?.seed ?? 0, validationFraction: rule?.validationFraction ?? 0)
            rows = chosen == "val" ? partition.validationRows : partition.trainRows
            switch (partition.source, rule?.source) {
            case (.folder, .folder):
                scored = chosen == "val" ? "held-out val/ rows (the folder's split the model was trained with)" : "train/ rows"
            case (.folder, _):
                scored = "\(chosen)/ rows of \(source) (the model's own split: \(rule?.description ?? "not recorded"))"
            case (.hashed, .hashed):
                scored = (chosen == "val" ? "held-out validation rows" : "training rows")
                    + " of the split the model was trained with (\(rule!.description))"
            case (.hashed, _):
                let why = "\(source) has no val/ rows and the model "
                    + (rule == nil ? "does not record its split" : "validated on its own folder's val/")
                    + ", so the rows it trained on cannot be told apart"
                guard split == nil else { throw TrainingError(.invalidInput, "--split \(chosen): \(why); use --split all") }
                (chosen, rows, scored) = ("all", labeled, "labeled rows, all of them: \(why)")
            }
        }
        guard !rows.isEmpty else {
            throw TrainingError(.invalidInput, "\(source) has no labeled rows in split \(chosen)"
                                + " (it has: \(present.map(\.rawValue).sorted().joined(separator: ", ")))")
        }
        return (chosen, rows, scored)
    }
}
