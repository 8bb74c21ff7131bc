import ArgumentParser
import Bottleneck

struct Bottleneck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bottleneck",
        abstract: "Transfer learning with a frozen VGG16 on ordinary CPUs.",
        discussion: """
        Cut a pre-trained VGG16 at a layer, run the frozen part once over your images into an HDF5 feature \
        cache, then train a new fully connected head from that cache in seconds.
        """,
        subcommands: [Extract.self, Merge.self, Inspect.self, TrainHead.self, FullFinetune.self, Evaluate.self, Predict.self, Run.self, ReportCommand.self, Doctor.self, Bench.self])
}
