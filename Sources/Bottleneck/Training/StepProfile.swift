import Foundation

/// Where a fine-tuning step's time went: seconds per layer and phase, summed over the steps given it. A step fills
/// one only when handed one (`bench finetune --per-layer`); without, it reads no clock.
package final class StepProfile {
    package enum Phase: Int, CaseIterable, Sendable {
        case forward, inputGradient, weightGradient, optimizer
    }

    /// seconds[position][phase], summed over the steps.
    package private(set) var seconds: [[Double]]
    /// The loss and everything between the laps of the layers, summed over the steps.
    package private(set) var otherSeconds = 0.0
    private var last = ContinuousClock.now

    package init(layers: Int) {
        seconds = Array(repeating: Array(repeating: 0, count: Phase.allCases.count), count: layers)
    }

    /// Starts a step's laps.
    func start() { last = .now }

    /// Adds the seconds since the previous lap to `phase` of the layer at `position`.
    func lap(_ position: Int, _ phase: Phase) {
        seconds[position][phase.rawValue] += takeLap()
    }

    /// Adds the seconds since the previous lap to the time outside the layers.
    func lapOther() { otherSeconds += takeLap() }

    private func takeLap() -> Double {
        defer { last = .now }
        return last.secondsElapsed
    }
}
