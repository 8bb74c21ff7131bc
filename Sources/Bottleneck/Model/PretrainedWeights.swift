import Foundation

/// A pretrained weights file torchvision publishes: the file torch.hub saves it as, and where it downloads it from.
package struct PretrainedWeights: Sendable, Equatable {
    /// The architecture, as `VGGConfig.named` and a pipeline's `backbone` spell it.
    package let name: String
    /// The name torch.hub saves it under, which carries the start of its SHA-256 (`vgg16-397923af.pth`).
    package let fileName: String
    package let url: URL

    package init(name: String, fileName: String, url: URL) {
        self.name = name
        self.fileName = fileName
        self.url = url
    }

    private init(torchvision name: String, fileName: String) {
        self.init(name: name, fileName: fileName, url: URL(string: "https://download.pytorch.org/models/" + fileName)!)
    }

    package static let vgg11 = PretrainedWeights(torchvision: "vgg11", fileName: "vgg11-8a719046.pth")
    package static let vgg13 = PretrainedWeights(torchvision: "vgg13", fileName: "vgg13-19584684.pth")
    package static let vgg16 = PretrainedWeights(torchvision: "vgg16", fileName: "vgg16-397923af.pth")
    package static let vgg19 = PretrainedWeights(torchvision: "vgg19", fileName: "vgg19-dcbb9e9d.pth")

    /// torchvision's ImageNet weights (`weights="DEFAULT"`) of each architecture in `VGGConfig.torchvision`.
    package static let torchvision = [vgg11, vgg13, vgg16, vgg19]

    package static func named(_ name: String) -> PretrainedWeights? {
        torchvision.first { $0.name == name.lowercased() }
    }

    /// The hex digits torch.hub's `check_hash` compares with the start of the file's SHA-256: those between the
    /// last '-' of the name and the next '.'. Nil when the name carries none.
    package var sha256Prefix: String? {
        guard let dash = fileName.lastIndex(of: "-") else { return nil }
        let digits = fileName[fileName.index(after: dash)...].prefix { $0 != "." }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { return nil }
        return String(digits)
    }
}
