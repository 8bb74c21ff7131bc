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
}
