import Foundation

/// `bottleneck extract`: every image of a folder through the frozen network once, into
/// the HDF5 feature cache. Decoding runs on its own thread ahead of the network; each
/// finished batch is durable before the next starts, so a crash loses at most one batch.
public struct ExtractionJob: Sendable {
    public var imagesRoot: String
    public var outputPath: String
    public var weights: WeightsChoice
    public var layer: String = "fc7"
    public var batchSize: Int = 16
    public var compress: Bool = false
    public var overwrite: Bool = false
    public var preprocessing: Preprocessing = .imageNet
    public var config: VGGConfig = .vgg16
    /// Only this contiguous part of the sorted image list (`--shard 2/4`), for scale-out; `bottleneck merge`
    /// joins the shards' caches into what one process would have written.
    public var shard: Shard?
    /// Bytes a run may plan to use; nil: MemAvailable from /proc/meminfo.
    public var memoryLimitBytes: Int?

    /// `--layer input` stores the preprocessed images themselves.
    public static let inputLayer = "input"

    public init(imagesRoot: String, outputPath: String, weights: WeightsChoice) {
        self.imagesRoot = imagesRoot
        self.outputPath = outputPath
        self.weights = weights
    }

    /// Every image found is exactly one of extracted (new to the cache), reused, changed (extracted again:
    /// its contents changed) or failed; `removed` rows belonged to images that are gone.
    public struct Summary: Sendable {
        public var found = 0
        public var extracted = 0
        public var reused = 0
        public var changed = 0
        public var removed = 0
        /// Rows an interrupted run had made durable (counted in extracted or changed too).
        public var recovered = 0
        /// Reused rows whose file had new times or another inode but the same bytes.
        public var refreshed = 0
        /// Images this run put through the network.
        public var processed = 0
        public var failed: [(path: String, reason: String)] = []
        public var seconds = 0.0
        /// Seconds of the decode + network loop alone, without loading weights or writing the final file.
        public var extractionSeconds = 0.0
        public var fileBytes = 0
        public var path = ""
        public var emptyClassFolders: [String] = []

        /// Images this run put through the network, per second of the whole run.
        public var imagesPerSecond: Double { seconds > 0 ? Double(processed) / seconds : 0 }
        /// The same per second of the extraction loop: the figure to set beside `bench forward`.
        public var loopImagesPerSecond: Double { extractionSeconds > 0 ? Double(processed) / extractionSeconds : 0 }
        /// Rows the cache holds now.
        public var rows: Int { extracted + reused + changed }

        /// "84 images (2 extracted, 80 reused, 1 changed, 3 removed, 1 failed)": the counts add up to the images found;
        /// rows an interrupted run had made durable are named after them.
        public var counts: String {
            "\(found) images (\(extracted) extracted, \(reused) reused, \(changed) changed, \(removed) removed, \(failed.count) failed"
                + (recovered > 0 ? "; \(recovered) of them recovered from an interrupted run)" : ")")
        }
    }

    /// Runs the job. `log` gets one-off messages (what was found, reused, warnings);
    /// progress is drawn on stderr by a ProgressReporter.
    public func run(log: (String) -> Void) throws -> Summary {
        let start = ResourceUsage.now
        if let problem = MemoryEstimate.batchSizeProblem(batchSize) { throw ExtractionError(problem) }
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

        let isInputLayer = layer.lowercased() == Self.inputLayer
        let cut = isInputLayer ? nil : try CutPoint(layer, in: config)
        let activationShape = cut?.activationShape(config: config, imageSize: preprocessing.crop) ?? preprocessing.outputShape
        let weightsIdentity = try cut.map { _ in try NetworkLoader.identity(of: weights) }
        var fingerprint = if let cut, let weightsIdentity {
            CacheFingerprint(config: config, cut: cut, weights: weightsIdentity, preprocessing: preprocessing,
                             imageRoot: folder.root.path)
        } else {
            CacheFingerprint(backbone: config.name, layer: Self.inputLayer, layerPath: Self.inputLayer,
                             activationShape: activationShape, weightsSHA256: "none", weightsSource: "none",
                             preprocess: preprocessing.jsonDescription, imageRoot: folder.root.path)
        }
        fingerprint.shard = shard?.description
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
        let largestBatch = min(batchSize, pending.count)
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
            log("extracting \(pending.count) images at \(fingerprint.layer) (\(fingerprint.layerPath)), "
                + "activation \(activationShape), batch \(batchSize)")
        }
        let rowSize = activationShape.reduce(1, *)
        let progress = ProgressReporter(label: "images", total: pending.count)
        let decoder = BatchDecoder(folder: folder, items: pending, batchSize: batchSize, preprocessing: preprocessing)
        defer { decoder.cancel() }
        var processed = 0
        let loopStart = ResourceUsage.now
        while let batch = decoder.next() {
            let rows = zip(batch.items, batch.identities).map { (item: $0, identity: $1) }
            let features = if let loaded, let cut { try loaded.network.forward(batch.images, through: cut) } else { batch.images }
            precondition(features.count == batch.items.count * rowSize, "activation shape disagrees with the cut")
            summary.failed += try features.data.withUnsafeBufferPointer { try builder.append(features: $0, rows: rows, failed: batch.failed) }
            summary.processed += batch.items.count
            processed += batch.items.count + batch.failed.count
            progress.update(done: processed, extra: summary.failed.isEmpty ? "" : "\(summary.failed.count) failed")
        }
        progress.finish()
        summary.extractionSeconds = ResourceUsage.now - loopStart
        let cache = try builder.finish(compress: compress)
        summary.extracted = cache.extractedRows
        summary.reused = cache.reusedRows
        summary.changed = cache.changedRows
        summary.removed = cache.removedRows
        summary.recovered = cache.recoveredRows
        summary.refreshed = cache.refreshedRows
        summary.fileBytes = cache.fileBytes
        summary.path = outputPath
        summary.seconds = ResourceUsage.now - start
        return summary
    }
}

/// One of `count` contiguous, nearly equal parts of a sorted list: "2/4" is the second quarter.
/// Parts are cut at whole batches, so that every shard runs the same batches as one process
/// would, and the merged cache has the same bytes (while no image fails to decode: a failure
/// shifts the later batches of a single run, and the merged rows then agree to float rounding).
public struct Shard: Sendable, Equatable, CustomStringConvertible {
    /// 1-based, as job arrays count.
    public let index: Int
    public let count: Int

    /// Far more processes than one extraction runs; the bound keeps a cache's hostile `shard` attribute from
    /// sizing merge's bookkeeping.
    public static let maximumCount = 100_000

    public init(_ text: String) throws {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]), (1...Self.maximumCount).contains(count),
              (1...count).contains(index)
        else { throw ExtractionError("--shard \(text): expected I/N with 1 <= I <= N <= \(Self.maximumCount), e.g. 2/4") }
        self.index = index
        self.count = count
    }

    public var description: String { "\(index)/\(count)" }

    public func range(of total: Int, alignedTo batchSize: Int) -> Range<Int> {
        let batches = (total + batchSize - 1) / batchSize
        return min(total, (index - 1) * batches / count * batchSize)..<min(total, index * batches / count * batchSize)
    }
}

public struct ExtractionError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Decodes and preprocesses images on a background thread, one batch ahead of the
/// network (two batches buffered), so the cores never wait for JPEG decoding.
final class BatchDecoder: @unchecked Sendable {
    struct Batch {
        /// [items.count, 3, crop, crop]
        var images: Tensor
        var items: [ImageFolder.Item]
        /// What each item's file held when it was read: the bytes that were decoded.
        var identities: [FileIdentity]
        var failed: [(path: String, reason: String)]
    }

    private let condition = NSCondition()
    private var ready: [Batch] = []
    private var finished = false
    private var cancelled = false
    static let capacity = 2

    /// Writes image `items[index]` as a [3, S, S] tensor into a batch slot.
    typealias Transform = @Sendable (_ image: RGBImage, _ index: Int, _ slot: UnsafeMutableBufferPointer<Float>) -> Void

    convenience init(folder: ImageFolder, items: [ImageFolder.Item], batchSize: Int, preprocessing: Preprocessing) {
        self.init(folder: folder, items: items, batchSize: batchSize, imageShape: preprocessing.outputShape) { image, _, slot in
            preprocessing.write(image, into: slot)
        }
    }

    /// `transform` runs on the decoding thread; training uses it for per-image random augmentation.
    init(folder: ImageFolder, items: [ImageFolder.Item], batchSize: Int, imageShape: [Int], transform: @escaping Transform) {
        let thread = Thread { [self] in
            self.produce(folder: folder, items: items, batchSize: batchSize, imageShape: imageShape, transform: transform)
        }
        thread.name = "bottleneck-decode"
        thread.start()
    }

    /// The next batch in order, or nil when every image has been handed out.
    func next() -> Batch? {
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty && !finished { condition.wait() }
        guard !ready.isEmpty else { return nil }
        let batch = ready.removeFirst()
        condition.signal()
        return batch
    }

    func cancel() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        condition.unlock()
    }

    private func produce(folder: ImageFolder, items: [ImageFolder.Item], batchSize: Int, imageShape: [Int], transform: Transform) {
        var index = 0
        let slotSize = imageShape.reduce(1, *)
        while index < items.count {
            var batchItems: [ImageFolder.Item] = []
            var identities: [FileIdentity] = []
            var failed: [(path: String, reason: String)] = []
            // Sized by the images left, not the batch size: `--batch-size 8000` on 2 images allocates 2 slots.
            let slotCount = min(batchSize, items.count - index)
            var buffer = [Float](repeating: 0, count: slotCount * slotSize)
            buffer.withUnsafeMutableBufferPointer { slots in
                while batchItems.count < batchSize && index < items.count {
                    let item = items[index]
                    index += 1
                    do {
                        let path = folder.url(of: item).path
                        let file = try FileIdentity.read(path: path)
                        let image = try ImageDecoder.decode(bytes: file.bytes, name: path)
                        let slot = batchItems.count * slotSize
                        transform(image, index - 1, UnsafeMutableBufferPointer(rebasing: slots[slot..<(slot + slotSize)]))
                        batchItems.append(item)
                        identities.append(file.identity)
                    } catch let error as ImageDecodingError {
                        failed.append((item.path, error.reason))
                    } catch {
                        failed.append((item.path, "\(error)"))
                    }
                }
            }
            buffer.removeLast((slotCount - batchItems.count) * slotSize)
            let batch = Batch(images: Tensor(shape: [batchItems.count] + imageShape, data: buffer),
                              items: batchItems, identities: identities, failed: failed)
            condition.lock()
            while ready.count >= Self.capacity && !cancelled { condition.wait() }
            if cancelled {
                condition.unlock()
                return
            }
            ready.append(batch)
            condition.signal()
            condition.unlock()
        }
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }
}
