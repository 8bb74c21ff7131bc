import Foundation
import BottleneckKernels

/// Decodes and preprocesses images on a background thread, one batch ahead of the
/// network (two batches buffered), so the cores never wait for JPEG decoding.
final class BatchDecoder: @unchecked Sendable {
    struct Batch {
        /// [slots, 3, crop, crop]: each item's slots in turn (one per item unless `slotsPerItem` says more)
        var images: Tensor
        var items: [ImageFolder.Item]
        /// What each item's file held when it was read: the bytes that were decoded.
        var identities: [FileIdentity]
        var failed: [(path: String, reason: String)]
    }

    private let condition = NSCondition()
    private var ready: [Batch] = []
    private var finished = false
    private var cancelled = false
    static let capacity = 2

    /// Writes image `items[index]` as a [3, S, S] tensor into its batch slot number `view` (from 0).
    typealias Transform = @Sendable (_ image: RGBImage, _ index: Int, _ view: Int, _ slot: UnsafeMutableBufferPointer<Float>) -> Void

    convenience init(folder: ImageFolder, items: [ImageFolder.Item], batchSize: Int, preprocessing: Preprocessing) {
        self.init(folder: folder, items: items, batchSize: batchSize, imageShape: preprocessing.outputShape) { image, _, _, slot in
            preprocessing.write(image, into: slot)
        }
    }

    /// `transform` runs on the decoding thread; training uses it for per-image random augmentation, extraction for
    /// the `slotsPerItem(index)` views (eval and augmented) of one image, each decoded once.
    init(folder: ImageFolder, items: [ImageFolder.Item], batchSize: Int, imageShape: [Int],
         slotsPerItem: @escaping @Sendable (Int) -> Int = { _ in 1 }, transform: @escaping Transform) {
        let thread = Thread { [self] in
            self.produce(folder: folder, items: items, batchSize: batchSize, imageShape: imageShape, slotsPerItem: slotsPerItem,
                         transform: transform)
        }
        thread.name = "bottleneck-decode"
        thread.start()
    }

    /// The next batch in order, or nil when every image has been handed out.
    func next() -> Batch? {
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty && !finished { condition.wait() }
        guard !ready.isEmpty else { return nil }
        let batch = ready.removeFirst()
        condition.signal()
        return batch
    }

    func cancel() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        condition.unlock()
    }

    private func produce(folder: ImageFolder, items: [ImageFolder.Item], batchSize: Int, imageShape: [Int],
                         slotsPerItem: (Int) -> Int, transform: Transform) {
        var index = 0
        let slotSize = imageShape.reduce(1, *)
        while index < items.count {
            var batchItems: [ImageFolder.Item] = []
            var identities: [FileIdentity] = []
            var failed: [(path: String, reason: String)] = []
            // Sized by the images left, not the batch size: `--batch-size 8000` on 2 images allocates 2 slots.
            let slotCount = (index..<min(index + batchSize, items.count)).reduce(0) { $0 + slotsPerItem($1) }
            var usedSlots = 0
            var buffer = [Float](repeating: 0, count: slotCount * slotSize)
            buffer.withUnsafeMutableBufferPointer { slots in
                while batchItems.count < batchSize && index < items.count {
                    let item = items[index]
                    index += 1
                    do {
                        let path = folder.url(of: item).path
                        let file = try FileIdentity.read(path: path)
                        let image = try ImageDecoder.decode(bytes: file.bytes, name: path)
                        for view in 0..<slotsPerItem(index - 1) {
                            let slot = (usedSlots + view) * slotSize
                            transform(image, index - 1, view, UnsafeMutableBufferPointer(rebasing: slots[slot..<(slot + slotSize)]))
                        }
                        usedSlots += slotsPerItem(index - 1)
                        batchItems.append(item)
                        identities.append(file.identity)
                    } catch let error as ImageDecodingError {
                        failed.append((item.path, error.reason))
                    } catch {
                        failed.append((item.path, "\(error)"))
                    }
                }
            }
            buffer.removeLast((slotCount - usedSlots) * slotSize)
            let batch = Batch(images: Tensor(shape: [usedSlots] + imageShape, data: buffer),
                              items: batchItems, identities: identities, failed: failed)
            condition.lock()
            while ready.count >= Self.capacity && !cancelled { condition.wait() }
            if cancelled {
                condition.unlock()
                return
            }
            ready.append(batch)
            condition.signal()
            condition.unlock()
        }
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }
}
