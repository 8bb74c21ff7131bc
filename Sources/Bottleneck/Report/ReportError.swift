/// A run directory the report cannot read, runs it refuses to compare, or a report it cannot write; one line.
struct ReportError: Error, CustomStringConvertible, Sendable {
    package let description: String
    package init(_ description: String) { self.description = description }
}
