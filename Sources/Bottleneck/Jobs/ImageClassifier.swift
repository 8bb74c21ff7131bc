import BottleneckKernels

/// A trained model ready for images: the frozen prefix through the model's cut, with the backbone
/// weights it was trained on (checked by sha256), then the head, both in evaluation mode.
struct ImageClassifier {
    let model: TrainedModel
    let prefix: LoadedNetwork
    let head: HeadNetwork

    init(model: TrainedModel, weights: WeightsChoice?) throws {
        self.model = model
        prefix = try model.prefix(weights: weights)
        head = try model.head()
    }

    /// images [N, 3, S, S] preprocessed as `model.preprocessing` -> logits [N, classes]
    func logits(_ images: Tensor) throws -> Tensor {
        head.forward(try prefix.network.forward(images, through: model.cut))
    }
}
