import Foundation
import BottleneckKernels
import Bottleneck

/// How every command writes its outputs, said in the --help of each --out.
let outputPolicy = "Files are written aside and renamed into place; an existing symbolic link, device or FIFO where "
    + "a file goes is refused, never written through or replaced."

/// Progress and diagnostics go to stderr so that stdout stays the result.
func printErr(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// Said on stdout right after a result made with random backbone weights, so that no one quotes its figures as
/// transfer learning; nothing for pretrained weights.
func printRandomWeightsNote(_ weights: WeightsIdentity?) {
    if let note = weights?.randomWeightsNote { print(note) }
}
