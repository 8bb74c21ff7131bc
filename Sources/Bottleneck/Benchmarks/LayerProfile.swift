import Foundation

/// `--per-layer` of the benches: seconds per step of each layer's forward, input gradient, weight gradient and
/// optimizer update, and the step's time outside them (the loss, the work between layers: what no layer's
/// parallel region covers).
package struct LayerProfile: Sendable {
    package struct Row: Sendable {
        package var layer: LayerInfo
        /// Indexed by `StepProfile.Phase`.
        package var seconds: [Double]
        package var total: Double { seconds.reduce(0, +) }
    }

    package var rows: [Row]
    package var stepSeconds: Double
    package var otherSeconds: Double { stepSeconds - rows.reduce(0) { $0 + $1.total } }

    /// A fine-tuning profile summed over `steps` steps, per step, of a step that took `stepSeconds`.
    init(_ profile: StepProfile, steps: Int, layers: [LayerInfo], stepSeconds: Double) {
        rows = zip(layers, profile.seconds).map { Row(layer: $0, seconds: $1.map { $0 / Double(steps) }) }
        self.stepSeconds = stepSeconds
    }

    /// A forward-only profile: each layer's seconds.
    init(forward layerSeconds: [(layer: LayerInfo, seconds: Double)], stepSeconds: Double) {
        rows = layerSeconds.map { layer, seconds in
            Row(layer: layer, seconds: StepProfile.Phase.allCases.map { $0 == .forward ? seconds : 0 })
        }
        self.stepSeconds = stepSeconds
    }

    /// One line per layer that took at least half a millisecond, then the rest of the step and the step, in ms;
    /// phases no layer spent time in are left out.
    package var table: String {
        let names: [StepProfile.Phase: String] = [.forward: "forward", .inputGradient: "input-grad",
                                                  .weightGradient: "weight-grad", .optimizer: "optimizer"]
        let phases = StepProfile.Phase.allCases.filter { phase in rows.contains { $0.seconds[phase.rawValue] > 0 } }
        func line(_ name: String, _ path: String, _ cells: [Double?], _ total: Double) -> String {
            let columns = cells.map { $0.map { String(format: "%12.1f", $0 * 1000) } ?? String(repeating: " ", count: 12) }
            return name.padding(toLength: 12, withPad: " ", startingAt: 0) + path.padding(toLength: 15, withPad: " ", startingAt: 0)
                + columns.joined() + String(format: "%12.1f %5.1f%%", total * 1000, 100 * total / stepSeconds)
        }
        var lines = ["layer".padding(toLength: 27, withPad: " ", startingAt: 0)
                     + (phases.map { names[$0]! } + ["total ms", "share"]).map { $0.leftPadded(to: 12) }.joined()]
        for row in rows where row.total >= 0.0005 {
            lines.append(line(row.layer.name, row.layer.path, phases.map { row.seconds[$0.rawValue] }, row.total))
        }
        let sums = phases.map { phase in rows.reduce(0) { $0 + $1.seconds[phase.rawValue] } }
        lines.append(line("all layers", "", sums, sums.reduce(0, +)))
        lines.append(line("other/serial", "", phases.map { _ in nil }, otherSeconds))
        lines.append(line("step", "", phases.map { _ in nil }, stepSeconds))
        return lines.joined(separator: "\n")
    }
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}
