import ArgumentParser
import Bottleneck
import Foundation

struct WeightsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weights",
        abstract: "Get torchvision's pretrained VGG weights.",
        subcommands: [DownloadWeights.self])
}

struct DownloadWeights: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "download",
        abstract: "Download torchvision's ImageNet weights to where torch.hub keeps them, as torchvision would.",
        discussion: """
        Fetches the file torchvision.models.vgg16(weights="DEFAULT") downloads (vgg16-397923af.pth, 528 MiB, from \
        download.pytorch.org) into $TORCH_HOME/hub/checkpoints, else $XDG_CACHE_HOME/torch/hub/checkpoints, else \
        ~/.cache/torch/hub/checkpoints: the first place commands look when --weights is not given. The file takes \
        its name only when its SHA-256 starts with the hex digits in that name, as torch.hub checks. An interrupted \
        download is kept as NAME.partial beside it and continued by the next run. Proxies come from https_proxy.

        Examples:
          bottleneck weights download
          bottleneck weights download vgg19 --to weights/
          bottleneck weights download --url file:///mnt/usb/vgg16-397923af.pth
        """)

    @Argument(help: ArgumentHelp("Which weights: \(PretrainedWeights.torchvision.map(\.name).joined(separator: ", ")).",
                                 valueName: "model"))
    var model = PretrainedWeights.vgg16.name
    @Option(help: ArgumentHelp("Download from this http(s) mirror or file:// copy instead of download.pytorch.org.",
                               valueName: "URL"))
    var url: String?
    @Option(help: ArgumentHelp("Put the file in this folder (created if needed) instead of torch.hub's.", valueName: "FOLDER"))
    var to: String?
    @Flag(help: "Replace a file that is already at the destination under the same name but is not these weights.")
    var force = false

    func download() throws -> WeightsDownload {
        guard let weights = PretrainedWeights.named(model) else {
            let names = PretrainedWeights.torchvision.map(\.name)
            throw CommandFailure("unknown model '\(model)': \(names.dropLast().joined(separator: ", ")) or \(names.last ?? "")")
        }
        return WeightsDownload(weights: weights, source: try url.map(WeightsDownload.source(fromArgument:)), folder: to,
                               replacesDifferentFile: force)
    }

    func run() throws {
        let download = try download()
        printErr("downloading \(download.source) to \(download.destination)")
        switch try download.run() {
        case .alreadyPresent:
            print("\(download.destination) is already there, sha256 as its name says; nothing to download")
        case .downloaded(let bytes, let resumedAt, let startedOver):
            let resumed = startedOver ? " (the server cannot resume, so it started over)"
                : resumedAt > 0 ? " (resumed at \(Int(resumedAt).formattedBytes))" : ""
            print("downloaded \(download.destination), \(Int(bytes).formattedBytes), sha256 as its name says\(resumed)")
        }
        if !WeightsChoice.torchvisionCandidates(environment: ProcessInfo.processInfo.environment).contains(download.destination) {
            print("commands use it with --weights \(download.destination)")
        }
    }
}
