import ArgumentParser
import Bottleneck
import Foundation

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a feature cache: what made it, its rows per class and split, and what failed.",
        discussion: """
        Also reports an extraction in progress or interrupted (CACHE.h5.partial next to the cache). \
        The cache is plain HDF5: h5py reads it without bottleneck (f["features"], f["paths"].asstr()).

        Example: bottleneck inspect runs/pets-fc7.h5
        """)

    @Argument(help: "The cache file written by 'bottleneck extract'.") var cache: String
    @Flag(help: "Print the description as JSON.") var json = false

    func run() throws {
        let inspection = try CacheInspection(path: cache)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            // The cache's own attribute names are snake_case; the whole document follows them.
            encoder.keyEncodingStrategy = .convertToSnakeCase
            print(String(decoding: try encoder.encode(inspection), as: UTF8.self))
        } else {
            print(inspection.report)
        }
    }
}
