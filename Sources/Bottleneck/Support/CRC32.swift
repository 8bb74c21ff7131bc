import BottleneckKernels

// Ten lines of table-driven CRC-32 rather than a dependency: swift-crypto has none, and the journal's records are
// checked once each on reading.

/// CRC-32 as zlib, PNG and zip compute it (reflected polynomial 0xEDB88320): the
/// checksum that lets the feature cache journal tell a whole record from a torn one.
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    /// The CRC of `bytes`, or of everything checked before followed by `bytes` when
    /// `previous` is the CRC of what came before.
    static func checksum(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        table.withUnsafeBufferPointer { table in
            var crc = ~previous
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
            return ~crc
        }
    }
}
