import Foundation
import BottleneckKernels

/// `bottleneck extract`: every image of a folder through the frozen network once, into
/// the HDF5 feature cache. Decoding runs on its own thread ahead of the network; each
/// finished batch is durable before the next starts, so a crash loses at most one batch.
package struct ExtractionJob: Sendable {
    package var imagesRoot: String
    package var outputPath: String
    package var weights: WeightsChoice
    package var layer: String = "fc7"
    package var batchSize: Int = 16
    package var compress: Bool = false
    package var overwrite: Bool = false
    package var preprocessing: Preprocessing = .imageNet
    package var config: VGGConfig = .vgg16
    /// Only this contiguous part of the sorted image list (`--shard 2/4`), for scale-out; `bottleneck merge`
    /// joins the shards' caches into what one process would have written.
    package var shard: Shard?
    /// Augmented views (RandomResizedCrop + RandomHorizontalFlip, see `Augmentation`) stored per training-side image
    /// besides its eval view (`extract --views K`; `CacheFingerprint.viewCount(of:)` says which images get them).
    package var views = 0
    package static let mostViews = 1000
    /// Bytes a run may plan to use; nil: MemAvailable from /proc/meminfo.
    var memoryLimitBytes: Int?

    /// `--layer input` stores the preprocessed images themselves.
    package static let inputLayer = "input"

    package init(imagesRoot: String, outputPath: String, weights: WeightsChoice) {
        self.imagesRoot = imagesRoot
        self.outputPath = outputPath
        self.weights = weights
    }

    /// Every image found is exactly one of extracted (new to the cache), reused, changed (extracted again:
    /// its contents changed) or failed; `removed` rows belonged to images that are gone.
    package struct Summary: Sendable {
        package var found = 0
        package var extracted = 0
        package var reused = 0
        package var changed = 0
        var removed = 0
        /// Rows an interrupted run had made durable (counted in extracted or changed too).
        var recovered = 0
        /// Reused rows whose file had new times or another inode but the same bytes.
        var refreshed = 0
        /// Images this run put through the network.
        package var processed = 0
        package var failed: [(path: String, reason: String)] = []
        package var seconds = 0.0
        /// Seconds of the decode + network loop alone, without loading weights or writing the final file.
        var extractionSeconds = 0.0
        package var fileBytes = 0
        package var path = ""
        /// The backbone weights the features came from; nil for the `input` layer (no network).
        package var weights: WeightsIdentity?
        var emptyClassFolders: [String] = []

        /// Images this run put through the network, per second of the whole run.
        package var imagesPerSecond: Double { seconds > 0 ? Double(processed) / seconds : 0 }
        /// The same per second of the extraction loop: the figure to set beside `bench forward`.
        package var loopImagesPerSecond: Double { extractionSeconds > 0 ? Double(processed) / extractionSeconds : 0 }
        /// Rows the cache holds now.
        package var rows: Int { extracted + reused + changed }

        /// "84 images (2 extracted, 80 reused, 1 changed, 3 removed, 1 failed)": the counts add up to the images found;
        /// rows an interrupted run had made durable are named after them.
        package var counts: String {
            "\(found) images (\(extracted) extracted, \(reused) reused, \(changed) changed, \(removed) removed, \(failed.count) failed"
                + (recovered > 0 ? "; \(recovered) of them recovered from an interrupted run)" : ")")
        }
    }

    /// Runs the job. `log` gets one-off messages (what was found, reused, warnings);
    /// progress is drawn on stderr by a ProgressReporter.
    package func run(log: (String) -> Void) throws -> Summary {
        let start = ContinuousClock.now
        if let problem = MemoryEstimate.batchSizeProblem(batchSize) { throw ExtractionError(problem) }
        guard (0...Self.mostViews).contains(views) else {
            throw ExtractionError("--views must be between 0 and \(Self.mostViews), not \(views)")
        }
        // A mistyped layer is said before the folder is listed, which takes minutes on a large one.
        let isInputLayer = layer.lowercased() == Self.inputLayer
        let cut = isInputLayer ? nil : try CutPoint(layer, in: config)
        let folder = try ImageFolder(root: imagesRoot)
        guard !folder.items.isEmpty else {
            throw ExtractionError("\(imagesRoot): no images found (.jpg, .jpeg or .png, in class subfolders or loose)")
        }
        let items = shard.map { folder.items[$0.range(of: folder.items.count, alignedTo: batchSize)] }.map(Array.init)
            ?? folder.items
        var summary = Summary()
        summary.found = items.count
        summary.emptyClassFolders = folder.emptyClassFolders
        let splitNote = Set(folder.items.map(\.split)).subtracting([.none]).map(\.rawValue).sorted()
        log("found \(folder.items.count) images in \(folder.classes.count) classes"
            + (splitNote.isEmpty ? "" : " (splits: \(splitNote.joined(separator: ", ")))") + " under \(folder.root.path)")
        for empty in folder.emptyClassFolders { log("warning: class folder \(empty) holds no images") }
        for warning in folder.warnings { log("warning: \(warning)") }

        let described = try cut.map { _ in try NetworkLoader.identityAndNormalization(of: weights) }
        let preprocessing = try self.preprocessing.adopting(described?.normalization, log: log)
        let activationShape = cut?.activationShape(config: config, imageSize: preprocessing.crop) ?? preprocessing.outputShape
        let weightsIdentity = described?.identity
        summary.weights = weightsIdentity
        var fingerprint = if let cut, let weightsIdentity {
            CacheFingerprint(config: config, cut: cut, weights: weightsIdentity, preprocessing: preprocessing,
                             imageRoot: folder.root.path)
        } else {
            CacheFingerprint(backbone: config.name, layer: Self.inputLayer, layerPath: Self.inputLayer,
                             activationShape: activationShape, weightsSHA256: "none", weightsSource: "none",
                             preprocess: preprocessing.jsonDescription, imageRoot: folder.root.path)
        }
        fingerprint.shard = shard?.description
        fingerprint.views = views
        if let shard { log("shard \(shard): \(items.count) of the \(folder.items.count) images") }
        let builder = try FeatureCacheBuilder.open(path: outputPath, fingerprint: fingerprint, classes: folder.classes,
                                                   manifest: items, overwrite: overwrite) { item, recorded in
            FileIdentity.current(recorded: recorded, path: folder.url(of: item).path)
        }
        if builder.reusedRowCount > 0 {
            log("reusing \(builder.reusedRowCount) rows of the existing cache \(outputPath)"
                + (builder.refreshedRowCount > 0 ? " (\(builder.refreshedRowCount) files had new times but the same bytes)" : ""))
        }
        if builder.removedRowCount > 0 { log("dropping \(builder.removedRowCount) rows of images that are gone") }
        if builder.recoveredRowCount > 0 { log("resuming: \(builder.recoveredRowCount) rows were already durable from an interrupted run") }

        let pending = builder.pending
        let slotsOfPending = pending.map { 1 + fingerprint.viewCount(of: $0) }
        let largestBatch = min(batchSize, slotsOfPending.reduce(0, +))
        if let refusal = MemoryEstimate.refusal(forward: cut.map { _ in config }, imageShape: preprocessing.outputShape,
                                                batchSize: largestBatch, limit: memoryLimitBytes) {
            builder.abandon()
            throw ExtractionError(refusal)
        }
        // The network is only built when there is something to run it on: a rerun that finds
        // nothing new does not read 500 MB of weights.
        let loaded: LoadedNetwork?
        do {
            loaded = pending.isEmpty ? nil : try cut.map { try NetworkLoader.load(config: config, through: $0, weights: weights) }
        } catch {
            builder.abandon()
            throw error
        }
        for note in loaded?.notes ?? [] { log("weights: \(note)") }
        if !pending.isEmpty {
            let viewed = slotsOfPending.count { $0 > 1 }
            log("extracting \(pending.count) images at \(fingerprint.layer) (\(fingerprint.layerPath)), "
                + "activation \(activationShape), batch \(batchSize)"
                + (viewed > 0 ? ", and \(views) augmented views of each of the \(viewed) training images" : ""))
        }
        let rowSize = activationShape.reduce(1, *)
        let progress = ProgressReporter(label: "images", total: pending.count)
        let augmentation = Augmentation(matching: preprocessing)
        // An image and its views go through the network in forward passes of at most `batchSize` images.
        let decoder = BatchDecoder(folder: folder, items: pending, batchSize: max(1, batchSize / (1 + views)),
                                   imageShape: preprocessing.outputShape,
                                   slotsPerItem: { slotsOfPending[$0] }) { image, index, view, slot in
            guard view > 0 else { return preprocessing.write(image, into: slot) }
            var generator = TrainingRandomness.cachedViewGenerator(path: pending[index].path, view: view)
            augmentation.write(image, generator: &generator, into: slot)
        }
        defer { decoder.cancel() }
        var processed = 0
        let loopStart = ContinuousClock.now
        while let batch = decoder.next() {
            let rows = zip(batch.items, batch.identities).map { (item: $0, identity: $1) }
            let features = if let loaded, let cut {
                try Self.forward(batch.images, through: cut, of: loaded.network, batchSize: batchSize)
            } else { batch.images }
            precondition(features.count == batch.images.shape[0] * rowSize, "activation shape disagrees with the cut")
            summary.failed += try features.data.withUnsafeBufferPointer {
                try builder.append(features: $0, rows: rows, failed: batch.failed)
            }
            summary.processed += batch.items.count
            processed += batch.items.count + batch.failed.count
            progress.update(done: processed, extra: summary.failed.isEmpty ? "" : "\(summary.failed.count) failed")
        }
        progress.finish()
        summary.extractionSeconds = loopStart.secondsElapsed
        let cache = try builder.finish(compress: compress, extractionSeconds: start.secondsElapsed)
        summary.extracted = cache.extractedRows
        summary.reused = cache.reusedRows
        summary.changed = cache.changedRows
        summary.removed = cache.removedRows
        summary.recovered = cache.recoveredRows
        summary.refreshed = cache.refreshedRows
        summary.fileBytes = cache.fileBytes
        summary.path = outputPath
        summary.seconds = start.secondsElapsed
        return summary
    }
}

extension ExtractionJob {
    /// `images` through the network to `cut` in passes of at most `batchSize` images (a batch holding views has more).
    static func forward(_ images: Tensor, through cut: CutPoint, of network: VGG, batchSize: Int) throws -> Tensor {
        let count = images.shape[0]
        guard count > batchSize else { return try network.forward(images, through: cut) }
        var values: [Float] = []
        var activationShape: [Int] = []
        for start in stride(from: 0, to: count, by: batchSize) {
            let part = try network.forward(images.rows(start..<min(start + batchSize, count)), through: cut)
            activationShape = Array(part.shape.dropFirst())
            values += part.data
        }
        return Tensor(shape: [count] + activationShape, data: values)
    }
}

struct ExtractionError: Error, CustomStringConvertible, Sendable {
    package let description: String
    package init(_ description: String) { self.description = description }
}
