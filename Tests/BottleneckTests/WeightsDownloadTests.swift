#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
@testable import Bottleneck
@testable import BottleneckCLI
import Foundation
import XCTest

/// `weights download` against an HTTP server of the test's own on 127.0.0.1: resuming a cut transfer with a Range
/// request, starting over when the server ignores the range, refusing a file that does not hash to its name, and
/// one-line errors for 404 and a refused connection. Nothing here reaches the internet.
final class WeightsDownloadTests: XCTestCase {
    private var folder: String!
    private var server: LoopbackHTTPServer!
    /// 300 kB that are not all alike, so that a resumed file put together at the wrong offset would differ.
    private let content: [UInt8] = {
        var state: UInt32 = 12345
        return (0..<300_000).map { _ in
            state = state &* 1_103_515_245 &+ 12345
            return UInt8(truncatingIfNeeded: state >> 16)
        }
    }()
    /// Named as torch.hub names its files, with the start of the content's SHA-256.
    private var weights: PretrainedWeights!

    override func setUpWithError() throws {
        folder = NSTemporaryDirectory() + "weights-download-\(UUID().uuidString)"
        let fileName = "tiny-\(SHA256.hex(SHA256.digest(content)).prefix(8)).pth"
        server = try LoopbackHTTPServer(files: ["/models/" + fileName: content])
        weights = PretrainedWeights(name: "tiny", fileName: fileName, url: server.url("/models/" + fileName))
    }

    override func tearDownWithError() throws {
        server.stop()
        try? FileManager.default.removeItem(atPath: folder)
    }

    private func download(source: URL? = nil, force: Bool = false) -> WeightsDownload {
        WeightsDownload(weights: weights, source: source, folder: folder + "/hub/checkpoints", replacesDifferentFile: force)
    }

    private func error(of download: WeightsDownload) -> WeightsDownloadError? {
        do {
            _ = try download.run()
            return nil
        } catch {
            return error as? WeightsDownloadError
        }
    }

    private func contents(_ path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map(Array.init)
    }

    func testDownloadsIntoTheFolderItCreatesAndThenFindsTheFileThere() throws {
        let download = download()
        XCTAssertEqual(try download.run(), .downloaded(bytes: Int64(content.count), resumedAt: 0, startedOver: false))
        XCTAssertEqual(contents(download.destination), content)
        XCTAssertFalse(FileManager.default.fileExists(atPath: download.partialPath))
        XCTAssertEqual(server.requests.count, 1)
        XCTAssertNil(server.requests[0]["range"])

        XCTAssertEqual(try download.run(), .alreadyPresent)
        XCTAssertEqual(server.requests.count, 1, "a file already in place is hashed, not fetched again")
    }

    func testAnInterruptedDownloadResumesWithARangeRequestToTheSameBytes() throws {
        let download = download()
        server.behaviour = .init(cutAfter: 100_000)
        let failure = try XCTUnwrap(error(of: download))
        XCTAssertEqual(failure.kind, .interrupted)
        XCTAssertTrue(failure.description.contains("run the same command again"), failure.description)
        XCTAssertFalse(FileManager.default.fileExists(atPath: download.destination))
        let kept = try XCTUnwrap(contents(download.partialPath))
        XCTAssertGreaterThan(kept.count, 0)
        XCTAssertLessThan(kept.count, content.count)

        server.behaviour = .init()
        XCTAssertEqual(try download.run(), .downloaded(bytes: Int64(content.count), resumedAt: Int64(kept.count), startedOver: false))
        XCTAssertEqual(server.requests.last?["range"], "bytes=\(kept.count)-")
        XCTAssertEqual(contents(download.destination), content)
        XCTAssertFalse(FileManager.default.fileExists(atPath: download.partialPath))
    }

    func testAServerThatAnswersARangeRequestWithTheWholeFileStartsItOver() throws {
        let download = download()
        server.behaviour = .init(cutAfter: 100_000)
        XCTAssertEqual(error(of: download)?.kind, .interrupted)

        server.behaviour = .init(ignoresRange: true)
        XCTAssertEqual(try download.run(), .downloaded(bytes: Int64(content.count), resumedAt: 100_000, startedOver: true))
        XCTAssertEqual(server.requests.last?["range"], "bytes=100000-")
        XCTAssertEqual(contents(download.destination), content)
    }

    func testAPartialFileHoldingTheWholeFileIsTakenWithoutFetchingMore() throws {
        let download = download()
        try FileManager.default.createDirectory(atPath: folder + "/hub/checkpoints", withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: download.partialPath, contents: Data(content)))
        XCTAssertEqual(try download.run(), .downloaded(bytes: Int64(content.count), resumedAt: Int64(content.count), startedOver: false))
        XCTAssertEqual(server.requests.last?["range"], "bytes=\(content.count)-")
        XCTAssertEqual(contents(download.destination), content)
    }

    func testCorruptedBytesAreRefusedAndDeletedAndNothingTakesTheName() throws {
        let download = download()
        server.behaviour = .init(corrupts: true)
        let failure = try XCTUnwrap(error(of: download))
        XCTAssertEqual(failure.kind, .hashMismatch)
        XCTAssertTrue(failure.description.contains("does not start with \(weights.sha256Prefix!)"), failure.description)
        XCTAssertFalse(failure.description.contains("\n"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: download.destination))
        XCTAssertFalse(FileManager.default.fileExists(atPath: download.partialPath))
    }

    func testAMissingFileIsOneLineNamingTheStatusAndTheURL() throws {
        let download = download()
        server.behaviour = .init(status: 404)
        let failure = try XCTUnwrap(error(of: download))
        XCTAssertEqual(failure.kind, .httpStatus(404))
        XCTAssertTrue(failure.description.contains("HTTP 404"), failure.description)
        XCTAssertTrue(failure.description.contains(download.source.absoluteString), failure.description)
        XCTAssertFalse(failure.description.contains("\n"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: download.partialPath), "nothing arrived, nothing is kept")

        server.behaviour = .init(status: 503)
        XCTAssertEqual(error(of: download)?.kind, .httpStatus(503))
    }

    func testAPortNothingListensOnCannotBeReached() throws {
        // A socket bound but not listening refuses connections, and holds the port so that nothing else takes it.
        let bound = try LoopbackHTTPServer.boundSocket()
        defer { close(bound.descriptor) }
        let source = URL(string: "http://127.0.0.1:\(bound.port)/models/\(weights.fileName)")!
        let failure = try XCTUnwrap(error(of: download(source: source)))
        XCTAssertEqual(failure.kind, .unreachable)
        XCTAssertTrue(failure.description.hasPrefix("cannot reach 127.0.0.1"), failure.description)
        XCTAssertTrue(failure.description.contains("refused"), failure.description)
        XCTAssertFalse(failure.description.contains("\n"))
    }

    func testADifferentFileAtTheDestinationIsRefusedUnlessForced() throws {
        let download = download()
        try FileManager.default.createDirectory(atPath: folder + "/hub/checkpoints", withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: download.destination, contents: Data("not weights".utf8)))
        let failure = try XCTUnwrap(error(of: download))
        XCTAssertEqual(failure.kind, .destinationDiffers)
        XCTAssertTrue(failure.description.contains("--force"), failure.description)
        XCTAssertEqual(contents(download.destination), Array("not weights".utf8))
        XCTAssertTrue(server.requests.isEmpty)

        XCTAssertEqual(try self.download(force: true).run(), .downloaded(bytes: Int64(content.count), resumedAt: 0, startedOver: false))
        XCTAssertEqual(contents(download.destination), content)
    }

    func testASymbolicLinkWhereThePartialFileGoesIsNeverWrittenThrough() throws {
        let download = download()
        try FileManager.default.createDirectory(atPath: folder + "/hub/checkpoints", withIntermediateDirectories: true)
        let target = folder + "/elsewhere"
        try FileManager.default.createSymbolicLink(atPath: download.partialPath, withDestinationPath: target)
        XCTAssertEqual(error(of: download)?.kind, .unwritable)
        XCTAssertFalse(FileManager.default.fileExists(atPath: target))
    }

    func testASymbolicLinkAtTheDestinationIsRefusedBeforeAnythingIsFetched() throws {
        let download = download()
        try FileManager.default.createDirectory(atPath: folder + "/hub/checkpoints", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: download.destination, withDestinationPath: folder + "/elsewhere")
        let failure = try XCTUnwrap(error(of: download))
        XCTAssertEqual(failure.kind, .unwritable)
        XCTAssertTrue(failure.description.contains("symbolic link"), failure.description)
        XCTAssertTrue(server.requests.isEmpty)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/elsewhere"))
    }

    func testALocalCopyIsTakenFromAFileURLOrAPath() throws {
        let copy = folder + "/usb/" + weights.fileName
        try FileManager.default.createDirectory(atPath: folder + "/usb", withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: copy, contents: Data(content)))
        let download = download(source: try WeightsDownload.source(fromArgument: "file://" + copy))
        XCTAssertEqual(try download.run(), .downloaded(bytes: Int64(content.count), resumedAt: 0, startedOver: false))
        XCTAssertEqual(contents(download.destination), content)
        XCTAssertTrue(server.requests.isEmpty)
        XCTAssertEqual(try WeightsDownload.source(fromArgument: copy), URL(fileURLWithPath: copy))
        XCTAssertThrowsError(try WeightsDownload.source(fromArgument: "ftp://mirror/" + weights.fileName))
    }

    func testTheTableNamesTorchvisionsFilesWithTheirHashPrefixes() throws {
        XCTAssertEqual(PretrainedWeights.torchvision.map(\.name), VGGConfig.torchvision.map(\.name))
        XCTAssertEqual(PretrainedWeights.vgg16.url.absoluteString, "https://download.pytorch.org/models/vgg16-397923af.pth")
        XCTAssertEqual(PretrainedWeights.vgg16.sha256Prefix, "397923af")
        XCTAssertTrue(WeightsChoice.torchvisionSHA256.hasPrefix(PretrainedWeights.vgg16.sha256Prefix!))
        XCTAssertEqual(PretrainedWeights.vgg19.sha256Prefix, "dcbb9e9d")
        XCTAssertNil(PretrainedWeights(name: "x", fileName: "model.pth", url: PretrainedWeights.vgg16.url).sha256Prefix)
    }

    func testTheCommandDownloadsVGG16IntoTorchHubsFolderByDefault() throws {
        let environment = ["TORCH_HOME": String(folder) + "/torch", "HOME": String(folder)]
        let command = try DownloadWeights.parse([])
        XCTAssertEqual(try command.download().weights, .vgg16)
        let download = WeightsDownload(weights: .vgg16, environment: environment)
        XCTAssertEqual(download.destination, WeightsChoice.torchvisionCandidates(environment: environment)[0])
        XCTAssertEqual(download.source, PretrainedWeights.vgg16.url)
        XCTAssertEqual(try DownloadWeights.parse(["vgg19", "--to", "w"]).download().destination, "w/vgg19-dcbb9e9d.pth")
        XCTAssertThrowsError(try DownloadWeights.parse(["vgg17"]).download()) { error in
            XCTAssertTrue("\(error)".contains("unknown model 'vgg17'"), "\(error)")
        }
    }

    func testDoctorSaysHowToGetTheWeightsWhenNoneAreFound() {
        let line = Doctor.weightsLine(environment: ["TORCH_HOME": String(folder) + "/torch", "HOME": String(folder)])
        XCTAssertTrue(line.contains("none found"), line)
        XCTAssertTrue(line.contains("bottleneck weights download"), line)
    }
}

/// An HTTP/1.1 server on 127.0.0.1 with an ephemeral port and a thread per connection, serving files from memory
/// with `Range: bytes=N-`, and misbehaving on request: cutting the body short, corrupting it, answering a status,
/// ignoring the range.
final class LoopbackHTTPServer: @unchecked Sendable {
    struct Behaviour {
        var status: Int?
        /// Close the connection after this many body bytes, with the Content-Length of the whole.
        var cutAfter: Int?
        var corrupts = false
        var ignoresRange = false
    }

    private let files: [String: [UInt8]]
    private let listener: Int32
    let port: UInt16
    private let lock = NSLock()
    private let acceptingEnded = DispatchSemaphore(value: 0)
    private var _behaviour = Behaviour()
    private var _requests: [[String: String]] = []

    var behaviour: Behaviour {
        get { lock.withLock { _behaviour } }
        set { lock.withLock { _behaviour = newValue } }
    }

    /// Each request's header fields, names lowercased.
    var requests: [[String: String]] { lock.withLock { _requests } }

    init(files: [String: [UInt8]]) throws {
        self.files = files
        (listener, port) = try Self.boundSocket()
        guard listen(listener, 16) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        Thread.detachNewThread { [self] in acceptConnections() }
    }

    func url(_ path: String) -> URL { URL(string: "http://127.0.0.1:\(port)\(path)")! }

    /// Ends the accepting thread before the descriptor is closed: a thread still looping on a closed descriptor
    /// would accept on whatever socket reuses its number next, such as the next test's server.
    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        acceptingEnded.wait()
        close(listener)
    }

    /// A TCP socket bound to an ephemeral port of 127.0.0.1.
    static func boundSocket() throws -> (descriptor: Int32, port: UInt16) {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0
            }
        }
        guard descriptor >= 0, bound else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        return (descriptor, UInt16(bigEndian: address.sin_port))
    }

    private func acceptConnections() {
        defer { acceptingEnded.signal() }
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            Thread.detachNewThread { [self] in
                serve(client)
                close(client)
            }
        }
    }

    private func serve(_ client: Int32) {
        guard let (path, headers) = readRequest(client) else { return }
        let behaviour = lock.withLock {
            _requests.append(headers)
            return _behaviour
        }
        guard let file = files[path], behaviour.status == nil else {
            respond(client, status: behaviour.status ?? 404, headers: ["Content-Length": "0"], body: [])
            return
        }
        var body = file
        if behaviour.corrupts { body[body.count / 2] ^= 0xff }
        var status = 200
        var fields = ["Content-Length": "\(file.count)", "Accept-Ranges": "bytes"]
        if !behaviour.ignoresRange, let range = headers["range"], range.hasPrefix("bytes="), range.hasSuffix("-"),
           let first = Int(range.dropFirst(6).dropLast()) {
            guard first < file.count else {
                respond(client, status: 416, headers: ["Content-Length": "0", "Content-Range": "bytes */\(file.count)"], body: [])
                return
            }
            status = 206
            body = Array(body[first...])
            fields["Content-Length"] = "\(body.count)"
            fields["Content-Range"] = "bytes \(first)-\(file.count - 1)/\(file.count)"
        }
        if let cut = behaviour.cutAfter { body = Array(body.prefix(cut)) }
        respond(client, status: status, headers: fields, body: body)
    }

    private func readRequest(_ client: Int32) -> (path: String, headers: [String: String])? {
        var received: [UInt8] = []
        var byte: UInt8 = 0
        while !received.suffix(4).elementsEqual("\r\n\r\n".utf8) {
            guard recv(client, &byte, 1, 0) == 1, received.count < 65_536 else { return nil }
            received.append(byte)
        }
        let lines = String(decoding: received, as: UTF8.self).components(separatedBy: "\r\n")
        let requestLine = lines[0].split(separator: " ")
        guard requestLine.count == 3, requestLine[0] == "GET" else { return nil }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (String(requestLine[1]), headers)
    }

    private func respond(_ client: Int32, status: Int, headers: [String: String], body: [UInt8]) {
        let reason = [200: "OK", 206: "Partial Content", 404: "Not Found", 416: "Range Not Satisfiable"][status] ?? "Status"
        let head = "HTTP/1.1 \(status) \(reason)\r\n"
            + headers.map { "\($0.key): \($0.value)\r\n" }.joined() + "Connection: close\r\n\r\n"
        let bytes = Array(head.utf8) + body
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { send(client, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            sent += count
        }
    }
}
