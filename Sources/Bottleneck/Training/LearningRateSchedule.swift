import Foundation
import BottleneckKernels

/// How the learning rate moves from epoch to epoch, as torch.optim.lr_scheduler has it when
/// `scheduler.step()` runs once at the end of every epoch: `learningRate(base:epoch:)` is the rate in
/// force during `epoch` (counted from 0). Closed forms; torch's chained updates agree to rounding.
enum LearningRateSchedule: Sendable, Equatable {
    case constant
    /// StepLR(step_size, gamma): base · gamma^⌊epoch / stepSize⌋.
    case step(stepSize: Int, gamma: Double)
    /// CosineAnnealingLR(T_max = epochs, eta_min = 0): base · (1 + cos(π · epoch / epochs)) / 2, reaching 0
    /// at `epochs`; past it the cosine rises again, as torch's does.
    case cosine(epochs: Int)

    package func learningRate(base: Double, epoch: Int) -> Double {
        precondition(epoch >= 0, "epochs count from 0, got \(epoch)")
        switch self {
        case .constant:
            return base
        case .step(let stepSize, let gamma):
            precondition(stepSize > 0, "StepLR needs a step size of at least 1 epoch")
            return base * pow(gamma, Double(epoch / stepSize))
        case .cosine(let epochs):
            precondition(epochs > 0, "cosine annealing needs at least 1 epoch")
            return base * (1 + cos(Double.pi * Double(epoch) / Double(epochs))) / 2
        }
    }
}
