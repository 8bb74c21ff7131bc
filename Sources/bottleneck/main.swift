import ArgumentParser
import Bottleneck

BLASRuntime.reexecWithFastKernelIfNeeded()
Bottleneck.main()
