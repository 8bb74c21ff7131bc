import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The ranks of a data-parallel run that `mpirun -n K` (or `srun --mpi=pmi2`) started, and the sums across them
/// that keep their models equal.
///
/// OpenMPI is loaded at run time with dlopen, not linked: the single-machine build, its tests and the README's
/// install need no MPI at all, and only a process an MPI launcher started ever touches libmpi. That makes this the
/// OpenMPI ABI (Debian's libmpi.so.40): its handles are pointers, and MPI_COMM_WORLD, MPI_FLOAT, MPI_DOUBLE and
/// MPI_SUM are the addresses of the global objects ompi_mpi_comm_world, ompi_mpi_float, ompi_mpi_double and
/// ompi_mpi_op_sum, which dlsym returns as they are. (A C shim target would need mpi.h, so libopenmpi-dev, to build.)
///
/// Every sum is a nonblocking MPI_Iallreduce polled with MPI_Test against a deadline: a rank that died or hangs
/// must fail the job (MPI_Abort) rather than leave the others waiting forever. MPI is called from the thread that
/// made the group only (MPI_THREAD_FUNNELED).
package final class ProcessGroup: @unchecked Sendable {
    package let rank: Int
    package let size: Int
    /// How long a rank waits for the others in one sum before it aborts the job.
    package let collectiveTimeout: Duration
    private let mpi: OpenMPI

    /// Rank 0 writes the run folder; the others write nothing.
    package var isCoordinator: Bool { rank == 0 }

    /// Whether an MPI launcher started this process as one of several ranks: mpirun sets OMPI_COMM_WORLD_SIZE,
    /// srun PMI_SIZE (--mpi=pmi2) or PMIX_RANK (--mpi=pmix). A plain `sbatch` job sets none, and a world of one
    /// needs no MPI. Several srun tasks without any of them would be independent runs writing one folder: refused.
    package static func isLaunchedAsRanks() throws -> Bool {
        let environment = ProcessInfo.processInfo.environment
        if let size = (environment["OMPI_COMM_WORLD_SIZE"] ?? environment["PMI_SIZE"]).flatMap(Int.init) { return size > 1 }
        let srunTasks = environment["SLURM_STEP_NUM_TASKS"].flatMap(Int.init) ?? 1
        if srunTasks > 1 && environment["PMIX_RANK"] == nil {
            throw TrainingError(.invalidInput, "srun started \(srunTasks) tasks, but not as MPI ranks (no PMI): use srun --mpi=pmi2 "
                                + "or --mpi=pmix for data-parallel fine-tuning, or run one task")
        }
        return srunTasks > 1
    }

    /// Initialises MPI and joins MPI_COMM_WORLD; call once, from the thread that will train.
    package init(collectiveTimeout: Duration) throws {
        let mpi = try OpenMPI()
        var provided: Int32 = 0
        try mpi.check(mpi.initThread(nil, nil, OpenMPI.threadFunneled, &provided), "MPI_Init_thread")
        var rank: Int32 = 0
        var size: Int32 = 0
        try mpi.check(mpi.commRank(mpi.world, &rank), "MPI_Comm_rank")
        try mpi.check(mpi.commSize(mpi.world, &size), "MPI_Comm_size")
        self.mpi = mpi
        self.rank = Int(rank)
        self.size = Int(size)
        self.collectiveTimeout = collectiveTimeout
    }

    /// values[i] = Σ over ranks of values[i], on every rank.
    package func sum(_ values: UnsafeMutableBufferPointer<Float>, _ what: @autoclosure () -> String) {
        sum(UnsafeMutableRawPointer(values.baseAddress), count: values.count, type: mpi.float, what)
    }

    package func sum(_ values: inout [Double], _ what: @autoclosure () -> String) {
        values.withUnsafeMutableBufferPointer { sum(UnsafeMutableRawPointer($0.baseAddress), count: $0.count, type: mpi.double, what) }
    }

    /// Ends the job on every rank with `code`: what a rank does when it cannot go on, so the others do not wait.
    package func abort(code: Int32) -> Never {
        _ = mpi.abort(mpi.world, code)
        exit(code)
    }

    /// Leaves MPI at the end of a run that finished on every rank.
    package func finish() {
        _ = mpi.finalize()
    }

    /// In place (MPI_IN_PLACE), in pieces MPI's Int32 count can hold.
    private func sum(_ base: UnsafeMutableRawPointer?, count: Int, type: UnsafeMutableRawPointer, _ what: () -> String) {
        guard let base, count > 0 else { return }
        let stride = type == mpi.float ? MemoryLayout<Float>.stride : MemoryLayout<Double>.stride
        var start = 0
        while start < count {
            let piece = min(count - start, Int(Int32.max))
            var request: OpaquePointer?
            let status = mpi.iallreduce(OpenMPI.inPlace, base + start * stride, Int32(piece), type, mpi.sum, mpi.world, &request)
            if status != 0 { fail("MPI_Iallreduce of \(what()) failed with error \(status)") }
            wait(&request, what)
            start += piece
        }
    }

    /// Polls until `request` completes; past the deadline, aborts the job. MPI_Test is also what makes OpenMPI
    /// progress the sum, so the first polls spin; then they yield the core to the ranks still computing.
    private func wait(_ request: inout OpaquePointer?, _ what: () -> String) {
        let deadline = ContinuousClock.now + collectiveTimeout
        var done: Int32 = 0
        var polls = 0
        while true {
            let status = mpi.test(&request, &done, nil)
            if status != 0 { fail("MPI_Test of \(what()) failed with error \(status)") }
            if done != 0 { return }
            if ContinuousClock.now > deadline {
                fail("rank \(rank) of \(size) waited \(collectiveTimeout) for the other ranks in \(what()): one died or hangs; "
                     + "aborting the job (once an epoch has finished, the same command with --resume continues from its checkpoint)")
            }
            polls += 1
            if polls > 1000 { usleep(100) }
        }
    }

    private func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        abort(code: 1)
    }
}

/// The few OpenMPI entry points and handles a data-parallel run uses, resolved from libmpi.so.40.
private struct OpenMPI {
    typealias InitThread = @convention(c) (UnsafeMutablePointer<Int32>?, UnsafeMutableRawPointer?, Int32,
                                           UnsafeMutablePointer<Int32>?) -> Int32
    typealias CommQuery = @convention(c) (UnsafeMutableRawPointer, UnsafeMutablePointer<Int32>) -> Int32
    typealias Iallreduce = @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32, UnsafeMutableRawPointer,
                                           UnsafeMutableRawPointer, UnsafeMutableRawPointer, UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias Test = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeMutablePointer<Int32>, UnsafeMutableRawPointer?) -> Int32
    typealias Abort = @convention(c) (UnsafeMutableRawPointer, Int32) -> Int32
    typealias Finalize = @convention(c) () -> Int32

    /// OpenMPI's MPI_THREAD_FUNNELED and MPI_IN_PLACE (mpi.h: `((void *) 1)`).
    static let threadFunneled: Int32 = 1
    static var inPlace: UnsafeRawPointer? { UnsafeRawPointer(bitPattern: 1) }
    static let libraryName = "libmpi.so.40"

    let initThread: InitThread
    let commRank: CommQuery
    let commSize: CommQuery
    let iallreduce: Iallreduce
    let test: Test
    let abort: Abort
    let finalize: Finalize
    let world: UnsafeMutableRawPointer
    let float: UnsafeMutableRawPointer
    let double: UnsafeMutableRawPointer
    let sum: UnsafeMutableRawPointer

    init() throws {
        // RTLD_GLOBAL: OpenMPI's own plugins (mca_*.so), which it dlopens in turn, resolve their symbols in libmpi.
        guard let library = dlopen(Self.libraryName, RTLD_NOW | RTLD_GLOBAL) else {
            throw TrainingError(.invalidInput, "launched as MPI ranks, but \(Self.libraryName) cannot be loaded "
                                + "(\(String(cString: dlerror()))); install OpenMPI (apt-get install openmpi-bin)")
        }
        func symbol(_ name: String) throws -> UnsafeMutableRawPointer {
            guard let address = dlsym(library, name) else {
                throw TrainingError(.invalidInput, "\(Self.libraryName) has no \(name): not OpenMPI's library")
            }
            return address
        }
        initThread = unsafeBitCast(try symbol("MPI_Init_thread"), to: InitThread.self)
        commRank = unsafeBitCast(try symbol("MPI_Comm_rank"), to: CommQuery.self)
        commSize = unsafeBitCast(try symbol("MPI_Comm_size"), to: CommQuery.self)
        iallreduce = unsafeBitCast(try symbol("MPI_Iallreduce"), to: Iallreduce.self)
        test = unsafeBitCast(try symbol("MPI_Test"), to: Test.self)
        abort = unsafeBitCast(try symbol("MPI_Abort"), to: Abort.self)
        finalize = unsafeBitCast(try symbol("MPI_Finalize"), to: Finalize.self)
        world = try symbol("ompi_mpi_comm_world")
        float = try symbol("ompi_mpi_float")
        double = try symbol("ompi_mpi_double")
        sum = try symbol("ompi_mpi_op_sum")
    }

    func check(_ status: Int32, _ call: String) throws {
        guard status == 0 else { throw TrainingError(.invalidInput, "\(call) failed with MPI error \(status)") }
    }
}
