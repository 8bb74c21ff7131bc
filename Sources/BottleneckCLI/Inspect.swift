import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a feature cache (rows per class and split, what made it, what failed), a trained model or weights.",
        discussion: """
        Also reports an extraction in progress or interrupted (CACHE.h5.partial next to the cache). \
        The cache is plain HDF5: h5py reads it without bottleneck (f["features"], f["paths"].asstr()).

        Given a trained model (a run's model.h5) it prints its mode (head or finetune), classes, cut layer, \
        image size, the backbone weights it was trained on and, from the run's summary.json, its validation accuracy.

        Given a weights file (.pth, .safetensors, or a state-dict .h5) it prints its format, tensors, sha256 \
        and whether VGG16 can run on it, and up to which layer.

        Examples:
          bottleneck inspect runs/pets-fc7.h5
          bottleneck inspect runs/pets-head/model.h5
          bottleneck inspect ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth
        """)

    @Argument(help: ArgumentHelp("A cache written by 'bottleneck extract', a model.h5, or a weights file.", valueName: "FILE"))
    var cache: String
    @Flag(help: "Print the description as JSON.") var json = false

    func run() throws {
        let inspection: CacheInspection
        do {
            inspection = try CacheInspection(path: cache)
        } catch let error as FeatureCacheError where error.kind == .notACache {
            // Not a cache: perhaps a trained model or weights. If it is none of them, say so once.
            do {
                if let model = try ModelInspection(path: cache) {
                    print(json ? String(decoding: try JSONEncoder.snakeCaseDocument().encode(model), as: UTF8.self) : model.report)
                } else {
                    print(try WeightsInspection(path: cache).report)
                }
                return
            } catch let weightsError as WeightsError where weightsError.kind == .unrecognizedFormat {
                throw CommandFailure("\(cache): neither a bottleneck feature cache, a trained model nor a weights file "
                                     + "(\(weightsError.detail))")
            }
        }
        if json {
            // The cache's own attribute names are snake_case; the whole document follows them.
            print(String(decoding: try JSONEncoder.snakeCaseDocument().encode(inspection), as: UTF8.self))
        } else {
            print(inspection.report)
        }
    }
}
