import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct Extract: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the frozen VGG16 once over an image folder and store its activations in an HDF5 cache.",
        discussion: """
        DIR follows torchvision's ImageFolder convention: one subfolder per class (sorted names give the class \
        indices). When DIR holds train/ val/ test/, each in that convention, the split is recorded. Loose images \
        are stored unlabeled (label -1). .jpg, .jpeg and .png in any letter case.

        The job is resumable: kill it at any moment and run the same command again; it continues from the last \
        finished batch. Run it again after the folder changed and the cache follows it exactly, as make would: new \
        images and images whose contents changed are extracted, rows of deleted images are dropped, the rest is \
        reused; the result has the bytes a fresh extraction would. A file counts as unchanged when its size, \
        times and inode are those recorded, or else when its SHA-256 is. Images that cannot be read are skipped \
        and listed in the cache's /failed group.

        Examples:
          bottleneck extract --images data/flowers --out runs/flowers-fc7.h5
          bottleneck extract --images photos --out runs/photos/pool5.h5 --layer pool5 \\
              --weights vgg16-397923af.pth --compress
        """)

    @Option(name: .long, help: ArgumentHelp("Image folder (ImageFolder layout).", valueName: "DIR"))
    var images: String

    @Option(name: .long, help: ArgumentHelp("The HDF5 feature cache to write or continue (its folder is created if missing). "
                                            + outputPolicy, valueName: "CACHE.h5"))
    var out: String

    @OptionGroup var weights: WeightsOption

    @Option(help: ArgumentHelp("""
        Cut layer whose activation is stored: a name (conv4_3, pool5, fc6, fc7) or a torchvision path \
        (features.23, classifier.4); names mean the output after the layer's ReLU. 'input' stores the \
        preprocessed images.
        """, valueName: "LAYER"))
    var layer = "fc7"

    @Option(parsing: .unconditional, help: "Images per forward pass.") var batchSize = 16
    @Flag(help: "Compress /features with shuffle+deflate (smaller file, slower to write and read).") var compress = false
    @Flag(help: "Discard an existing cache or interrupted run at --out that was made with other settings.") var overwrite = false
    @Flag(help: "Exit non-zero if any image could not be read (default: only when none could).") var strict = false
    @Option(help: ArgumentHelp("""
        Extract only part I of N of the sorted image list (a contiguous slice), e.g. from a Slurm job array; \
        join the shard caches with 'bottleneck merge'.
        """, valueName: "I/N"))
    var shard: String?
    @Option(help: ArgumentHelp("""
        Also store K augmented views (torchvision's RandomResizedCrop + RandomHorizontalFlip) of every labeled image \
        outside val/ and test/, which train-head trains on; extraction of those images costs 1+K forward passes.
        """, valueName: "K"))
    var views = 0
    @OptionGroup var threads: ThreadsOption

    func run() throws {
        threads.apply()
        var job = ExtractionJob(imagesRoot: images, outputPath: out,
                                weights: weights.resolved(usingWeights: layer.lowercased() != ExtractionJob.inputLayer))
        job.layer = layer
        job.batchSize = batchSize
        job.compress = compress
        job.overwrite = overwrite
        job.shard = try shard.map(Shard.init)
        job.views = views
        let summary = try job.run(log: printErr)
        for failure in summary.failed { printErr("failed: \(failure.path): \(failure.reason)") }
        let rate = summary.processed > 0
            ? String(format: ", %.2f img/s (%.2f img/s in the extraction loop)", summary.imagesPerSecond, summary.loopImagesPerSecond)
            : ""
        print("extract: \(summary.counts) in " + String(format: "%.1f s", summary.seconds) + rate
              + "; \(summary.path) (\(summary.fileBytes.formattedBytes))")
        printRandomWeightsNote(summary.weights)
        if summary.rows == 0 {
            throw CommandFailure("no image could be extracted from \(images) (\(summary.failed.count) failed)")
        }
        if strict && !summary.failed.isEmpty {
            throw CommandFailure("\(summary.failed.count) images could not be read (--strict)")
        }
    }
}
