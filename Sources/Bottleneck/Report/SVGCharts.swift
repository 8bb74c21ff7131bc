import Foundation
import BottleneckKernels

/// A line chart as inline SVG: axes with round-number ticks, one polyline (with dots) per series; the legend is the
/// page's (HTML wraps it on narrow screens, where a row of SVG text would not fit).
/// No scripts and no external resources, so the report is one file that opens anywhere.
struct LineChart {
    struct Series {
        var name: String
        var color: String
        var points: [(x: Double, y: Double)]
        var dashed = false
    }

    var title: String
    var xLabel: String
    var yLabel: String
    var series: [Series]
    /// A logarithmic x axis: head epochs take milliseconds, fine-tuning epochs minutes.
    var logarithmicX = false
    /// Fixed y bounds (accuracy: 0…1); nil: the data's, widened to round ticks.
    var yBounds: ClosedRange<Double>?

    private let width = 560.0
    private let height = 340.0
    private let right = 16.0, top = 36.0, bottom = 52.0
    private static let maximumDots = 40
    /// Width of one tick-label character at the largest font the page sets (on phones), in SVG units.
    private let labelCharacterWidth = 10.5

    var svg: String {
        let points = series.flatMap(\.points).filter { $0.y.isFinite && (!logarithmicX || $0.x > 0) }
        guard !points.isEmpty else { return "<p class=\"empty\">\(HTML.escape(title)): no data</p>" }
        let xs = points.map { logarithmicX ? log10($0.x) : $0.x }
        let yTicks = yBounds.map { Ticks.linear(from: $0.lowerBound, to: $0.upperBound) }
            ?? Ticks.linear(from: points.map(\.y).min()!, to: points.map(\.y).max()!)
        let xTicks = logarithmicX ? Ticks.decades(from: xs.min()!, to: xs.max()!)
            : Ticks.linear(from: xs.min()!, to: xs.max()!, integers: true)
        // Room for the widest y label ("1.0995") at the phone's larger font, and never less than the axis title needs.
        let left = max(62, 20 + labelCharacterWidth * Double(yTicks.labels.map(\.count).max() ?? 0))
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        let xRange = xTicks.values.first!...xTicks.values.last!, yRange = yTicks.values.first!...yTicks.values.last!
        func px(_ x: Double) -> Double {
            let value = logarithmicX ? log10(x) : x
            return left + (value - xRange.lowerBound) / max(xRange.upperBound - xRange.lowerBound, 1e-12) * plotWidth
        }
        func py(_ y: Double) -> Double {
            top + plotHeight - (y - yRange.lowerBound) / max(yRange.upperBound - yRange.lowerBound, 1e-12) * plotHeight
        }

        var out = "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" "
            + "role=\"img\" aria-label=\"\(HTML.escape(title))\">\n"
        out += "<text x=\"8\" y=\"20\" class=\"chart-title\">\(HTML.escape(title))</text>\n"
        for (value, label) in zip(yTicks.values, yTicks.labels) {
            out += "<line x1=\"\(number(left))\" x2=\"\(number(width - right))\" "
                + "y1=\"\(number(py(value)))\" y2=\"\(number(py(value)))\" class=\"grid\"/>"
            out += "<text x=\"\(number(left - 8))\" y=\"\(number(py(value) + 4))\" class=\"tick\" text-anchor=\"end\">\(label)</text>\n"
        }
        for (value, label) in zip(xTicks.values, xTicks.labels) {
            let x = left + (value - xRange.lowerBound) / max(xRange.upperBound - xRange.lowerBound, 1e-12) * plotWidth
            out += "<line x1=\"\(number(x))\" x2=\"\(number(x))\" "
                + "y1=\"\(number(top + plotHeight))\" y2=\"\(number(top + plotHeight + 5))\" class=\"axis\"/>"
            out += "<text x=\"\(number(x))\" y=\"\(number(top + plotHeight + 19))\" class=\"tick\" text-anchor=\"middle\">\(label)</text>\n"
        }
        out += "<line x1=\"\(number(left))\" x2=\"\(number(width - right))\" "
            + "y1=\"\(number(top + plotHeight))\" y2=\"\(number(top + plotHeight))\" class=\"axis\"/>"
        out += "<line x1=\"\(number(left))\" x2=\"\(number(left))\" "
            + "y1=\"\(number(top))\" y2=\"\(number(top + plotHeight))\" class=\"axis\"/>\n"
        out += "<text x=\"\(number(left + plotWidth / 2))\" y=\"\(number(height - 10))\" class=\"axis-label\" text-anchor=\"middle\">"
            + "\(HTML.escape(xLabel))</text>\n"
        out += "<text transform=\"translate(16 \(number(top + plotHeight / 2))) rotate(-90)\" class=\"axis-label y\" "
            + "text-anchor=\"middle\">\(HTML.escape(yLabel))</text>\n"

        for line in series {
            let visible = line.points.filter { $0.y.isFinite && (!logarithmicX || $0.x > 0) }
            guard !visible.isEmpty else { continue }
            let coordinates = visible.map { "\(number(px($0.x))),\(number(py($0.y)))" }.joined(separator: " ")
            out += "<polyline points=\"\(coordinates)\" fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"2.2\""
                + (line.dashed ? " stroke-dasharray=\"6 4\"" : "") + " stroke-linejoin=\"round\">"
                + "<title>\(HTML.escape(line.name))</title></polyline>\n"
            // Dots mark the epochs where they stay apart; hundreds of them would only thicken the line.
            for point in visible where visible.count <= Self.maximumDots {
                out += "<circle cx=\"\(number(px(point.x)))\" cy=\"\(number(py(point.y)))\" r=\"3\" fill=\"\(line.color)\"/>"
            }
            out += "\n"
        }
        return out + "</svg>"
    }

}

/// Axis ticks at round numbers (1, 2 or 5 times a power of ten), covering the data.
struct Ticks {
    var values: [Double]
    var labels: [String]

    static func linear(from low: Double, to high: Double, integers: Bool = false) -> Ticks {
        var low = low, high = high
        if high - low < 1e-9 {
            low -= max(abs(low) * 0.1, integers ? 1 : 0.05)
            high += max(abs(high) * 0.1, integers ? 1 : 0.05)
        }
        let rough = (high - low) / 5
        let power = pow(10, floor(log10(rough)))
        var step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= rough }!
        if integers { step = max(1, step.rounded()) }
        let first = floor(low / step) * step, last = ceil(high / step) * step
        let values = stride(from: first, through: last + step / 2, by: step).map { $0 }
        let decimals = max(0, -Int(floor(log10(step))))
        return Ticks(values: values, labels: values.map { String(format: "%.\(decimals)f", $0) })
    }

    /// Whole powers of ten around log10 values `low…high`.
    static func decades(from low: Double, to high: Double) -> Ticks {
        let first = floor(low), last = max(ceil(high), first + 1)
        let values = stride(from: first, through: last, by: 1).map { $0 }
        return Ticks(values: values, labels: values.map { exponent in
            let value = pow(10, exponent)
            return value >= 1 ? String(format: "%.0f", value) : String(format: "%g", value)
        })
    }
}

/// A confusion matrix as an SVG grid: rows are the true classes, columns the predicted ones, each cell
/// shaded by its share of its row (so classes of different sizes compare) and labelled with its count.
struct ConfusionMatrixChart {
    var classes: [String]
    var counts: [[Int]]
    /// The run's hue, so that a matrix is recognisably head or finetune.
    var color: (red: Int, green: Int, blue: Int)

    var svg: String {
        let cell = classes.count > 8 ? 30.0 : 46.0
        let labelWidth = 10 + 7.0 * Double(classes.map(\.count).max() ?? 4)
        let left = labelWidth + 22, top = labelWidth + 22
        let size = Double(classes.count) * cell
        let width = left + size + 10, height = top + size + 10
        var out = "<svg class=\"matrix\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" "
            + "width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\" aria-label=\"confusion matrix\">\n"
        out += "<text x=\"\(number(left + size / 2))\" y=\"12\" class=\"axis-label\" text-anchor=\"middle\">predicted</text>\n"
        out += "<text transform=\"translate(12 \(number(top + size / 2))) rotate(-90)\" class=\"axis-label\" text-anchor=\"middle\">"
            + "true</text>\n"
        for (index, name) in classes.enumerated() {
            let center = Double(index) * cell + cell / 2
            out += "<text transform=\"translate(\(number(left + center + 4)) \(number(top - 6))) rotate(-60)\" class=\"tick\">"
                + "\(HTML.escape(name))</text>"
            out += "<text x=\"\(number(left - 6))\" y=\"\(number(top + center + 4))\" class=\"tick\" text-anchor=\"end\">"
                + "\(HTML.escape(name))</text>\n"
        }
        for (row, line) in counts.enumerated() {
            let total = max(1, line.reduce(0, +))
            for (column, count) in line.enumerated() {
                let share = Double(count) / Double(total)
                let mix = { (channel: Int) in Int(255 - (255 - Double(channel)) * share) }
                let x = left + Double(column) * cell, y = top + Double(row) * cell
                out += "<rect x=\"\(number(x))\" y=\"\(number(y))\" width=\"\(number(cell - 2))\" height=\"\(number(cell - 2))\" rx=\"3\" "
                    + "fill=\"rgb(\(mix(color.red)),\(mix(color.green)),\(mix(color.blue)))\""
                    + (row == column ? " class=\"diagonal\"" : "") + "/>"
                out += "<text x=\"\(number(x + (cell - 2) / 2))\" y=\"\(number(y + (cell - 2) / 2 + 5))\" text-anchor=\"middle\" "
                    + "class=\"\(share > 0.55 ? "count light" : "count")\">\(count)</text>\n"
            }
        }
        return out + "</svg>"
    }

}

/// An SVG coordinate: a tenth of a pixel is finer than any screen shows.
private func number(_ value: Double) -> String { String(format: "%.1f", value) }

enum HTML {
    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
