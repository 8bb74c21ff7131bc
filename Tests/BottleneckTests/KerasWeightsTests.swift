@testable import Bottleneck
import BottleneckKernels
import Foundation
import XCTest

/// keras.applications' VGG weight files read as torchvision's state dict: the narrow network of
/// Tests/Fixtures/network written in Keras's layout by Tests/Fixtures/network/make_keras_fixtures.py, against the
/// torch-layout fixture and torchvision's activations; damaged Keras files (Tests/Fixtures/weights/keras_*.h5).
final class KerasWeightsTests: XCTestCase {
    private static let config = NetworkParityTests.config
    private static let kerasFile = Fixtures.path("network/narrow_vgg16_keras.h5")

    private func bits(_ tensor: Tensor) -> [UInt32] { tensor.data.map(\.bitPattern) }

    private func temporaryDirectory() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("keras-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.path
    }

    /// Two classes of two training and one validation image each, from the image fixtures.
    private func imageFolder() throws -> String {
        let root = try temporaryDirectory()
        let layout = ["train/a": ["rgb_97x131.png", "gray_64x64.jpg"], "val/a": ["rgb_17x23.jpg"],
                      "train/b": ["photo_500x375_q90.jpg", "rgb_q90_420_300x200.jpg"], "val/b": ["p_trns_64x64.png"]]
        for (folder, files) in layout {
            try FileManager.default.createDirectory(atPath: root + "/" + folder, withIntermediateDirectories: true)
            for file in files {
                try FileManager.default.copyItem(atPath: Fixtures.path("images/" + file), toPath: "\(root)/\(folder)/\(file)")
            }
        }
        return root
    }

    func testKerasFilesGiveTheTorchStateDictExactly() throws {
        let torch = try StateDictFile.open(path: Fixtures.path("network/narrow_vgg16_legacy.pth"))
        let torchvisionKeys = Self.config.stateDictShapes.map(\.key)
        for (name, keys) in [("narrow_vgg16_keras.h5", torchvisionKeys),
                             ("narrow_vgg16_keras_notop.h5", torchvisionKeys.filter { $0.hasPrefix("features.") })] {
            let keras = try StateDictFile.open(path: Fixtures.path("network/" + name))
            XCTAssertEqual(keras.format, .keras, name)
            XCTAssertEqual(keras.entries.map(\.key), keys, name)
            XCTAssertEqual(keras.normalization, KerasWeightsFormat.caffeNormalization, name)
            XCTAssertTrue(keras.notes.contains { $0.contains("BGR to RGB") }, "\(name): \(keras.notes)")
            for key in keys {
                let mine = try keras.tensor(key), theirs = try torch.tensor(key)
                XCTAssertEqual(mine.shape, theirs.shape, "\(name) \(key)")
                XCTAssertEqual(bits(mine), bits(theirs), "\(name) \(key)")
            }
        }
        XCTAssertNil(torch.normalization)
    }

    /// fc6 reads pool5 flattened in torch's (C, H, W) order: a Keras fc1 left in its (H, W, C) order would give other logits.
    func testKerasNetworkGivesTorchvisionActivations() throws {
        let input = try NetworkParityTests.input(64)
        let cases = [("narrow_vgg16_keras.h5", "fc8"), ("narrow_vgg16_keras.h5", "fc6"), ("narrow_vgg16_keras_notop.h5", "pool5")]
        for (file, layer) in cases {
            let cut = try CutPoint(layer, in: Self.config)
            let loaded = try NetworkLoader.load(config: Self.config, through: cut, weights: .file(Fixtures.path("network/" + file)))
            assertClose(try loaded.network.forward(input, through: cut), try NetworkParityTests.activation(64, layer),
                        "\(file) through \(layer)")
        }
        let notop = Fixtures.path("network/narrow_vgg16_keras_notop.h5")
        XCTAssertThrowsError(try NetworkLoader.load(config: Self.config, through: try CutPoint("fc6", in: Self.config),
                                                    weights: .file(notop))) { error in
            XCTAssertTrue("\(error)".contains("missing 2 keys: classifier.0.bias, classifier.0.weight"), "\(error)")
        }
    }

    /// The network takes RGB: the first convolution's input channels were reversed at load, so an image the caffe way (BGR,
    /// 0-255, minus caffe's mean) through Keras's own kernel equals the RGB image normalised by the weights' implied values.
    func testCaffeNormalisationMatchesKerasPreprocessing() throws {
        let normalization = KerasWeightsFormat.caffeNormalization
        let preprocessing = Preprocessing(resize: 2, crop: 2, mean: normalization.mean, std: normalization.std)
        let pixels: [UInt8] = [0, 64, 255, 10, 20, 30, 200, 100, 50, 1, 2, 3]  // 2x2 RGB
        let image = RGBImage(width: 2, height: 2, pixels: pixels)
        let tensor = preprocessing.tensor(from: image)
        let caffeMeanBGR: [Float] = [103.939, 116.779, 123.68]
        for pixel in 0..<4 {
            for channel in 0..<3 {
                let bgr = 2 - channel
                let expected = Float(pixels[pixel * 3 + channel]) - caffeMeanBGR[bgr]
                XCTAssertEqual(tensor.data[channel * 4 + pixel], expected, accuracy: 1e-3, "pixel \(pixel) channel \(channel)")
            }
        }
    }

    /// Extraction normalises as the weights imply, records it in the cache fingerprint and says so; a chosen mean and std win.
    func testExtractionUsesTheNormalisationTheWeightsImply() throws {
        let images = try imageFolder()
        let caffe = KerasWeightsFormat.caffeNormalization
        let implied = Preprocessing(resize: 37, crop: 32, mean: caffe.mean, std: caffe.std)
        let chosen = Preprocessing(resize: 37, crop: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25])
        for (given, expected) in [(Preprocessing(resize: 37, crop: 32), implied), (chosen, chosen)] {
            let cache = try temporaryDirectory() + "/fc7.h5"
            var job = ExtractionJob(imagesRoot: images, outputPath: cache, weights: .file(Self.kerasFile))
            job.config = Self.config
            job.layer = "fc7"
            job.preprocessing = given
            var messages: [String] = []
            _ = try job.run { messages.append($0) }
            XCTAssertTrue(messages.contains { $0.contains("they imply Keras's caffe preprocessing") }, "\(messages)")
            let reader = try FeatureCacheReader(path: cache)
            XCTAssertEqual(try Preprocessing(jsonDescription: reader.fingerprint.preprocess), expected)
            let network = try NetworkLoader.load(config: Self.config, weights: .file(Self.kerasFile))
            let image = expected.tensor(from: try ImageDecoder.decode(path: images + "/" + reader.paths[0]))
            assertClose(try reader.readRows(0..<1), try network.network.forward(image.reshaped([1, 3, 32, 32]),
                                                                                 through: try CutPoint("fc7", in: Self.config)),
                        tolerance: 1e-5, "fc7 of \(reader.paths[0])")
        }
    }

    /// full-finetune trains and validates with the weights' normalisation, and its model (what evaluate and predict
    /// read their preprocessing from) records it.
    func testFullFinetuneUsesTheNormalisationTheWeightsImply() throws {
        let run = try temporaryDirectory()
        var job = FineTuneJob(imagesRoot: try imageFolder(), runDirectory: run, weights: .file(Self.kerasFile))
        job.config = Self.config
        job.settings.epochs = 1
        job.settings.batchSize = 2
        job.settings.imageSize = 32
        _ = try job.run { _ in }
        let model = try TrainedModel(contentsOf: run + "/" + RunDirectory.modelFile)
        XCTAssertEqual(model.preprocessing.mean, KerasWeightsFormat.caffeNormalization.mean)
        XCTAssertEqual(model.preprocessing.std, KerasWeightsFormat.caffeNormalization.std)
    }

    func testInspectSaysWhichNormalisationTheWeightsImply() throws {
        let report = try WeightsInspection(path: Self.kerasFile, config: Self.config).report
        XCTAssertTrue(report.contains("format: Keras HDF5"), report)
        XCTAssertTrue(report.contains("input normalisation: Keras's caffe preprocessing"), report)
        XCTAssertTrue(report.contains("every key and shape matches"), report)
        let torch = try WeightsInspection(path: Fixtures.path("network/narrow_vgg16_legacy.pth"), config: Self.config).report
        XCTAssertFalse(torch.contains("input normalisation"), torch)
    }

    /// Root metadata is single strings; an array of them (Keras's kind of attribute) is left out, not read into one string's room.
    func testStringArrayAttributesAreNotMetadata() throws {
        let file = try StateDictFile.open(path: Fixtures.path("weights/string_array_attribute.h5"))
        XCTAssertEqual(file.format, .hdf5)
        XCTAssertEqual(file.metadata, ["source": "make_keras_fixtures.py"])
        XCTAssertEqual(file.entries.map(\.key), ["features.0.bias"])
    }

    func testDamagedKerasFilesAreOneLineErrorsNamingTheFault() throws {
        let cases = [
            ("keras_missing_group.h5", "layer_names lists layer 'block1_conv2', but the file has no group of that name"),
            ("keras_missing_layer.h5", "layer block3_conv3 follows block3_conv1 in layer_names: a convolution between them is missing"),
            ("keras_wrong_kernel.h5", "layer block1_conv2's kernel has shape [3, 3, 3, 4], but block1_conv1 gives it 4 channels"),
            ("keras_wrong_bias.h5", "layer block1_conv2's bias block1_conv2_b_1:0 has shape [2], expected [4]"),
            ("keras_numeric_layer_names.h5", "the layer_names attribute of the root group cannot be read: it does not hold strings"),
            ("keras_missing_weight.h5", "layer block1_conv2 lists weight 'nothing:0', which is not a dataset in its group"),
            ("keras_empty_kernel.h5", "layer block1_conv2's kernel block1_conv2_W_1:0 has shape [3, 3, 4, 0], with no values"),
        ]
        for (name, expected) in cases {
            let path = Fixtures.path("weights/" + name)
            XCTAssertThrowsError(try StateDictFile.open(path: path), name) { error in
                let message = "\(error)"
                XCTAssertTrue(message.hasPrefix("weights file \(path): "), message)
                XCTAssertTrue(message.contains(expected), message)
                XCTAssertFalse(message.contains("\n"), message)
            }
        }
    }

    /// Shapes of 2^40 values in a file of 10 kB: named when checked against the network and when read, never allocated.
    func testAbsurdShapesAreRefusedWithoutAllocating() throws {
        let path = Fixtures.path("weights/keras_huge.h5")
        let file = try StateDictFile.open(path: path)
        XCTAssertEqual(file.entry("features.2.weight")?.shape, [1 << 40, 4, 3, 3])
        XCTAssertThrowsError(try file.tensor("features.2.weight")) { error in
            XCTAssertTrue("\(error)".contains("too large to load"), "\(error)")
        }
        XCTAssertThrowsError(try NetworkLoader.load(config: Self.config, through: try CutPoint("conv1_2", in: Self.config),
                                                    weights: .file(path))) { error in
            XCTAssertTrue("\(error)".contains("features.2.weight has shape [1099511627776, 4, 3, 3], expected [4, 4, 3, 3]"), "\(error)")
        }
    }
}
