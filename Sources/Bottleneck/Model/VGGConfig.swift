import BottleneckKernels

/// A VGG architecture as torchvision describes it: the `features` list of conv widths and
/// pools ("cfgs" in torchvision/models/vgg.py), then avgpool to 7x7 and a three-layer classifier.
package struct VGGConfig: Sendable, Equatable, Codable {
    package enum Item: Sendable, Equatable, Codable {
        case conv(Int)
        case pool
    }

    package var name: String
    package var features: [Item]
    var inputChannels: Int
    var hidden: Int
    package var classes: Int
    var pooledSize: Int

    package init(name: String, features: [Item], inputChannels: Int = 3, hidden: Int = 4096, classes: Int = 1000,
                pooledSize: Int = 7) {
        self.name = name
        self.features = features
        self.inputChannels = inputChannels
        self.hidden = hidden
        self.classes = classes
        self.pooledSize = pooledSize
    }

    /// torchvision's cfgs "A", "B", "D", "E": 64/128/256/512 widths, "M" for a pool.
    private static func torchvisionFeatures(_ convsPerBlock: [Int]) -> [Item] {
        zip(convsPerBlock, [64, 128, 256, 512, 512]).flatMap { count, width in
            Array(repeating: Item.conv(width), count: count) + [.pool]
        }
    }

    static let vgg11 = VGGConfig(name: "vgg11", features: torchvisionFeatures([1, 1, 2, 2, 2]))
    static let vgg13 = VGGConfig(name: "vgg13", features: torchvisionFeatures([2, 2, 2, 2, 2]))
    package static let vgg16 = VGGConfig(name: "vgg16", features: torchvisionFeatures([2, 2, 3, 3, 3]))
    static let vgg19 = VGGConfig(name: "vgg19", features: torchvisionFeatures([2, 2, 4, 4, 4]))

    /// The architectures torchvision ships weights for.
    package static let torchvision = [vgg11, vgg13, vgg16, vgg19]

    static func named(_ name: String) -> VGGConfig? {
        torchvision.first { $0.name == name.lowercased() }
    }

    /// The same topology with every width divided by `factor`: the test-suite networks.
    func narrowed(by factor: Int, hidden: Int, classes: Int) -> VGGConfig {
        VGGConfig(name: "\(name)-narrow\(factor)",
                  features: features.map { item in
                      if case .conv(let width) = item { return .conv(max(1, width / factor)) }
                      return item
                  },
                  inputChannels: inputChannels, hidden: hidden, classes: classes, pooledSize: pooledSize)
    }

    /// Channels entering the classifier after the last conv block.
    var lastConvWidth: Int {
        features.reversed().compactMap { item -> Int? in
            if case .conv(let width) = item { return width }
            return nil
        }.first ?? inputChannels
    }

    var flattenedFeatures: Int { lastConvWidth * pooledSize * pooledSize }

    /// Why a configuration read from a file cannot be built, nil when it can. Every width, count and size is
    /// bounded (each far above any VGG's) before a layer list or parameter shape is computed from it, so no
    /// product overflows.
    var problem: String? {
        let bounded = [("inputChannels", inputChannels, 1...64), ("hidden", hidden, 1...1 << 16),
                       ("classes", classes, 1...1 << 20), ("pooledSize", pooledSize, 1...64)]
        if let (name, value, range) = bounded.first(where: { !$0.2.contains($0.1) }) {
            return "\(name) is \(value), outside \(range.lowerBound)...\(range.upperBound)"
        }
        guard (1...64).contains(features.count) else { return "it lists \(features.count) feature layers, outside 1...64" }
        for case .conv(let width) in features where !(1...1 << 14).contains(width) {
            return "a convolution is \(width) channels wide, outside 1...\(1 << 14)"
        }
        return nil
    }
}
