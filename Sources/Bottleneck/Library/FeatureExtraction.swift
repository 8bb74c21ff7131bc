/// Runs the frozen VGG16 prefix once over a folder of labelled images and stores its activations in an HDF5
/// feature cache: what `bottleneck extract` does.
///
/// The folder holds one subfolder per class (`cats/…`, `dogs/…`), or `train/` and `val/` each holding them. A
/// rerun on the same cache extracts only new and changed images and drops the rows of deleted ones; an
/// interrupted run resumes where it stopped. Unreadable images are skipped and listed, never fatal.
///
/// ```swift
/// var extraction = FeatureExtraction(images: "data/pets", cache: "runs/pets-fc7.h5")
/// extraction.weights = .file("vgg16-397923af.pth")
/// let result = try extraction.run()
/// print(result.counts)   // "84 images (84 extracted, 0 reused, 0 changed, 0 removed, 0 failed)"
/// ```
public struct FeatureExtraction: Sendable {
    /// The image folder.
    public var images: String
    /// The HDF5 cache to write or update.
    public var cache: String
    /// The backbone: torchvision's file where torch.hub keeps it unless set.
    public var weights = BackboneWeights.torchvisionCache
    /// Where the network is cut: `fc7` (default), `fc6`, `pool5` or any conv/pool layer (`conv5_3`, `features.29`).
    public var layer = "fc7"
    /// The side of the square the network sees: torchvision's eval transform resizes to 256/224 of it and
    /// center-crops it (224: Resize 256, CenterCrop 224).
    public var imageSize = 224
    /// Images per forward pass.
    public var batchSize = 16
    /// Start the cache afresh instead of refusing one made with other weights, layer or preprocessing.
    public var overwrite = false
    /// Augmented views (RandomResizedCrop + RandomHorizontalFlip) also stored per labelled image outside `val/` and
    /// `test/`, which head training then takes one of per epoch; 0 (default) stores none.
    public var views = 0

    /// An extraction of `images` into `cache` at fc7 with torchvision's eval transform.
    public init(images: String, cache: String) {
        self.images = images
        self.cache = cache
    }

    /// What a run did to the cache.
    public struct Result: Sendable {
        /// "84 images (2 extracted, 80 reused, 1 changed, 3 removed, 1 failed)".
        public let counts: String
        /// Rows the cache holds now.
        public let rows: Int
        /// Images that could not be read, with the reason; they have no row.
        public let failed: [(path: String, reason: String)]
        /// The whole run: scanning, loading the weights, extracting, writing.
        public let seconds: Double
    }

    /// Extracts; `log` receives what a person at the terminal would read (what was found and reused, warnings).
    @discardableResult
    public func run(log: (String) -> Void = { _ in }) throws(BottleneckError) -> Result {
        try BottleneckError.wrapping {
            var job = ExtractionJob(imagesRoot: images, outputPath: cache, weights: weights.resolved(log: log))
            job.layer = layer
            job.batchSize = batchSize
            job.overwrite = overwrite
            job.views = views
            guard Preprocessing.imageSizes.contains(imageSize) else {
                throw BottleneckError(description: "imageSize \(Preprocessing.imageSizeRequirement), got \(imageSize)")
            }
            job.preprocessing = .evaluation(imageSize: imageSize)
            let summary = try job.run(log: log)
            return Result(counts: summary.counts, rows: summary.rows, failed: summary.failed, seconds: summary.seconds)
        }
    }
}
