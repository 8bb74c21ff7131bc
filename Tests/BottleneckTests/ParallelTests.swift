@testable import Bottleneck
import Foundation
import XCTest
@testable import BottleneckKernels

/// `parallelFor` runs on helper threads that spin between regions and sleep after a while; every region
/// must run each index exactly once, whether the helpers are awake, asleep, or busy with another region.
final class ParallelTests: XCTestCase {
    func testEveryIndexRunsOnceInManyShortRegionsAndAfterIdlePauses() {
        let slots = UnsafeMutableBufferPointer<Int>.allocate(capacity: 16)
        defer { slots.deallocate() }
        for region in 0..<20_000 {
            let count = 1 + region % 16
            slots.update(repeating: 0)
            parallelFor(count) { index in slots[index] += 1 }
            guard slots[..<count].allSatisfy({ $0 == 1 }) else {
                return XCTFail("region \(region) of \(count) indices ran \(Array(slots[..<count]))")
            }
            // Long enough for the helpers to stop spinning and sleep: the next region must wake them.
            if region % 2_000 == 0 { usleep(5_000) }
        }
    }

    func testNestedAndConcurrentRegionsRunInline() {
        let slots = UnsafeMutableBufferPointer<Int>.allocate(capacity: 4 * 3 * 2)
        defer { slots.deallocate() }
        slots.update(repeating: 0)
        let base = UncheckedSendable(slots.baseAddress!)
        let done = DispatchGroup()
        for caller in 0..<2 {
            done.enter()
            Thread {
                for _ in 0..<500 {
                    parallelFor(4) { outer in
                        parallelFor(3) { inner in base.value[caller * 12 + outer * 3 + inner] += 1 }
                    }
                }
                done.leave()
            }.start()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success, "two threads' nested regions finished")
        XCTAssertEqual(Array(slots), Array(repeating: 500, count: 24))
    }

    /// A budget of N lets at most N threads work on a region (the caller and N - 1 helpers), and OpenBLAS N.
    func testThreadBudgetBoundsTheThreadsOfARegionAndOpenBLAS() {
        defer { ThreadBudget.limit(to: availableCores) }
        let count = 64
        let workers = UnsafeMutableBufferPointer<UInt>.allocate(capacity: count)
        defer { workers.deallocate() }
        for budget in Set([1, min(2, availableCores), availableCores]).sorted() {
            ThreadBudget.limit(to: budget)
            XCTAssertEqual(BLASRuntime.threads, budget)
            for _ in 0..<50 {
                parallelFor(count) { index in
                    workers[index] = UInt(bitPattern: Int(bitPattern: pthread_self()))
                    // Long enough that every helper allowed to join has time to.
                    usleep(20)
                }
                let threads = Set(workers)
                XCTAssertLessThanOrEqual(threads.count, budget, "budget \(budget)")
                if budget == 1 { XCTAssertEqual(threads, [UInt(bitPattern: Int(bitPattern: pthread_self()))], "one thread: the caller's") }
            }
        }
    }

    /// The budget bounds who works, not how the work is cut: a fine-tuning step (forward, backward, SGD) and a
    /// forward pass give the same bits on one thread as on all of them.
    func testOneThreadGivesTheBitsOfAllThreads() throws {
        defer { ThreadBudget.limit(to: availableCores) }
        let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
        var generator = SeededGenerator(seed: 3)
        let images = Tensor(shape: [3, 3, 48, 48]) { values in
            for index in values.indices { values[index] = generator.nextNormal() }
        }
        func run(threads: Int) throws -> (features: Tensor, parameters: [Tensor]) {
            ThreadBudget.limit(to: threads)
            let vgg = VGG.randomlyInitialized(config: config, seed: 0)
            let features = try vgg.forward(images, through: CutPoint("fc7", in: config))
            var network = try FineTuneNetwork(vgg, dropout: 0.5, frozenThrough: -1)
            var optimizer = SGD(momentum: 0.9)
            for step in 0..<2 {
                _ = network.trainStep(images: images, labels: [0, 4, 9], optimizer: &optimizer, learningRate: { _ in 0.01 }) { row, position in
                    TrainingRandomness.dropoutGenerator(seed: 0, epoch: step, row: row, layerPosition: position)
                }
            }
            return (features, network.stateDict.map(\.tensor))
        }
        let all = try run(threads: availableCores)
        let one = try run(threads: 1)
        XCTAssertEqual(one.features.data, all.features.data)
        XCTAssertEqual(one.parameters.map(\.data), all.parameters.map(\.data))
    }

    func testThreadSweepDoublesUpToTheMaximum() {
        XCTAssertEqual(ThreadSweep.threadCounts(upTo: 1), [1])
        XCTAssertEqual(ThreadSweep.threadCounts(upTo: 2), [1, 2])
        XCTAssertEqual(ThreadSweep.threadCounts(upTo: 6), [1, 2, 4, 6])
        XCTAssertEqual(ThreadSweep.threadCounts(upTo: 16), [1, 2, 4, 8, 16])
    }
}
