#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Why a weights download stopped, as one line naming the URL or file.
package struct WeightsDownloadError: Error, CustomStringConvertible, Sendable {
    package enum Kind: Sendable, Equatable {
        /// Not an http, https or file URL, or the file it names cannot be read.
        case badSource
        /// No connection: the name does not resolve, nothing answers, no network, TLS fails.
        case unreachable
        /// The transfer broke off; what arrived is kept for the next run to continue.
        case interrupted
        /// The server, or a proxy (407), answered with a status other than 200 or 206.
        case httpStatus(Int)
        /// What arrived does not hash to the prefix in the file's name; it was deleted.
        case hashMismatch
        /// Another file is already where the download goes.
        case destinationDiffers
        /// The destination, its folder or the partial file cannot be created, written or renamed.
        case unwritable
        /// Another process is downloading into the same partial file.
        case busy
    }

    package let kind: Kind
    package let description: String

    init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}

/// Fetches a pretrained weights file as torch.hub does — into its checkpoint folder, taking its name only once the
/// SHA-256 starts with the hex digits in that name — but resumable: what has arrived stays in `NAME.partial` beside
/// the destination, and the next run asks for the rest (`Range: bytes=N-`), since a 528 MB transfer does break.
package struct WeightsDownload {
    package enum Outcome: Equatable, Sendable {
        /// The destination already held the file; nothing was fetched.
        case alreadyPresent
        /// `bytes`: the file's size; `resumedAt`: what an earlier run had fetched; `startedOver`: the server
        /// ignored the request to resume, so those bytes were fetched again.
        case downloaded(bytes: Int64, resumedAt: Int64, startedOver: Bool)
    }

    package let weights: PretrainedWeights
    package let source: URL
    package let destination: String
    /// `--force`: a file at the destination that is not these weights is replaced instead of refused.
    package let replacesDifferentFile: Bool

    /// `folder` defaults to the one torch.hub downloads into, where commands look for weights.
    package init(weights: PretrainedWeights, source: URL? = nil, folder: String? = nil, replacesDifferentFile: Bool = false,
                 environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.weights = weights
        self.source = source ?? weights.url
        let folder = folder ?? WeightsChoice.torchHubFolders(environment: environment)[0]
        self.destination = (folder as NSString).appendingPathComponent(weights.fileName)
        self.replacesDifferentFile = replacesDifferentFile
    }

    /// The bytes fetched so far. Not a `DurableFiles.temporaryPath`: those are deleted once their process is gone,
    /// and this one is kept on purpose.
    package var partialPath: String { destination + ".partial" }

    /// A `--url` value: an http, https or file URL, or a plain path to a local copy.
    package static func source(fromArgument argument: String) throws -> URL {
        guard argument.contains("://") else { return URL(fileURLWithPath: argument) }
        guard let url = URL(string: argument), let scheme = url.scheme?.lowercased(),
              scheme == "file" || (["http", "https"].contains(scheme) && url.host?.isEmpty == false)
        else {
            throw WeightsDownloadError(.badSource, "\(argument): not an http://, https:// or file:// URL")
        }
        return url
    }

    package func run() throws -> Outcome {
        guard let expected = weights.sha256Prefix else {
            throw WeightsDownloadError(.badSource, "\(weights.fileName): the name carries no sha256 prefix to check the download against")
        }
        if try destinationHoldsWeights(expected) { return .alreadyPresent }
        try prepareFolder()
        let partial = try PartialDownload.open(partialPath)
        defer { partial.release() }
        do {
            let resumedAt = partial.length
            let startedOver = try fetch(into: partial)
            let digest = partial.finalDigest()
            guard digest.hasPrefix(expected) else {
                partial.delete()
                throw WeightsDownloadError(.hashMismatch, "\(source): what arrived has sha256 \(digest.prefix(16))…, which does not "
                                           + "start with \(expected) as the name \(weights.fileName) says: it is damaged or another "
                                           + "file; deleted \(partialPath)")
            }
            do {
                try DurableFiles.checkDestination(destination)
                try DurableFiles.replace(destination, with: partialPath)
            } catch {
                throw WeightsDownloadError(.unwritable, "\(error)")
            }
            return .downloaded(bytes: partial.length, resumedAt: resumedAt, startedOver: startedOver)
        } catch {
            // A request that failed before a byte arrived leaves nothing worth keeping.
            if partial.length == 0 { partial.delete() }
            throw error
        }
    }

    /// Whether the destination already holds these weights; throws when it holds another file that may not be replaced.
    private func destinationHoldsWeights(_ expected: String) throws -> Bool {
        guard FileManager.default.fileExists(atPath: destination) else { return false }
        let digest: String
        do throws(WeightsError) {
            digest = try SHA256.hexDigest(ofFileAt: destination)
        } catch {
            throw WeightsDownloadError(.destinationDiffers, "\(destination): already exists and cannot be hashed (\(error.detail))")
        }
        if digest.hasPrefix(expected) { return true }
        guard replacesDifferentFile else {
            throw WeightsDownloadError(.destinationDiffers, "\(destination): already exists and is not \(weights.fileName) (its sha256 "
                                       + "starts \(digest.prefix(8)), not \(expected)); move it away, or pass --force to replace it")
        }
        return false
    }

    private func prepareFolder() throws {
        let folder = DurableFiles.folderPath(of: destination)
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw WeightsDownloadError(.unwritable, "cannot create the folder \(folder): \(error.localizedDescription)")
        }
        do {
            try DurableFiles.checkWritableFolder(for: destination)
            // Now, not only before the rename: a link there would otherwise be found after the whole transfer.
            try DurableFiles.checkDestination(destination)
        } catch {
            throw WeightsDownloadError(.unwritable, "\(error)")
        }
    }

    /// Appends the rest of the file to `partial`; true when bytes kept from an earlier run had to be dropped.
    private func fetch(into partial: PartialDownload) throws -> Bool {
        if source.isFileURL { return try copyLocalFile(into: partial) }
        switch try HTTPTransfer.run(from: source, into: partial) {
        case .finished(let startedOver):
            return startedOver
        case .keptBytesBeyondEnd:
            try partial.restart()
            _ = try HTTPTransfer.run(from: source, into: partial)
            return true
        }
    }

    /// A `file://` source: an air-gapped machine's copy on a mounted disk, continued like an HTTP download.
    private func copyLocalFile(into partial: PartialDownload) throws -> Bool {
        let path = source.path
        let opened: (descriptor: Int32, status: stat)
        do {
            opened = try DurableFiles.openRegularFile(path)
        } catch {
            throw WeightsDownloadError(.badSource, "\(error)")
        }
        defer { close(opened.descriptor) }
        let size = Int64(opened.status.st_size)
        let startedOver = partial.length > size
        if startedOver { try partial.restart() }
        let progress = DownloadProgress(remaining: size - partial.length, resumedAt: partial.length)
        defer { progress.finish() }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
        defer { chunk.deallocate() }
        while partial.length < size {
            let count = pread(opened.descriptor, chunk.baseAddress, chunk.count, off_t(partial.length))
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                throw WeightsDownloadError(.badSource, "\(path): " + (count == 0 ? "the file shrank while it was copied"
                                                                      : "cannot read it: \(systemMessage(errno))"))
            }
            try partial.append(UnsafeRawBufferPointer(rebasing: chunk[0..<count]))
            progress.advance(by: count)
        }
        return startedOver
    }
}

/// `NAME.partial`: the bytes fetched so far, hashed as they are appended. An exclusive flock on it keeps a second
/// download into the same folder from interleaving its writes with this one's.
final class PartialDownload {
    let path: String
    /// -1 once closed.
    private var descriptor: Int32
    private(set) var length: Int64
    private var hasher: SHA256

    private init(path: String, descriptor: Int32, length: Int64, hasher: SHA256) {
        self.path = path
        self.descriptor = descriptor
        self.length = length
        self.hasher = hasher
    }


    /// Opens or creates the file, never through a symbolic link, and hashes what an earlier run left in it.
    static func open(_ path: String) throws -> PartialDownload {
        let descriptor: Int32
        do throws(FileAccessError) {
            try DurableFiles.checkDestination(path)
            descriptor = try DurableFiles.openRegularFile(path, flags: O_RDWR | O_CREAT | O_NOFOLLOW).descriptor
        } catch {
            throw WeightsDownloadError(.unwritable, "\(error.path): cannot keep the download there: \(error.reason)")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            close(descriptor)
            throw WeightsDownloadError(.busy, "\(path): another process is downloading into it; let it finish")
        }
        var hasher = SHA256()
        do {
            let length = try hasher.update(readingToEndOf: descriptor, path: path)
            return PartialDownload(path: path, descriptor: descriptor, length: length, hasher: hasher)
        } catch {
            close(descriptor)
            throw WeightsDownloadError(.unwritable, "\(error)")
        }
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        if let code = DurableFiles.write(bytes, to: descriptor, at: length) {
            throw WeightsDownloadError(.unwritable, "cannot write \(path): \(systemMessage(code))")
        }
        hasher.update(bytes)
        length += Int64(bytes.count)
    }

    /// Drops the bytes kept so far, for a server that sends the file from its start.
    func restart() throws {
        guard ftruncate(descriptor, 0) == 0 else {
            throw WeightsDownloadError(.unwritable, "cannot empty \(path) to start over: \(systemMessage(errno))")
        }
        length = 0
        hasher = SHA256()
    }

    /// The SHA-256 of all the bytes appended; nothing may be appended afterwards.
    func finalDigest() -> String {
        SHA256.hex(hasher.finalize())
    }

    func delete() {
        unlink(path)
    }

    /// Lets go of the file and its lock, now rather than when the last reference goes: URLSession keeps its
    /// delegate, and with it this object, until the session is torn down on its own queue.
    func release() {
        guard descriptor >= 0 else { return }
        close(descriptor)
        descriptor = -1
    }

    deinit { release() }
}

/// A download's bar in whole megabytes (ProgressReporter counts integers), drawn only for a megabyte or more.
final class DownloadProgress {
    private let reporter: ProgressReporter?
    private let extra: String
    private var received: Int64 = 0

    init(remaining: Int64, resumedAt: Int64) {
        let total = Int(remaining / 1_000_000)
        reporter = total > 0 ? ProgressReporter(label: "MB", total: total, unit: "MB") : nil
        extra = resumedAt > 0 ? "resumed at \(Int(resumedAt).formattedBytes)" : ""
    }

    func advance(by count: Int) {
        let before = received / 1_000_000
        received += Int64(count)
        if received / 1_000_000 != before { reporter?.update(done: Int(received / 1_000_000), extra: extra) }
    }

    func finish() {
        reporter?.finish()
    }
}

/// One GET of the source into the partial file from its current length. A URLSession data task's delegate writes
/// each piece to disk as it arrives, so memory holds pieces in flight, never the file.
private final class HTTPTransfer: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    // @unchecked: the fields change only on the session's serial delegate queue, and `run` reads them after `ended`.

    enum Ending {
        /// The partial file now holds the whole response; `startedOver`: a 200 answered the request to resume.
        case finished(startedOver: Bool)
        /// 416: the partial file is longer than the file on the server, so it cannot be the start of it.
        case keptBytesBeyondEnd
    }

    private let source: URL
    private let partial: PartialDownload
    private let offset: Int64
    private let ended = DispatchSemaphore(value: 0)
    private var ending = Ending.finished(startedOver: false)
    /// Set when this side ends the task (a refused response, a failed write): its cancellation is not the error.
    private var stopped = false
    private var failure: WeightsDownloadError?
    private var expectedLength: Int64?
    private var progress: DownloadProgress?

    private init(source: URL, partial: PartialDownload) {
        self.source = source
        self.partial = partial
        self.offset = partial.length
    }

    static func run(from source: URL, into partial: PartialDownload) throws -> Ending {
        let transfer = HTTPTransfer(source: source, partial: partial)
        let queue = OperationQueue()
        queue.maxConcurrentOperationCount = 1
        let configuration = URLSessionConfiguration.ephemeral
        // A cached answer would be stale for a resumed range, and caching 528 MB is pointless.
        configuration.urlCache = nil
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        let session = URLSession(configuration: configuration, delegate: transfer, delegateQueue: queue)
        var request = URLRequest(url: source)
        // Byte ranges count bytes of the file itself, not of a compressed encoding of it.
        request.setValue("identity", forHTTPHeaderField: "Accept-Encoding")
        if transfer.offset > 0 { request.setValue("bytes=\(transfer.offset)-", forHTTPHeaderField: "Range") }
        session.dataTask(with: request).resume()
        transfer.ended.wait()
        session.finishTasksAndInvalidate()
        transfer.progress?.finish()
        if let failure = transfer.failure { throw failure }
        return transfer.ending
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @Sendable @escaping (URLSession.ResponseDisposition) -> Void) {
        do {
            if try accept(response) {
                completionHandler(.allow)
                return
            }
        } catch {
            failure = error as? WeightsDownloadError ?? WeightsDownloadError(.unwritable, "\(error)")
        }
        stopped = true
        completionHandler(.cancel)
        // swift-corelibs-foundation does not wait for the disposition, and disregards it: the body keeps coming.
        dataTask.cancel()
    }

    /// Whether to take the response's body; false when there is nothing more to fetch or the body is of no use.
    private func accept(_ response: URLResponse) throws -> Bool {
        guard let http = response as? HTTPURLResponse else { return true }
        let contentRange = http.value(forHTTPHeaderField: "Content-Range")
        switch http.statusCode {
        case 206:
            guard let range = contentRange.flatMap(ContentRange.init), range.first == offset else {
                throw WeightsDownloadError(.httpStatus(206), "\(source): asked for the bytes from \(offset) on, the server sent "
                                           + "Content-Range '\(contentRange ?? "")'")
            }
            expectedLength = range.total
        case 200:
            if offset > 0 {
                try partial.restart()
                ending = .finished(startedOver: true)
            }
            expectedLength = http.expectedContentLength >= 0 ? Int64(http.expectedContentLength) : nil
        case 416 where offset > 0:
            // The kept bytes reach the end of the file (a run stopped between the last byte and the rename), or beyond it.
            ending = contentRange.flatMap(ContentRange.init)?.total == offset ? .finished(startedOver: false) : .keptBytesBeyondEnd
            return false
        case 407:
            throw WeightsDownloadError(.httpStatus(407), "\(source): the proxy refused to connect (HTTP 407 Proxy Authentication "
                                       + "Required); give its user and password in \(proxyVariable ?? "https_proxy") "
                                       + "as http://USER:PASSWORD@HOST:PORT")
        default:
            let code = http.statusCode
            let meaning = code == 404 ? "no such file there" : HTTPURLResponse.localizedString(forStatusCode: code)
            throw WeightsDownloadError(.httpStatus(code), "\(source): the server answered HTTP \(code) (\(meaning))")
        }
        if let expectedLength { progress = DownloadProgress(remaining: expectedLength - partial.length, resumedAt: partial.length) }
        return true
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        guard !stopped else { return }
        do {
            try data.withUnsafeBytes { try partial.append($0) }
            progress?.advance(by: data.count)
        } catch {
            failure = error as? WeightsDownloadError ?? WeightsDownloadError(.unwritable, "\(error)")
            stopped = true
            dataTask.cancel()
        }
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
        defer { ended.signal() }
        guard !stopped else { return }
        if let error {
            failure = describe(error)
        } else if let expectedLength, partial.length != expectedLength {
            failure = interrupted("the connection closed early")
        }
    }

    private func describe(_ error: Error) -> WeightsDownloadError {
        let host = source.host ?? source.absoluteString
        let via = proxyVariable.map { " (through the proxy in $\($0))" } ?? ""
        let code = (error as? URLError)?.code
        switch code {
        case .cannotFindHost?, .dnsLookupFailed?:
            return WeightsDownloadError(.unreachable, "cannot reach \(host)\(via): its name does not resolve (no network, or DNS "
                                        + "fails); \(source)")
        case .cannotConnectToHost?:
            return WeightsDownloadError(.unreachable, "cannot reach \(host)\(via): the connection was refused; \(source)")
        case .notConnectedToInternet?:
            return WeightsDownloadError(.unreachable, "cannot reach \(host)\(via): no network; \(source)")
        case .secureConnectionFailed?, .serverCertificateUntrusted?, .serverCertificateHasBadDate?,
             .serverCertificateNotYetValid?, .serverCertificateHasUnknownRoot?:
            return WeightsDownloadError(.unreachable, "cannot reach \(host)\(via) securely: \(error.localizedDescription); \(source)")
        default:
            guard partial.length > offset || code == .networkConnectionLost else {
                return WeightsDownloadError(.unreachable, "cannot download \(source)\(via): \(error.localizedDescription)")
            }
            return interrupted(error.localizedDescription)
        }
    }

    private func interrupted(_ reason: String) -> WeightsDownloadError {
        let of = expectedLength.map { " of \(Int($0).formattedBytes)" } ?? ""
        return WeightsDownloadError(.interrupted, "\(source): the download stopped at \(Int(partial.length).formattedBytes)\(of) "
                                    + "(\(reason)); run the same command again to continue from \(partial.path)")
    }

    /// The environment variable naming the proxy that libcurl, under URLSession, sends this request through.
    private var proxyVariable: String? {
        let scheme = source.scheme?.lowercased() ?? "https"
        let environment = ProcessInfo.processInfo.environment
        return ["\(scheme)_proxy", "\(scheme.uppercased())_PROXY", "all_proxy", "ALL_PROXY"].first { environment[$0]?.isEmpty == false }
    }
}

/// `Content-Range: bytes FIRST-LAST/TOTAL` of a 206, or `bytes */TOTAL` of a 416; TOTAL may be `*` (unknown).
struct ContentRange: Equatable {
    var first: Int64?
    var total: Int64?

    init?(_ header: String) {
        guard header.hasPrefix("bytes "), let slash = header.lastIndex(of: "/") else { return nil }
        let range = header[header.index(header.startIndex, offsetBy: 6)..<slash]
        let total = header[header.index(after: slash)...]
        if range == "*" {
            first = nil
        } else {
            guard let dash = range.firstIndex(of: "-"), let first = Int64(range[..<dash]) else { return nil }
            self.first = first
        }
        if total == "*" {
            self.total = nil
        } else {
            guard let value = Int64(total) else { return nil }
            self.total = value
        }
    }
}
