#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import BottleneckKernels

/// SHA-256 (FIPS 180-4), streamed: the weights fingerprint recorded in feature
/// caches and run directories. Written here because Debian's base image has
/// libcrypto but not its headers, and a fingerprint must not need a new package.
package struct SHA256: Sendable {
    private var state: [UInt32] = [0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a,
                                   0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19]
    /// Bytes of an incomplete 64-byte block waiting for more input.
    private var pending = [UInt8](repeating: 0, count: 64)
    private var pendingCount = 0
    private var totalBytes: UInt64 = 0

    package init() {}

    package mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var input = bytes.baseAddress, bytes.count > 0 else { return }
        var remaining = bytes.count
        totalBytes &+= UInt64(remaining)
        if pendingCount > 0 {
            let taken = min(64 - pendingCount, remaining)
            pending.withUnsafeMutableBytes { pendingBytes in
                (pendingBytes.baseAddress! + pendingCount).copyMemory(from: input, byteCount: taken)
            }
            pendingCount += taken
            input += taken
            remaining -= taken
            guard pendingCount == 64 else { return }
            pending.withUnsafeBytes { Self.compress(&state, blocks: $0.baseAddress!, count: 1) }
            pendingCount = 0
        }
        let wholeBlocks = remaining / 64
        if wholeBlocks > 0 { Self.compress(&state, blocks: input, count: wholeBlocks) }
        let tail = remaining - wholeBlocks * 64
        if tail > 0 {
            let tailStart = input + wholeBlocks * 64
            pending.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: tailStart, byteCount: tail) }
            pendingCount = tail
        }
    }

    package mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The 32-byte digest; the hasher must not be updated afterwards.
    package mutating func finalize() -> [UInt8] {
        let messageBits = totalBytes &* 8
        // Padding: 0x80, zeros up to 56 mod 64, then the message length in bits, big-endian.
        var padding: [UInt8] = [0x80] + [UInt8](repeating: 0, count: (119 - pendingCount) % 64)
        withUnsafeBytes(of: messageBits.bigEndian) { padding.append(contentsOf: $0) }
        update(padding)
        return state.flatMap { word in withUnsafeBytes(of: word.bigEndian) { Array($0) } }
    }

    package static func digest(_ bytes: [UInt8]) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(bytes)
        return hasher.finalize()
    }

    package static func hex(_ digest: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: digest.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0xf)]] }, as: UTF8.self)
    }

    /// The 32 bytes a 64-digit lowercase hex digest spells; nil for anything else.
    package static func bytes(fromHex hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        func value(_ digit: UInt8) -> UInt8? {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: 64, by: 2) {
            guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    /// Hex digest of a file read in 4 MB pieces: memory stays flat whatever the file size.
    package static func hexDigest(ofFileAt path: String) throws(WeightsError) -> String {
        let descriptor: Int32
        do {
            descriptor = try DurableFiles.openRegularFile(path).descriptor
        } catch {
            throw WeightsError(opening: error)
        }
        defer { close(descriptor) }
        let chunkSize = 4 << 20
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 64)
        defer { chunk.deallocate() }
        var hasher = SHA256()
        while true {
            let count = read(descriptor, chunk.baseAddress, chunkSize)
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                throw WeightsError(.unreadable, path: path, "read failed while hashing: \(systemMessage(errno))")
            }
            hasher.update(UnsafeRawBufferPointer(rebasing: chunk[0..<count]))
        }
        return hex(hasher.finalize())
    }

    private static let roundConstants: [UInt32] = [
        0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
        0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
        0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
        0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
        0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
        0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
        0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
        0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
    ]

    /// Folds `count` 64-byte blocks into `state`. The hot loop: eight rounds
    /// per iteration with the working variables renamed instead of shifted
    /// (the usual unrolling), so they stay in registers.
    private static func compress(_ state: inout [UInt32], blocks: UnsafeRawPointer, count: Int) {
        var h0 = state[0], h1 = state[1], h2 = state[2], h3 = state[3]
        var h4 = state[4], h5 = state[5], h6 = state[6], h7 = state[7]
        roundConstants.withUnsafeBufferPointer { constants in
            withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { schedule in
                for blockIndex in 0..<count {
                    let block = blocks + blockIndex * 64
                    for index in 0..<16 {
                        schedule[index] = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self))
                    }
                    for index in 16..<64 {
                        let early = schedule[index - 15], late = schedule[index - 2]
                        let sigma0 = rotateRight(early, 7) ^ rotateRight(early, 18) ^ (early &>> 3)
                        let sigma1 = rotateRight(late, 17) ^ rotateRight(late, 19) ^ (late &>> 10)
                        schedule[index] = schedule[index - 16] &+ sigma0 &+ schedule[index - 7] &+ sigma1
                    }
                    var a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7
                    for index in stride(from: 0, to: 64, by: 8) {
                        @inline(__always) func input(_ offset: Int) -> UInt32 {
                            constants[index + offset] &+ schedule[index + offset]
                        }
                        round(a, b, c, &d, e, f, g, &h, input(0))
                        round(h, a, b, &c, d, e, f, &g, input(1))
                        round(g, h, a, &b, c, d, e, &f, input(2))
                        round(f, g, h, &a, b, c, d, &e, input(3))
                        round(e, f, g, &h, a, b, c, &d, input(4))
                        round(d, e, f, &g, h, a, b, &c, input(5))
                        round(c, d, e, &f, g, h, a, &b, input(6))
                        round(b, c, d, &e, f, g, h, &a, input(7))
                    }
                    h0 &+= a; h1 &+= b; h2 &+= c; h3 &+= d
                    h4 &+= e; h5 &+= f; h6 &+= g; h7 &+= h
                }
            }
        }
        state = [h0, h1, h2, h3, h4, h5, h6, h7]
    }

    /// One SHA-256 round, written so that the caller rotates the roles of the
    /// variables: only `d` and `h` change.
    @inline(__always)
    private static func round(_ a: UInt32, _ b: UInt32, _ c: UInt32, _ d: inout UInt32,
                              _ e: UInt32, _ f: UInt32, _ g: UInt32, _ h: inout UInt32, _ constantPlusWord: UInt32) {
        let sum1 = rotateRight(e, 6) ^ rotateRight(e, 11) ^ rotateRight(e, 25)
        let choice = g ^ (e & (f ^ g))
        let temp1 = h &+ sum1 &+ choice &+ constantPlusWord
        let sum0 = rotateRight(a, 2) ^ rotateRight(a, 13) ^ rotateRight(a, 22)
        let majority = (a & b) | (c & (a | b))
        d &+= temp1
        h = temp1 &+ sum0 &+ majority
    }

    @inline(__always)
    private static func rotateRight(_ value: UInt32, _ bits: UInt32) -> UInt32 {
        (value &>> bits) | (value &<< (32 &- bits))
    }
}
