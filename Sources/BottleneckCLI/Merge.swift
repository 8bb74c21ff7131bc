import ArgumentParser
import Bottleneck
import BottleneckKernels

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Join the caches of a sharded extraction (extract --shard I/N) into one cache.",
        discussion: """
        The merged cache holds the shards' rows in shard order, which is the order one process would have \
        written: its /features are byte-for-byte those of an unsharded run. It is a plain copy (not an HDF5 \
        virtual dataset), so it does not depend on the shard files afterwards. All shards 1/N … N/N must be \
        given and must have been made with the same weights, layer, preprocessing and image root.

        Example (after a Slurm job array, see pipelines/slurm/):
          bottleneck merge --out runs/pets-fc7.h5 runs/shards/pets-fc7.shard-*.h5
        """)

    @Option(help: ArgumentHelp("The merged cache to write (its folder is created if missing). " + outputPolicy, valueName: "CACHE.h5"))
    var out: String
    @Argument(help: ArgumentHelp("The shard caches, in any order.", valueName: "SHARD.h5")) var shards: [String]
    @Flag(help: "Compress /features with shuffle+deflate.") var compress = false
    @Flag(help: "Replace an existing cache at --out made with other settings.") var overwrite = false

    func run() throws {
        let summary = try CacheMerge.merge(shards: shards, into: out, compress: compress, overwrite: overwrite, log: printErr)
        print("merge: \(shards.count) shards, \(summary.rows) rows, \(summary.failed) failed; "
              + "\(summary.path) (\(summary.fileBytes.formattedBytes))")
    }
}
