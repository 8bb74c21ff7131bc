import Glibc

/// How the process's freed memory goes back to the kernel.
package enum FreedMemory {
    /// Keeps freed memory in the process for the next allocation instead of returning it to the kernel. glibc maps
    /// every allocation over 32 MB (its largest mmap threshold) afresh and unmaps it when freed, so each training step
    /// faulted in all its large activations again, zero-filled page by page: VGG16 at batch 8 took 230,000 page faults
    /// a step and twice the system time (measured over 3 steps on 2 cores: 1.66 s with this, 3.23 s without). The
    /// peak is unchanged; the process holds it until it exits, which costs nothing to a process that runs one job.
    package static func keepForReuse() {
        // mallopt(3) is looked up because Swift's Glibc module does not import <malloc.h>; its constants are that
        // header's M_MMAP_MAX and M_TRIM_THRESHOLD.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        let (mmapMaximum, trimThreshold): (Int32, Int32) = (-4, -1)
        _ = mallopt(mmapMaximum, 0)
        _ = mallopt(trimThreshold, Int32.max)
    }
}
