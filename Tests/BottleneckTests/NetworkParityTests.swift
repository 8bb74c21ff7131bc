@testable import Bottleneck
import XCTest
import BottleneckKernels

/// The Swift VGG against torchvision's activations (Tests/Fixtures/network/make_network_fixtures.py):
/// a narrow VGG16 (channels / 16, hidden 64, 10 classes) with torchvision's module indices.
final class NetworkParityTests: XCTestCase {
    static let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
    static let weightFiles = ["narrow_vgg16_legacy.pth", "narrow_vgg16_zip.pth", "narrow_vgg16.safetensors", "narrow_vgg16.h5"]
    static let cuts = ["conv1_1", "pool1", "conv2_2", "conv3_3", "pool3", "conv4_3", "pool4", "conv5_3", "pool5",
                       "avgpool", "fc6", "fc7", "fc8"]

    static func activation(_ size: Int, _ layer: String) throws -> Tensor {
        let manifest = try Fixtures.json("network/manifest.json")
        let entry = (manifest["activations"] as! [String: Any])["\(size)/\(layer)"] as! [String: Any]
        return try Fixtures.float32("network/" + (entry["file"] as! String), shape: entry["shape"] as! [Int])
    }

    static func input(_ size: Int) throws -> Tensor {
        try Fixtures.float32("network/input_\(size).f32", shape: [2, 3, size, size])
    }

    func network(_ file: String = "narrow_vgg16_legacy.pth", through cut: CutPoint? = nil) throws -> VGG {
        try NetworkLoader.load(config: Self.config, through: cut, weights: .file(Fixtures.path("network/" + file))).network
    }

    func testStateDictLayoutMatchesTorchvision() throws {
        let manifest = try Fixtures.json("network/manifest.json")
        let torchShapes = manifest["state_dict"] as! [String: [Int]]
        let ours = Self.config.stateDictShapes
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: ours.map { ($0.key, $0.shape) }), torchShapes)
        XCTAssertEqual(VGGConfig.vgg16.stateDictShapes.count, 32)
        XCTAssertEqual(VGGConfig.vgg16.stateDictShapes.first!.shape, [64, 3, 3, 3])
        XCTAssertEqual(VGGConfig.vgg16.stateDictShapes.first { $0.key == "classifier.0.weight" }!.shape, [4096, 25088])
    }

    func testEveryCutAgreesWithTorchvisionAt64And32Pixels() throws {
        let network = try network()
        for size in [64, 32] {
            let x = try Self.input(size)
            for name in Self.cuts {
                let cut = try CutPoint(name, in: Self.config)
                assertClose(try network.forward(x, through: cut), try Self.activation(size, name), "\(size) px, \(name)")
            }
        }
    }

    func testAllWeightFormatsGiveTheSameLogits() throws {
        let cut = try CutPoint("fc8", in: Self.config)
        let expected = try Self.activation(64, "fc8")
        for file in Self.weightFiles {
            assertClose(try network(file).forward(try Self.input(64), through: cut), expected, file)
        }
    }

    /// Each layer kind on its own: torchvision's activation in, the next torchvision activation out.
    func testEachLayerKindAgainstTorchvision() throws {
        let network = try network()
        func module(_ path: String) -> VGG.Module {
            network.modules[Self.config.layers.first { $0.path == path }!.position]
        }
        guard case .conv(let conv1) = module("features.0"), case .maxPool(let pool) = module("features.16"),
              case .adaptiveAvgPool(let adaptive) = module("avgpool"), case .linear(let fc6) = module("classifier.0"),
              case .linear(let fc7) = module("classifier.3"), case .linear(let fc8) = module("classifier.6")
        else { return XCTFail("unexpected module kinds") }

        var convOut = conv1.forward(try Self.input(64))
        ReLU.forward(&convOut)
        assertClose(convOut, try Self.activation(64, "conv1_1"), "conv1_1 + ReLU")
        assertClose(conv1.forward(try Self.input(64), fusingReLU: true), try Self.activation(64, "conv1_1"), "conv1_1 fused ReLU")
        for size in [64, 32] {
            for (before, after) in [("conv3_3", "pool3"), ("conv4_3", "pool4"), ("conv5_3", "pool5")] {
                assertClose(pool.forward(try Self.activation(size, before)), try Self.activation(size, after),
                            "max pool \(after) at \(size) px")
            }
            assertClose(adaptive.forward(try Self.activation(size, "pool5")), try Self.activation(size, "avgpool"),
                        "adaptive average pool at \(size) px")
            let flattened = try Self.activation(size, "avgpool")
            var hidden = fc6.forward(flattened.reshaped([2, flattened.count / 2]))
            ReLU.forward(&hidden)
            assertClose(hidden, try Self.activation(size, "fc6"), "fc6 + ReLU at \(size) px")
            var second = fc7.forward(try Self.activation(size, "fc6"))
            ReLU.forward(&second)
            assertClose(second, try Self.activation(size, "fc7"), "fc7 + ReLU at \(size) px")
            assertClose(fc8.forward(try Self.activation(size, "fc7")), try Self.activation(size, "fc8"), "fc8 at \(size) px")
        }
    }

    func testPrefixLoadsOnlyTheLayersItNeeds() throws {
        let cut = try CutPoint("conv2_2", in: Self.config)
        let prefix = try network(through: cut)
        XCTAssertEqual(prefix.lastPosition, cut.position)
        assertClose(try prefix.forward(try Self.input(64), through: cut), try Self.activation(64, "conv2_2"), "prefix through conv2_2")
        XCTAssertThrowsError(try prefix.forward(try Self.input(64), through: try CutPoint("fc7", in: Self.config)))
    }

    func testLayerNamesAndTorchvisionPaths() throws {
        let vgg16 = VGGConfig.vgg16
        let expectations = [("conv4_3", "features.22"), ("pool5", "features.30"), ("fc7", "classifier.4"),
                            ("fc6", "classifier.1"), ("fc8", "classifier.6"), ("logits", "classifier.6"),
                            ("features.23", "features.23"), ("features.21", "features.21"), ("pool4", "features.23"),
                            ("classifier.4", "classifier.4"), ("avgpool", "avgpool"), ("CONV1_1", "features.1")]
        for (name, path) in expectations {
            XCTAssertEqual(try CutPoint(name, in: vgg16).layer.path, path, name)
        }
        XCTAssertEqual(vgg16.layers.count, 31 + 1 + 7)
        XCTAssertEqual(try CutPoint("fc7", in: vgg16).activationShape(config: vgg16, imageSize: 224), [4096])
        XCTAssertEqual(try CutPoint("pool5", in: vgg16).activationShape(config: vgg16, imageSize: 224), [512, 7, 7])
        XCTAssertEqual(try CutPoint("conv4_3", in: vgg16).activationShape(config: vgg16, imageSize: 224), [512, 28, 28])
        XCTAssertEqual(VGGConfig.vgg16.forwardFlops(through: try CutPoint("fc8", in: vgg16), imageSize: 224) / 100_000_000, 309)
    }

    func testUnknownLayerAndBadInputAreClearErrors() throws {
        XCTAssertThrowsError(try CutPoint("conv6_1", in: .vgg16)) { error in
            XCTAssertTrue("\(error)".contains("unknown layer 'conv6_1'"), "\(error)")
        }
        XCTAssertThrowsError(try CutPoint("features.99", in: .vgg16))
        let network = VGG.randomlyInitialized(config: Self.config, seed: 1)
        let cut = try CutPoint("fc7", in: Self.config)
        XCTAssertThrowsError(try network.forward(Tensor(zeros: [1, 3, 16, 16]), through: cut)) { error in
            XCTAssertTrue("\(error)".contains("too small"), "\(error)")
        }
        XCTAssertThrowsError(try network.forward(Tensor(zeros: [1, 1, 64, 64]), through: cut))
    }

    func testWrongArchitectureIsRefusedNamingTheFile() throws {
        let wide = VGGConfig.vgg16.narrowed(by: 8, hidden: 64, classes: 10)
        let path = Fixtures.path("network/narrow_vgg16_legacy.pth")
        XCTAssertThrowsError(try NetworkLoader.load(config: wide, weights: .file(path))) { error in
            XCTAssertTrue("\(error)".contains(path) && "\(error)".contains("features.0.weight has shape [4, 3, 3, 3]"), "\(error)")
        }
    }

    func testRandomInitialisationIsSeededAndTorchvisionScaled() throws {
        let first = VGG.randomlyInitialized(config: Self.config, seed: 7)
        let second = VGG.randomlyInitialized(config: Self.config, seed: 7)
        guard case .conv(let a) = first.modules[0], case .conv(let b) = second.modules[0],
              case .linear(let fc) = first.modules[Self.config.layers.first { $0.path == "classifier.0" }!.position]
        else { return XCTFail("unexpected module kinds") }
        XCTAssertEqual(a.weight, b.weight)
        XCTAssertEqual(a.bias.maxAbs, 0)
        let std = (fc.weight.data.map { $0 * $0 }.reduce(0, +) / Float(fc.weight.count)).squareRoot()
        XCTAssertEqual(std, 0.01, accuracy: 0.001)
    }

    func testWeightsInspectionSaysWhatAFileCanRun() throws {
        let match = try WeightsInspection(path: Fixtures.path("network/narrow_vgg16.safetensors"), config: Self.config)
        XCTAssertNil(match.problem)
        XCTAssertEqual(match.deepestUsableLayer, "fc8")
        let mismatch = try WeightsInspection(path: Fixtures.path("network/narrow_vgg16.safetensors"), config: .vgg16)
        XCTAssertNotNil(mismatch.problem)
        XCTAssertTrue(mismatch.report.contains("usable cut layers: none"), mismatch.report)
    }
}
