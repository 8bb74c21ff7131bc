/// Why a library call failed, as the one line the command-line tool would print: it names the file and
/// what is wrong with it (`runs/pets-fc7.h5 was made with other weights …`).
public struct BottleneckError: Error, CustomStringConvertible, Sendable {
    public let description: String

    /// Runs `body`, turning whatever it throws into the one-line error.
    static func wrapping<Result>(_ body: () throws -> Result) throws(BottleneckError) -> Result {
        do {
            return try body()
        } catch let error as BottleneckError {
            throw error
        } catch {
            throw BottleneckError(description: "\(error)")
        }
    }
}
