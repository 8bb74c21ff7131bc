import BottleneckKernels

/// A trained model (a `model.h5` of train-head or full-finetune) ready for images: the frozen prefix through the
/// model's cut with the backbone weights it was trained on (checked by sha256), then the head, in evaluation mode.
/// Images are preprocessed as the model records (torchvision's eval transform at its size).
///
/// ```swift
/// let classifier = try ImageClassifier(modelPath: "runs/pets-head/model.h5")
/// let ranked = try classifier.classify(encodedImage: Array(jpegData))
/// print(ranked[0].className, ranked[0].probability)
/// ```
public struct ImageClassifier {
    let model: TrainedModel
    let prefix: LoadedNetwork
    let head: HeadNetwork

    init(model: TrainedModel, weights: WeightsChoice?) throws {
        self.model = model
        prefix = try model.prefix(weights: weights)
        head = try model.head()
    }

    /// Loads `modelPath` and the backbone weights it was trained on: the file it records (found again by name in
    /// torchvision's cache folder if moved), or `weights` when given, which must have the same sha256.
    public init(modelPath: String, weights: BackboneWeights? = nil) throws(BottleneckError) {
        self = try BottleneckError.wrapping {
            try ImageClassifier(model: TrainedModel(contentsOf: modelPath), weights: weights?.resolved(log: { _ in }))
        }
    }

    /// The classes the model tells apart, in the order of its outputs.
    public var classes: [String] { model.classes }

    /// Every class with its probability, most probable first, for a JPEG or PNG file's bytes.
    public func classify(encodedImage bytes: [UInt8]) throws(BottleneckError) -> [ClassProbability] {
        try BottleneckError.wrapping { try classify(ImageDecoder.decode(bytes: bytes, name: "the image")) }
    }

    /// The same for a JPEG or PNG file.
    public func classify(imageAt path: String) throws(BottleneckError) -> [ClassProbability] {
        try BottleneckError.wrapping { try classify(ImageDecoder.decode(path: path)) }
    }

    /// The same for decoded pixels: `width * height` RGB triples, row by row, 8 bits per channel.
    public func classify(rgbPixels: [UInt8], width: Int, height: Int) throws(BottleneckError) -> [ClassProbability] {
        guard width > 0, height > 0, rgbPixels.count == width * height * 3 else {
            let expected = max(width, 0) * max(height, 0) * 3
            throw BottleneckError(description: "rgbPixels holds \(rgbPixels.count) bytes, not width × height × 3 = \(expected)")
        }
        return try BottleneckError.wrapping { try classify(RGBImage(width: width, height: height, pixels: rgbPixels)) }
    }

    private func classify(_ image: RGBImage) throws -> [ClassProbability] {
        let preprocessing = model.preprocessing
        var pixels = Tensor(zeros: [1] + preprocessing.outputShape)
        pixels.data.withUnsafeMutableBufferPointer { preprocessing.write(image, into: $0) }
        return Self.ranked(SoftmaxCrossEntropy.probabilities(try logits(pixels)), row: 0, classes: classes)
    }

    /// images [N, 3, S, S] preprocessed as `model.preprocessing` -> logits [N, classes]
    func logits(_ images: Tensor) throws -> Tensor {
        head.forward(try prefix.network.forward(images, through: model.cut))
    }

    /// probabilities [N, K] -> row `row`'s classes, most probable first (ties: lower class index first).
    static func ranked(_ probabilities: Tensor, row: Int, classes: [String]) -> [ClassProbability] {
        let values = probabilities.data[(row * classes.count)..<((row + 1) * classes.count)]
        return values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }
            .map { ClassProbability(className: classes[$0 - values.startIndex], probability: Double(values[$0])) }
    }
}

/// A class and the probability a model gives it (softmax of its logits).
public struct ClassProbability: Codable, Sendable, Equatable {
    /// One of ``ImageClassifier/classes``.
    public var className: String
    /// In [0, 1]; a classification's probabilities add up to 1.
    public var probability: Double

    enum CodingKeys: String, CodingKey {
        case className = "class"
        case probability
    }
}
