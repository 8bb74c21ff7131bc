import Foundation
import BottleneckKernels

/// A torch.optim algorithm with its per-parameter state.
///
/// Parameters are updated one tensor at a time, each under a `slot` that names its state (momentum
/// buffer, moment estimates): torch keys state by the parameter object, here the caller numbers the
/// tensors and keeps each on its slot for the whole run. Updating in place through `inout` lets a
/// trainer pass `&head.weight` directly, with no copy of the parameters per step. The learning rate
/// comes with every update, so parameter groups (a pretrained backbone at `lr × multiplier`, a new
/// head at `lr`) and per-epoch schedules need no optimizer of their own. Scalars are Double, as
/// torch's Python floats are, and rounded to Float where torch rounds them: at the tensor operation.
package protocol Optimizer: Sendable {
    /// parameter [any] -= update(gradient [same], state of `slot`), in place.
    mutating func update(_ parameter: inout Tensor, gradient: Tensor, slot: Int, learningRate: Double)

    /// Every slot's state as named tensors (torch's state_dict names with the slot: "3.momentum_buffer"),
    /// for checkpoints: setting it on a fresh optimizer of the same settings continues the run exactly.
    var state: [String: Tensor] { get set }
}

extension Optimizer {
    /// parameters[i] updated from gradients[i] under slot i: torch's `optimizer.step()` for one group.
    package mutating func step(parameters: inout [Tensor], gradients: [Tensor], learningRate: Double) {
        precondition(parameters.count == gradients.count, "\(parameters.count) parameters but \(gradients.count) gradients")
        for index in parameters.indices {
            update(&parameters[index], gradient: gradients[index], slot: index, learningRate: learningRate)
        }
    }

    /// The weight [out, ...] and bias [out] of the conv or linear `modules[index]` updated from gradients of the
    /// same shapes under slots `slot` and `slot + 1`. The module leaves the array for the update (a ReLU holds its
    /// place), so its tensors are held once and change in place instead of being copied.
    package mutating func step(_ modules: inout [VGG.Module], at index: Int, gradWeight: Tensor, gradBias: Tensor,
                               slot: Int, learningRate: Double) {
        switch modules[index] {
        case .conv(var conv):
            modules[index] = .relu
            update(&conv.weight, gradient: gradWeight, slot: slot, learningRate: learningRate)
            update(&conv.bias, gradient: gradBias, slot: slot + 1, learningRate: learningRate)
            modules[index] = .conv(conv)
        case .linear(var linear):
            modules[index] = .relu
            update(&linear.weight, gradient: gradWeight, slot: slot, learningRate: learningRate)
            update(&linear.bias, gradient: gradBias, slot: slot + 1, learningRate: learningRate)
            modules[index] = .linear(linear)
        case .relu, .maxPool, .adaptiveAvgPool, .dropout:
            preconditionFailure("module \(index) has no parameters")
        }
    }
}

/// `torch.optim.SGD(lr, momentum, weight_decay)` with dampening 0 and without Nesterov:
/// g = grad + wd·param; buf = g on a slot's first step, then buf = momentum·buf + g; param -= lr·buf.
/// Without momentum, param -= lr·g and no state is kept.
package struct SGD: Optimizer {
    package let momentum: Double
    package let weightDecay: Double
    /// Momentum buffer by slot; empty until the slot's first update.
    private var momentumBuffers: [[Float]] = []

    package init(momentum: Double = 0, weightDecay: Double = 0) {
        precondition(momentum >= 0 && weightDecay >= 0, "SGD momentum and weight decay must not be negative")
        self.momentum = momentum
        self.weightDecay = weightDecay
    }

    package var state: [String: Tensor] {
        get {
            var tensors: [String: Tensor] = [:]
            for (slot, buffer) in momentumBuffers.enumerated() where !buffer.isEmpty {
                tensors["\(slot).momentum_buffer"] = Tensor(shape: [buffer.count], data: buffer)
            }
            return tensors
        }
        set {
            momentumBuffers = []
            for (key, tensor) in newValue {
                guard let slot = optimizerSlot(key, named: "momentum_buffer") else { continue }
                if momentumBuffers.count <= slot { momentumBuffers += Array(repeating: [], count: slot + 1 - momentumBuffers.count) }
                momentumBuffers[slot] = tensor.data
            }
        }
    }

    package mutating func update(_ parameter: inout Tensor, gradient: Tensor, slot: Int, learningRate: Double) {
        checkShapes(parameter, gradient)
        let (decay, rate) = (Float(weightDecay), Float(learningRate))
        guard momentum != 0 else {
            parameter.data.withUnsafeMutableBufferPointer { values in
                gradient.data.withUnsafeBufferPointer { gradients in
                    parallelForChunks(values.count) { chunk in
                        let (values, gradients) = (values.baseAddress!, gradients.baseAddress!)
                        for index in chunk { values[index] -= rate * (gradients[index] + decay * values[index]) }
                    }
                }
            }
            return
        }
        if momentumBuffers.count <= slot { momentumBuffers += Array(repeating: [], count: slot + 1 - momentumBuffers.count) }
        // A fresh buffer of zeros kept at weight 0 makes the first step's buf exactly g, as torch's clone.
        let isFirstStep = momentumBuffers[slot].isEmpty
        if isFirstStep { momentumBuffers[slot] = Array(repeating: 0, count: parameter.count) }
        let keep = isFirstStep ? 0 : Float(momentum)
        parameter.data.withUnsafeMutableBufferPointer { values in
            gradient.data.withUnsafeBufferPointer { gradients in
                momentumBuffers[slot].withUnsafeMutableBufferPointer { buffer in
                    parallelForChunks(values.count) { chunk in
                        let (values, gradients, buffer) = (values.baseAddress!, gradients.baseAddress!, buffer.baseAddress!)
                        for index in chunk {
                            buffer[index] = keep * buffer[index] + (gradients[index] + decay * values[index])
                            values[index] -= rate * buffer[index]
                        }
                    }
                }
            }
        }
    }
}

/// `torch.optim.Adam` and, with decoupled weight decay, `torch.optim.AdamW` (amsgrad off), per slot:
///     t += 1
///     Adam:  g = grad + wd·param            AdamW: param *= 1 - lr·wd, g = grad
///     m = m + (1-β1)(g - m);  v = β2·v + (1-β2)·g²
///     param -= lr/(1-β1ᵗ) · m / (√v / √(1-β2ᵗ) + ε)
struct Adam: Optimizer {
    let beta1: Double
    let beta2: Double
    let epsilon: Double
    package let weightDecay: Double
    /// AdamW's decay of the parameter itself, instead of Adam's L2 term in the gradient.
    let decoupledWeightDecay: Bool

    private struct Moments: Sendable {
        var step = 0
        var first: [Float]
        var second: [Float]
    }
    /// Moment estimates by slot; nil until the slot's first update.
    private var moments: [Moments?] = []

    /// torch.optim.Adam's defaults.
    package init(beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8, weightDecay: Double = 0,
                decoupledWeightDecay: Bool = false) {
        precondition((0..<1).contains(beta1) && (0..<1).contains(beta2), "Adam betas must be in [0, 1)")
        precondition(epsilon >= 0 && weightDecay >= 0, "Adam epsilon and weight decay must not be negative")
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupledWeightDecay
    }

    /// torch.optim.AdamW, with its defaults (weight decay 0.01, not Adam's 0).
    static func adamW(beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8,
                             weightDecay: Double = 0.01) -> Adam {
        Adam(beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay, decoupledWeightDecay: true)
    }

    package var state: [String: Tensor] {
        get {
            var tensors: [String: Tensor] = [:]
            for (slot, moment) in moments.enumerated() {
                guard let moment else { continue }
                tensors["\(slot).step"] = Tensor(shape: [1], data: [Float(moment.step)])
                tensors["\(slot).exp_avg"] = Tensor(shape: [moment.first.count], data: moment.first)
                tensors["\(slot).exp_avg_sq"] = Tensor(shape: [moment.second.count], data: moment.second)
            }
            return tensors
        }
        set {
            moments = []
            for (key, step) in newValue {
                guard let slot = optimizerSlot(key, named: "step"), let first = newValue["\(slot).exp_avg"],
                      let second = newValue["\(slot).exp_avg_sq"] else { continue }
                if moments.count <= slot { moments += Array(repeating: nil, count: slot + 1 - moments.count) }
                moments[slot] = Moments(step: Int(step.data[0]), first: first.data, second: second.data)
            }
        }
    }

    package mutating func update(_ parameter: inout Tensor, gradient: Tensor, slot: Int, learningRate: Double) {
        checkShapes(parameter, gradient)
        if moments.count <= slot { moments += Array(repeating: nil, count: slot + 1 - moments.count) }
        // Taken out while in use, so its two buffers can be written together without copying.
        var state = moments[slot].take() ?? Moments(first: Array(repeating: 0, count: parameter.count),
                                                    second: Array(repeating: 0, count: parameter.count))
        defer { moments[slot] = state }
        state.step += 1
        let step = Double(state.step)
        let stepSize = Float(learningRate / (1 - pow(beta1, step)))
        let correction2Root = Float((1 - pow(beta2, step)).squareRoot())
        let shrink = Float(decoupledWeightDecay ? 1 - learningRate * weightDecay : 1)
        let l2 = Float(decoupledWeightDecay ? 0 : weightDecay)
        let (firstWeight, keepSecond, secondWeight) = (Float(1 - beta1), Float(beta2), Float(1 - beta2))
        let epsilon = Float(self.epsilon)
        parameter.data.withUnsafeMutableBufferPointer { values in
            gradient.data.withUnsafeBufferPointer { gradients in
                state.first.withUnsafeMutableBufferPointer { first in
                    state.second.withUnsafeMutableBufferPointer { second in
                        parallelForChunks(values.count) { chunk in
                            let (values, gradients) = (values.baseAddress!, gradients.baseAddress!)
                            let (first, second) = (first.baseAddress!, second.baseAddress!)
                            for index in chunk {
                                let value = values[index] * shrink
                                let g = gradients[index] + l2 * value
                                first[index] += firstWeight * (g - first[index])
                                second[index] = keepSecond * second[index] + secondWeight * g * g
                                values[index] = value - stepSize * first[index] / (second[index].squareRoot() / correction2Root + epsilon)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The slot of a state key "3.momentum_buffer" when it names `name`.
private func optimizerSlot(_ key: String, named name: String) -> Int? {
    let parts = key.split(separator: ".", maxSplits: 1)
    guard parts.count == 2, parts[1] == name else { return nil }
    return Int(parts[0])
}

private func checkShapes(_ parameter: Tensor, _ gradient: Tensor) {
    precondition(parameter.shape == gradient.shape, "parameter \(parameter.shape) but gradient \(gradient.shape)")
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
