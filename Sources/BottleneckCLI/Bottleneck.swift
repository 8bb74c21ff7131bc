import ArgumentParser
import Foundation
import Bottleneck
import BottleneckKernels

struct BottleneckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bottleneck",
        abstract: "Transfer learning with a frozen VGG16 on ordinary CPUs.",
        discussion: """
        Cut a pre-trained VGG16 at a layer, run the frozen part once over your images into an HDF5 feature \
        cache, then train a new fully connected head from that cache in seconds.
        """,
        version: BottleneckVersion.current,
        subcommands: [Extract.self, Merge.self, Inspect.self, TrainHead.self, FullFinetune.self, Evaluate.self, Predict.self, Run.self,
                      ReportCommand.self, Doctor.self, WeightsCommand.self, Bench.self])
}

/// The `bottleneck` executable: re-runs itself once with a fast OpenBLAS kernel where Debian's would pick a slow one,
/// then parses the command line and runs the command.
public func runBottleneckCommand() -> Never {
    BLASRuntime.reexecWithFastKernelIfNeeded()
    FreedMemory.keepForReuse()
    BottleneckCommand.main()
    exit(0)
}
