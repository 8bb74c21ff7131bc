@testable import Bottleneck
import XCTest
import BottleneckKernels

/// Backward passes against central finite differences, and one to three optimizer steps, losses,
/// gradients and learning-rate schedules against torch (Tests/Fixtures/training/make_training_fixtures.py).
final class TrainingCoreTests: XCTestCase {
    // MARK: gradients against finite differences

    /// Linear is linear in every argument, so central differences are exact but for the Float rounding
    /// of the forward (~1e-7 of the objective, over a step of 2e-2): 1e-4 leaves a wide margin.
    func testLinearBackwardMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 1)
        let x = randomTensor([3, 6], &generator)
        let weight = randomTensor([4, 6], &generator)
        let bias = randomTensor([4], &generator)
        let probe = randomTensor([3, 4], &generator)
        func objective(_ x: Tensor, _ weight: Tensor, _ bias: Tensor) -> Double {
            dot(Linear(weight: weight, bias: bias).forward(x), probe)
        }
        let linear = Linear(weight: weight, bias: bias)
        let (gradInput, gradWeight, gradBias) = linear.backward(input: x, gradOutput: probe)
        let step: Float = 1e-2
        assertClose(gradInput!, numericalGradient(at: x, step: step) { objective($0, weight, bias) }, tolerance: 1e-4, "dx")
        assertClose(gradWeight, numericalGradient(at: weight, step: step) { objective(x, $0, bias) }, tolerance: 1e-4, "dW")
        assertClose(gradBias, numericalGradient(at: bias, step: step) { objective(x, weight, $0) }, tolerance: 1e-4, "db")
        XCTAssertNil(linear.backward(input: x, gradOutput: probe, computingGradInput: false).gradInput)
    }

    func testReLUBackwardMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 2)
        // Kept clear of the kink at 0, where the derivative is undefined and a difference would straddle it.
        var x = randomTensor([4, 5], &generator)
        for index in x.data.indices where abs(x.data[index]) < 0.05 { x.data[index] = 0.5 }
        let probe = randomTensor([4, 5], &generator)
        var y = x
        ReLU.forward(&y)
        var gradient = probe
        ReLU.backward(output: y, gradOutput: &gradient)
        let numerical = numericalGradient(at: x, step: 1e-2) { x in
            var y = x
            ReLU.forward(&y)
            return dot(y, probe)
        }
        assertClose(gradient, numerical, tolerance: 1e-4, "relu dx")
    }

    func testDropoutBackwardMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 3)
        let x = randomTensor([4, 8], &generator)
        let probe = randomTensor([4, 8], &generator)
        let dropout = Dropout(probability: 0.4)
        // The same seed for every evaluation: the mask is fixed, and dropout is linear in x.
        func forward(_ x: Tensor, mask: inout Tensor) -> Tensor {
            var maskGenerator = SeededGenerator(seed: 33)
            var y = x
            dropout.forwardTraining(&y, mask: &mask, generator: &maskGenerator)
            return y
        }
        var mask = Tensor(zeros: [])
        _ = forward(x, mask: &mask)
        var gradient = probe
        dropout.backward(gradOutput: &gradient, mask: mask)
        let numerical = numericalGradient(at: x, step: 1e-2) { x in
            var scratch = Tensor(zeros: [])
            return dot(forward(x, mask: &scratch), probe)
        }
        assertClose(gradient, numerical, tolerance: 1e-4, "dropout dx")
    }

    /// The loss is summed in Double, so the differences carry only the O(step²) truncation: with a step
    /// of 1e-3 on logits of order 3 that is below 1e-6 of the gradient.
    func testSoftmaxCrossEntropyGradientMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 4)
        var logits = randomTensor([4, 5], &generator)
        for index in logits.data.indices { logits.data[index] *= 3 }
        let labels: [Int32] = [0, 3, 4, 3]
        var gradient = Tensor(zeros: [])
        let loss = SoftmaxCrossEntropy.lossAndGradient(logits: logits, labels: labels, gradLogits: &gradient)
        XCTAssertEqual(loss.mean, SoftmaxCrossEntropy.loss(logits: logits, labels: labels).mean)
        let numerical = numericalGradient(at: logits, step: 1e-3) {
            SoftmaxCrossEntropy.loss(logits: $0, labels: labels).mean
        }
        assertClose(gradient, numerical, tolerance: 1e-4, "dlogits")
    }

    /// A deep head as the cut below fc7 needs it: fc → ReLU → dropout → fc → cross-entropy, gradients
    /// passed down through every backward to the first layer's weights and the input.
    func testChainedHeadBackwardMatchesFiniteDifferences() {
        var generator = SeededGenerator(seed: 6)
        let x = randomTensor([3, 6], &generator)
        let first = Linear(weight: randomTensor([5, 6], &generator), bias: randomTensor([5], &generator))
        // Steps of 1e-3 move a pre-activation by ~1e-2 at most; one closer to 0 would straddle the ReLU kink.
        XCTAssertGreaterThan(first.forward(x).data.map(abs).min()!, 0.02, "data too close to the ReLU kink")
        let second = Linear(weight: randomTensor([4, 5], &generator), bias: randomTensor([4], &generator))
        let dropout = Dropout(probability: 0.3)
        let labels: [Int32] = [1, 0, 3]
        func forward(_ x: Tensor, _ first: Linear, hidden: inout Tensor, mask: inout Tensor) -> Tensor {
            var maskGenerator = SeededGenerator(seed: 55)
            hidden = first.forward(x)
            ReLU.forward(&hidden)
            var dropped = hidden
            dropout.forwardTraining(&dropped, mask: &mask, generator: &maskGenerator)
            return dropped
        }
        func loss(_ x: Tensor, _ first: Linear) -> Double {
            var (hidden, mask) = (Tensor(zeros: []), Tensor(zeros: []))
            let dropped = forward(x, first, hidden: &hidden, mask: &mask)
            return SoftmaxCrossEntropy.loss(logits: second.forward(dropped), labels: labels).mean
        }
        var (hidden, mask, gradLogits) = (Tensor(zeros: []), Tensor(zeros: []), Tensor(zeros: []))
        let dropped = forward(x, first, hidden: &hidden, mask: &mask)
        _ = SoftmaxCrossEntropy.lossAndGradient(logits: second.forward(dropped), labels: labels, gradLogits: &gradLogits)
        var gradHidden = second.backward(input: dropped, gradOutput: gradLogits).gradInput!
        dropout.backward(gradOutput: &gradHidden, mask: mask)
        ReLU.backward(output: hidden, gradOutput: &gradHidden)
        let (gradInput, gradWeight, _) = first.backward(input: x, gradOutput: gradHidden)

        let numericalWeight = numericalGradient(at: first.weight, step: 1e-3) {
            loss(x, Linear(weight: $0, bias: first.bias))
        }
        let numericalInput = numericalGradient(at: x, step: 1e-3) { loss($0, first) }
        assertClose(gradWeight, numericalWeight, tolerance: 1e-3, "fc1 dW through relu and dropout")
        assertClose(gradInput!, numericalInput, tolerance: 1e-3, "dx through the whole head")
    }

    // MARK: layer behaviour

    func testDropoutDropsAFractionPAndScalesSurvivors() {
        let probability: Float = 0.3
        let dropout = Dropout(probability: probability)
        let ones = Tensor(shape: [256, 1024], data: Array(repeating: 1, count: 256 * 1024))
        func run(seed: UInt64) -> (output: Tensor, mask: Tensor) {
            var generator = SeededGenerator(seed: seed)
            var (output, mask) = (ones, Tensor(zeros: []))
            dropout.forwardTraining(&output, mask: &mask, generator: &generator)
            return (output, mask)
        }
        let (output, mask) = run(seed: 7)
        let zeros = output.data.filter { $0 == 0 }.count
        // The zero count is Binomial(n, p): its standard deviation is 9e-4 of n here, the bound 10σ.
        XCTAssertEqual(Float(zeros) / Float(output.count), probability, accuracy: 0.01)
        XCTAssertTrue(output.data.allSatisfy { $0 == 0 || $0 == 1 / (1 - probability) })
        XCTAssertEqual(mask, output, "mask = the factor each element was multiplied by")
        XCTAssertEqual(run(seed: 7).output, output, "same seed, same mask")
        XCTAssertNotEqual(run(seed: 8).output, output)

        var gradient = Tensor(shape: ones.shape, data: Array(repeating: 2, count: ones.count))
        dropout.backward(gradOutput: &gradient, mask: mask)
        XCTAssertEqual(gradient.data, mask.data.map { 2 * $0 }, "backward multiplies by the saved mask")

        // The buffer form, as the trainer gathers cached rows: same draws, no mask kept.
        var generator = SeededGenerator(seed: 7)
        var gathered = [Float](repeating: -1, count: ones.count)
        ones.data.withUnsafeBufferPointer { source in
            gathered.withUnsafeMutableBufferPointer { destination in
                dropout.forwardTraining(source, into: destination, mask: nil, generator: &generator)
            }
        }
        XCTAssertEqual(gathered, output.data)
    }

    /// Masks are drawn bit-serially, 64 elements at a time: each element must still be dropped with
    /// probability p, whatever its place among the 64 and independently of its neighbour; and p = 0.5,
    /// the default, must cost one 64-bit draw per 64 elements.
    func testDropoutMaskIsUnbiasedAtEveryPositionAndBetweenNeighbours() {
        let count = 64 * 8192
        for probability: Float in [0.5, 0.3, 0.05, 0.9] {
            var generator = SeededGenerator(seed: 21)
            var (x, mask) = (Tensor(shape: [count], data: Array(repeating: 1, count: count)), Tensor(zeros: []))
            Dropout(probability: probability).forwardTraining(&x, mask: &mask, generator: &generator)
            let dropped = mask.data.map { $0 == 0 }
            // Within 6 standard deviations of a binomial proportion.
            func assertRate(_ hits: Int, of trials: Int, _ expected: Double, _ what: String) {
                let sigma = (expected * (1 - expected) / Double(trials)).squareRoot()
                XCTAssertEqual(Double(hits) / Double(trials), expected, accuracy: 6 * sigma, "p = \(probability): \(what)")
            }
            let p = Double(probability)
            assertRate(dropped.filter { $0 }.count, of: count, p, "all elements")
            for position in 0..<64 {
                assertRate(stride(from: position, to: count, by: 64).filter { dropped[$0] }.count, of: count / 64, p,
                           "element \(position) of each 64")
            }
            assertRate((1..<count).filter { dropped[$0 - 1] && dropped[$0] }.count, of: count - 1, p * p, "neighbours both dropped")
        }

        var generator = SeededGenerator(seed: 5)
        var reference = generator
        var (x, mask) = (Tensor(shape: [64 * 10], data: Array(repeating: 1, count: 640)), Tensor(zeros: []))
        Dropout(probability: 0.5).forwardTraining(&x, mask: &mask, generator: &generator)
        for _ in 0..<10 { _ = reference.next() }
        XCTAssertEqual(generator.next(), reference.next(), "p = 0.5 takes one 64-bit draw per 64 elements")
    }

    /// A small head's gemms run cut into blocks over the cores. The blocks are fixed by the shapes, so the
    /// results must be the same bits for any number of threads, and equal the whole gemm up to rounding.
    /// [50, 2500] -> [50, 7]: four blocks of rows, three of dWeight's columns.
    func testLinearGemmBlocksGiveTheSameBitsOnAnyNumberOfThreads() {
        var generator = SeededGenerator(seed: 31)
        let linear = Linear(weight: randomTensor([7, 2500], &generator), bias: randomTensor([7], &generator))
        let x = randomTensor([50, 2500], &generator)
        let dy = randomTensor([50, 7], &generator)
        func run(_ split: GemmSplit) -> [Tensor] {
            BLASThreads.withSingleThreadedGemm {
                var (y, dx, dWeight, dBias) = (Tensor(zeros: []), Tensor(zeros: []), Tensor(zeros: []), Tensor(zeros: []))
                linear.forward(x, into: &y, split: split)
                linear.parameterGradients(input: x, gradOutput: dy, weight: &dWeight, bias: &dBias, split: split)
                linear.inputGradient(gradOutput: dy, into: &dx, split: split)
                return [y, dWeight, dBias, dx]
            }
        }
        let oneThread = run(.blocks(threads: 1))
        for threads in [2, 3, 8] {
            XCTAssertEqual(run(.blocks(threads: threads)), oneThread, "\(threads) threads")
        }
        for (name, (blocked, whole)) in zip(["y", "dWeight", "dBias", "dx"], zip(oneThread, run(.whole))) {
            assertClose(blocked, whole, tolerance: 1e-5, "\(name): blocks vs one gemm")
        }
    }

    func testDropoutWithPZeroIsTheIdentity() {
        var generator = SeededGenerator(seed: 9)
        let x = randomTensor([5, 7], &generator)
        var (y, mask) = (x, Tensor(zeros: []))
        Dropout(probability: 0).forwardTraining(&y, mask: &mask, generator: &generator)
        XCTAssertEqual(y, x)
        XCTAssertTrue(mask.data.allSatisfy { $0 == 1 })
    }

    func testSoftmaxCrossEntropyIsStableAndFlagsNonFiniteLogits() {
        let logits = Tensor(shape: [2, 3], data: [1e4, 0, -1e4, -50, -50, -50])
        let loss = SoftmaxCrossEntropy.loss(logits: logits, labels: [0, 2])
        XCTAssertTrue(loss.isFinite)
        XCTAssertEqual(loss.mean, log(3) / 2, accuracy: 1e-12, "row 1 loses nothing, row 2 loses log 3")
        XCTAssertEqual(loss.correct, 1, "row 2's tie goes to the first class, as torch.argmax, not to its label")
        assertClose(SoftmaxCrossEntropy.probabilities(logits), Tensor(shape: [2, 3], data: [1, 0, 0, 1 / 3, 1 / 3, 1 / 3]),
                    tolerance: 1e-6, "probabilities")

        for bad in [Float.nan, .infinity] {
            let broken = Tensor(shape: [1, 3], data: [0, bad, 1])
            var gradient = Tensor(zeros: [])
            XCTAssertFalse(SoftmaxCrossEntropy.lossAndGradient(logits: broken, labels: [0], gradLogits: &gradient).isFinite)
        }
        XCTAssertFalse(SoftmaxCrossEntropy.loss(logits: Tensor(shape: [1, 2], data: [0, -.infinity]), labels: [1]).isFinite)
    }

    /// The `into:` forms reuse a target of the right shape and replace one of another shape (a short last batch).
    func testIntoFormsReuseOrReshapeTheirTargets() {
        var generator = SeededGenerator(seed: 10)
        let linear = Linear(weight: randomTensor([3, 4], &generator), bias: randomTensor([3], &generator))
        var y = Tensor(zeros: [7, 7])
        for batch in [5, 5, 2] {
            let x = randomTensor([batch, 4], &generator)
            linear.forward(x, into: &y)
            XCTAssertEqual(y, linear.forward(x))
            var dx = Tensor(zeros: [1])
            linear.inputGradient(gradOutput: y, into: &dx)
            XCTAssertEqual(dx, linear.backward(input: x, gradOutput: y).gradInput)
        }
    }

    /// Both trainers keep the lowest validation loss, the earlier epoch on a tie, and never a loss that is not
    /// finite: not a NaN or ±inf first epoch, not a NaN later (which `!(loss >= best)` took for an improvement).
    func testBestEpochKeepsTheLowestFiniteLossAndTheEarlierOnATie() {
        var best = BestEpoch()
        XCTAssertFalse(best.offer(epoch: 1, validationLoss: .nan), "a NaN first epoch")
        XCTAssertFalse(best.offer(epoch: 2, validationLoss: .infinity), "a +inf first epoch")
        XCTAssertFalse(best.offer(epoch: 3, validationLoss: -.infinity), "a -inf first epoch")
        XCTAssertNil(best.epoch)
        XCTAssertTrue(best.offer(epoch: 4, validationLoss: 0.7), "the first finite loss")
        XCTAssertFalse(best.offer(epoch: 5, validationLoss: 0.7), "a tie keeps the earlier epoch")
        XCTAssertFalse(best.offer(epoch: 6, validationLoss: .nan))
        XCTAssertFalse(best.offer(epoch: 7, validationLoss: -.infinity))
        XCTAssertFalse(best.offer(epoch: 8, validationLoss: 0.9))
        XCTAssertEqual(best, BestEpoch(epoch: 4, validationLoss: 0.7))
        XCTAssertTrue(best.offer(epoch: 9, validationLoss: 0.5))
        XCTAssertEqual(best, BestEpoch(epoch: 9, validationLoss: 0.5))

        var resumed = BestEpoch(epoch: 2, validationLoss: 0.4)
        XCTAssertFalse(resumed.offer(epoch: 3, validationLoss: 0.4), "a tie with the epochs before a resume")
        XCTAssertTrue(resumed.offer(epoch: 4, validationLoss: 0.3))
        XCTAssertEqual(resumed.epoch, 4)
    }

    // MARK: against torch

    func testLossAndGradientsMatchTorch() throws {
        let fixture = try TrainingFixture()
        let head = Linear(weight: fixture.weight, bias: fixture.bias)
        var gradLogits = Tensor(zeros: [])
        let loss = SoftmaxCrossEntropy.lossAndGradient(logits: head.forward(fixture.input), labels: fixture.labels,
                                                       gradLogits: &gradLogits)
        XCTAssertEqual(loss.mean, fixture.manifest["loss"] as! Double, accuracy: 1e-6 * loss.mean)
        let (gradInput, gradWeight, gradBias) = head.backward(input: fixture.input, gradOutput: gradLogits)
        assertClose(gradWeight, try fixture.tensor("grad_weight"), tolerance: 1e-5, "dW")
        assertClose(gradBias, try fixture.tensor("grad_bias"), tolerance: 1e-5, "db")
        assertClose(gradInput!, try fixture.tensor("grad_input"), tolerance: 1e-5, "dx")
    }

    /// Each optimizer from the same start, three steps on the same batch with dropout p = 0; the parameters
    /// after steps 1 and 3 within 1e-5 of torch's, through `update` (what a trainer calls) and `step`.
    func testOptimizerStepsMatchTorch() throws {
        let fixture = try TrainingFixture()
        let entries = fixture.manifest["optimizers"] as! [String: [String: Any]]
        for name in ["sgd", "adam", "adamw"] {
            let entry = entries[name]!
            let arguments = entry["arguments"] as! [String: Double]
            let learningRate = arguments["lr"]!
            let weightDecay = arguments["weight_decay"]!
            func makeOptimizer() -> any Optimizer {
                switch name {
                case "sgd": return SGD(momentum: arguments["momentum"]!, weightDecay: weightDecay)
                case "adam": return Adam(weightDecay: weightDecay)
                default: return Adam.adamW(weightDecay: weightDecay)
                }
            }
            let after = entry["after"] as! [String: [String: [String: Any]]]
            let torchLosses = entry["losses"] as! [Double]
            for throughStep in [false, true] {
                var optimizer = makeOptimizer()
                var head = Linear(weight: fixture.weight, bias: fixture.bias)
                var (input, mask, logits, gradLogits) = (Tensor(zeros: []), Tensor(zeros: []), Tensor(zeros: []), Tensor(zeros: []))
                var (gradWeight, gradBias) = (Tensor(zeros: []), Tensor(zeros: []))
                var generator = SeededGenerator(seed: 0)
                for step in 1...3 {
                    input = fixture.input
                    Dropout(probability: 0).forwardTraining(&input, mask: &mask, generator: &generator)
                    head.forward(input, into: &logits)
                    let loss = SoftmaxCrossEntropy.lossAndGradient(logits: logits, labels: fixture.labels, gradLogits: &gradLogits)
                    XCTAssertEqual(loss.mean, torchLosses[step - 1], accuracy: 1e-6 * loss.mean, "\(name) loss before step \(step)")
                    head.parameterGradients(input: input, gradOutput: gradLogits, weight: &gradWeight, bias: &gradBias)
                    if throughStep {
                        var parameters = [head.weight, head.bias]
                        optimizer.step(parameters: &parameters, gradients: [gradWeight, gradBias], learningRate: learningRate)
                        (head.weight, head.bias) = (parameters[0], parameters[1])
                    } else {
                        optimizer.update(&head.weight, gradient: gradWeight, slot: 0, learningRate: learningRate)
                        optimizer.update(&head.bias, gradient: gradBias, slot: 1, learningRate: learningRate)
                    }
                    if let expected = after[String(step)] {
                        let what = "\(name) after \(step) step(s)\(throughStep ? " via step()" : "")"
                        assertClose(head.weight, try TrainingFixture.load(expected["weight"]!), tolerance: 1e-5, "\(what): weight")
                        assertClose(head.bias, try TrainingFixture.load(expected["bias"]!), tolerance: 1e-5, "\(what): bias")
                    }
                }
            }
        }
    }

    func testSchedulesMatchTorch() throws {
        let schedules = try TrainingFixture().manifest["schedules"] as! [String: Any]
        let base = schedules["base_lr"] as! Double
        let cases: [(String, LearningRateSchedule)] = [("step", .step(stepSize: 3, gamma: 0.1)), ("cosine", .cosine(epochs: 10))]
        for (name, schedule) in cases {
            let torchRates = (schedules[name] as! [String: Any])["learning_rates"] as! [Double]
            for (epoch, torchRate) in torchRates.enumerated() {
                XCTAssertEqual(schedule.learningRate(base: base, epoch: epoch), torchRate, accuracy: 1e-12 * base,
                               "\(name) epoch \(epoch)")
            }
        }
        XCTAssertEqual(LearningRateSchedule.constant.learningRate(base: base, epoch: 40), base)
    }
}

/// Tests/Fixtures/training: the batch, initial head and torch's results.
private struct TrainingFixture {
    let manifest: [String: Any]
    let input: Tensor
    let weight: Tensor
    let bias: Tensor
    let labels: [Int32]

    init() throws {
        manifest = try Fixtures.json("training/manifest.json")
        labels = (manifest["labels"] as! [Int]).map(Int32.init)
        input = try Self.load(manifest["input"] as! [String: Any])
        weight = try Self.load(manifest["weight"] as! [String: Any])
        bias = try Self.load(manifest["bias"] as! [String: Any])
    }

    func tensor(_ key: String) throws -> Tensor { try Self.load(manifest[key] as! [String: Any]) }

    /// A manifest entry {"file", "shape"} as a tensor.
    static func load(_ entry: [String: Any]) throws -> Tensor {
        try Fixtures.float32("training/" + (entry["file"] as! String), shape: entry["shape"] as! [Int])
    }
}

func randomTensor(_ shape: [Int], _ generator: inout SeededGenerator) -> Tensor {
    Tensor(shape: shape) { values in
        for index in values.indices { values[index] = generator.nextNormal() }
    }
}

/// Σ a ⊙ b in Double: a scalar objective whose gradient with respect to a is b.
func dot(_ a: Tensor, _ b: Tensor) -> Double {
    zip(a.data, b.data).reduce(0) { $0 + Double($1.0) * Double($1.1) }
}

/// Central differences of `objective` at `point`, element by element. The denominator is the step as it
/// landed in Float, not the step asked for.
func numericalGradient(at point: Tensor, step: Float, _ objective: (Tensor) -> Double) -> Tensor {
    var gradient = Tensor(zeros: point.shape)
    var probe = point
    for index in point.data.indices {
        let (plus, minus) = (point.data[index] + step, point.data[index] - step)
        probe.data[index] = plus
        let above = objective(probe)
        probe.data[index] = minus
        let below = objective(probe)
        probe.data[index] = point.data[index]
        gradient.data[index] = Float((above - below) / (Double(plus) - Double(minus)))
    }
    return gradient
}
