import Foundation
import BottleneckKernels

/// `executor: slurm`: `bottleneck run FILE` submits the stages as Slurm jobs and waits for them. Every job runs this
/// same tool on the same file, one stage each (`run FILE --stage NAME`), so a job reuses, runs and records its stage
/// exactly as a local run would; the extract stage is a job array of `run FILE --stage extract --shard I/N` and then
/// the extract job itself, which merges the shards. Jobs wait for the jobs whose outputs they read
/// (`--dependency=afterok`), and a job whose dependency fails is cancelled (`--kill-on-invalid-dep=yes`, and by `run`
/// itself, should the cluster keep such jobs), never waited on.
///
/// A stage that is up to date now is not submitted, unless a stage it reads is: its job then judges again once
/// that input is made. The jobs' logs go to `slurm.logs`, made before submission (Slurm makes no folders).
package struct SlurmExecutor {
    let runner: PipelineRunner
    let settings: Pipeline.SlurmSettings
    /// The `bottleneck` every job runs: this one, by its absolute path.
    let tool: String

    /// How often `scontrol` is asked after waiting `waited` seconds: every second at first, so that short jobs are
    /// followed closely, then less often, up to every 10 s, so that hours of waiting are no load on the controller.
    static func pollInterval(after waited: TimeInterval) -> TimeInterval {
        min(10, max(1, waited / 60))
    }
    /// How often a line says that `run` is still waiting, when no job changed state.
    static let progressInterval: TimeInterval = 30

    package init(runner: PipelineRunner, tool: String) {
        guard case .slurm(let settings) = runner.pipeline.executor else {
            preconditionFailure("SlurmExecutor for a pipeline whose executor is local")
        }
        self.runner = runner
        self.settings = settings
        self.tool = tool
    }

    /// One submitted job: one stage, or the array of the extract stage's shards.
    struct Job {
        var id: String
        var stage: Pipeline.Stage
        /// The array's size; nil for a job of one task.
        var shards: Int?
        /// sbatch's --output: `%A_%a` (array and task) or `%j` (job) in it.
        var logPattern: String

        func logPath(ofTask task: String) -> String {
            logPattern.replacingOccurrences(of: "%A_%a", with: task).replacingOccurrences(of: "%j", with: task)
        }

        /// "extract shard 2/3 (job 12_2)", "extract shards [2-3] of 3 (job 12_[2-3])" (pending together), "head (job 14)".
        func describe(task: String) -> String {
            guard let shards, let index = task.split(separator: "_").last else { return "\(stage.name) (job \(task))" }
            return index.allSatisfy(\.isNumber) ? "\(stage.name) shard \(index)/\(shards) (job \(task))"
                                                 : "\(stage.name) shards \(index) of \(shards) (job \(task))"
        }
    }

    package func run(log: (String) -> Void) throws -> [PipelineRunner.StageOutcome] {
        let pipeline = runner.pipeline
        let upToDate = try runner.upToDateStages()
        var submittedStages: Set<String> = []
        for stage in pipeline.stages {
            if !upToDate.contains(stage.name) || runner.upstream(of: stage).contains(where: submittedStages.contains) {
                submittedStages.insert(stage.name)
            } else {
                log("\(stage.name): up to date (\(runner.outputPaths(of: stage).joined(separator: ", "))), reused")
            }
        }
        // In whole seconds, as the records say when they finished.
        let submission = Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down))
        var jobs: [Job] = []
        if !submittedStages.isEmpty {
            do {
                try FileManager.default.createDirectory(atPath: settings.logs, withIntermediateDirectories: true)
            } catch {
                throw PipelineError("\(pipeline.path): cannot create the Slurm log folder \(settings.logs): \(error.localizedDescription)")
            }
        }
        // The job that finishes each stage, for the stages after it to wait on.
        var stageJobs: [String: String] = [:]
        do {
            for stage in pipeline.stages where submittedStages.contains(stage.name) {
                var dependencies = runner.upstream(of: stage).compactMap { stageJobs[$0] }
                if stage.kind == .extract && pipeline.extractShardCount > 1 {
                    let array = try submit(stage, shards: pipeline.extractShardCount, after: dependencies, log: log)
                    jobs.append(array)
                    dependencies = [array.id]
                }
                let job = try submit(stage, shards: nil, after: dependencies, log: log)
                jobs.append(job)
                stageJobs[stage.name] = job.id
            }
        } catch {
            // Jobs that no run waits for, whose later stages were never submitted, must not run: cancel them.
            if !jobs.isEmpty { _ = try? Self.slurm("scancel", jobs.map(\.id)) }
            throw error
        }
        try wait(for: jobs, log: log)
        return try pipeline.stages.map { stage in
            let outputs = runner.outputPaths(of: stage)
            guard let record = runner.finishedRecord(of: stage) else {
                throw PipelineError("stage \(stage.name): its job completed but left no record under \(pipeline.outputRoot)/.stages")
            }
            // A submitted stage's job may have found it up to date after all: then its record is older than the submission.
            let reused = !submittedStages.contains(stage.name) || record.finished < submission
            return PipelineRunner.StageOutcome(name: stage.name, kind: stage.kind, reused: reused, outputs: outputs,
                                               seconds: reused ? 0 : record.seconds, result: record.result)
        }
    }

    /// Submits the stage's job (`shards`: the array of its shards) and returns it.
    private func submit(_ stage: Pipeline.Stage, shards: Int?, after dependencies: [String], log: (String) -> Void) throws -> Job {
        let pipeline = runner.pipeline
        let name = stage.name + (shards == nil ? "" : "-shards")
        var job = Job(id: "", stage: stage, shards: shards,
                      logPattern: settings.logs + "/" + name + (shards == nil ? "-%j.out" : "-%A_%a.out"))
        var command = [tool, "run", pipeline.path, "--stage", stage.name]
        if let shards { command += ["--shard", "$SLURM_ARRAY_TASK_ID/\(shards)"] }
        if let cpus = settings.cpusPerTask { command += ["--threads", "\(cpus)"] }
        if runner.isForced(stage) { command += ["--force", stage.name] }
        var arguments = ["--parsable", "--job-name=\(pipeline.name)-\(name)", "--output=\(job.logPattern)",
                         "--chdir=\(FileManager.default.currentDirectoryPath)", "--kill-on-invalid-dep=yes"]
        if let shards { arguments.append("--array=1-\(shards)") }
        if !dependencies.isEmpty { arguments.append("--dependency=afterok:" + dependencies.joined(separator: ":")) }
        if let partition = settings.partition { arguments.append("--partition=\(partition)") }
        if let account = settings.account { arguments.append("--account=\(account)") }
        if let time = settings.time { arguments.append("--time=\(time)") }
        if let cpus = settings.cpusPerTask { arguments.append("--cpus-per-task=\(cpus)") }
        if let memory = settings.memory { arguments.append("--mem=\(memory)") }
        // The shard's number is the shell's to fill in; every other word is quoted as it is.
        arguments.append("--wrap=exec " + command.map { $0.hasPrefix("$SLURM") ? "\"\($0)\"" : Self.shellQuoted($0) }.joined(separator: " "))
        let result = try Self.slurm("sbatch", arguments)
        // --parsable: "ID" or "ID;CLUSTER", after any warnings sbatch gives.
        guard result.status == 0,
              let id = result.output.split(separator: "\n").last?.split(separator: ";").first.map(String.init),
              id.allSatisfy(\.isNumber), !id.isEmpty else {
            throw PipelineError("stage \(stage.name): sbatch failed (exit \(result.status)): "
                                + result.output.split(separator: "\n").joined(separator: "; "))
        }
        job.id = id
        log("\(stage.name): submitted " + (shards.map { "\($0) shards as job array \(id)" } ?? "job \(id)")
            + (dependencies.isEmpty ? "" : " (after \(dependencies.joined(separator: ", ")))") + "; logs \(job.logPattern)")
        return job
    }

    /// Waits until every job has completed; a job that fails, or `max_wait` passing, cancels the jobs still queued or
    /// running and throws with the failed job's id, state and log.
    private func wait(for jobs: [Job], log: (String) -> Void) throws {
        let start = Date()
        var lastProgress = start
        var known: [String: String] = [:]
        while !jobs.isEmpty {
            var tasks: [(job: Job, task: TaskState)] = []
            for job in jobs {
                tasks += try taskStates(of: job.id).map { (job, $0) }
            }
            for (job, task) in tasks where known[task.id] != task.description {
                known[task.id] = task.description
                log("slurm: \(job.describe(task: task.id)): \(task.description)")
                lastProgress = Date()
            }
            let failed = tasks.filter { $0.task.hasEnded && $0.task.state != "COMPLETED" }
            if !failed.isEmpty {
                // A dependent cancelled for its failed dependency is not the cause: name the failures that are.
                let causes = failed.filter { $0.task.reason != "DependencyNeverSatisfied" }
                let cancelled = try cancel(tasks.filter { !$0.task.hasEnded })
                let shown = (causes.isEmpty ? failed : causes).map { job, task in
                    let log = job.logPath(ofTask: task.id)
                    return "stage \(job.describe(task: task.id)) \(task.description), log \(log)" + (Self.lastLine(of: log).map { " ('\($0)')" } ?? "")
                }
                throw PipelineError(shown.joined(separator: "; ")
                                    + (cancelled.isEmpty ? "" : "; cancelled the jobs left: " + cancelled.joined(separator: ", ")))
            }
            if tasks.allSatisfy(\.task.hasEnded) { return }
            let waited = Date().timeIntervalSince(start)
            if waited >= Double(settings.maxWaitSeconds) {
                let cancelled = try cancel(tasks.filter { !$0.task.hasEnded })
                throw PipelineError("\(runner.pipeline.path): the Slurm jobs did not finish within max_wait "
                                    + "(\(SlurmTime.text(settings.maxWaitSeconds))); cancelled " + cancelled.joined(separator: ", "))
            }
            if Date().timeIntervalSince(lastProgress) >= Self.progressInterval {
                let waiting = tasks.filter { !$0.task.hasEnded }
                let counts = Dictionary(grouping: waiting, by: \.task.state).map { "\($1.count) \($0.lowercased())" }.sorted()
                log("slurm: waiting for \(waiting.count) job\(waiting.count == 1 ? "" : "s") (\(counts.joined(separator: ", "))), "
                    + "\(SlurmTime.text(Int(waited))) of at most \(SlurmTime.text(settings.maxWaitSeconds))")
                lastProgress = Date()
            }
            Thread.sleep(forTimeInterval: Self.pollInterval(after: waited))
        }
    }

    /// The last line a failed job wrote, usually its error: what the user would look for first in the log.
    static func lastLine(of log: String) -> String? {
        guard let text = try? DurableFiles.readText(log, atMost: 1 << 20) else { return nil }
        // Progress lines redraw themselves with carriage returns: the last drawing is the line.
        return text.split(separator: "\n").last { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
            .flatMap { $0.split(separator: "\r").last }.map(String.init)
    }

    /// Cancels the jobs of these tasks and returns how they were named.
    private func cancel(_ tasks: [(job: Job, task: TaskState)]) throws -> [String] {
        guard !tasks.isEmpty else { return [] }
        let ids = Array(Set(tasks.map(\.job.id))).sorted()
        let result = try Self.slurm("scancel", ids)
        guard result.status == 0 else {
            throw PipelineError("scancel \(ids.joined(separator: " ")) failed (exit \(result.status)): \(result.output)")
        }
        return tasks.map { $0.job.describe(task: $0.task.id) }
    }

    /// One task's line of `scontrol show job`: a job, an array task, or an array's tasks still pending together
    /// ("12_[2-3]").
    struct TaskState {
        var id: String
        var state: String
        var reason: String?
        var exitCode: String?

        /// The states after which Slurm does no more with the job (Slurm's "completed" states).
        static let endStates: Set<String> = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                                             "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"]

        var hasEnded: Bool { Self.endStates.contains(state) }

        /// "FAILED (exit code 1:0)", "PENDING (Dependency)".
        var description: String {
            let details = [reason, hasEnded && state != "COMPLETED" ? exitCode.map { "exit code \($0)" } : nil].compactMap { $0 }
            return state + (details.isEmpty ? "" : " (\(details.joined(separator: ", ")))")
        }
    }

    /// The state of each task of the job, from `scontrol` (which knows a job until a few minutes after it ends),
    /// else from `sacct` (which needs the accounting daemon, that small clusters often lack).
    func taskStates(of id: String) throws -> [TaskState] {
        let shown = try Self.slurm("scontrol", ["--oneliner", "show", "job", id])
        if shown.status == 0 {
            return shown.output.split(separator: "\n").compactMap { line in
                var fields: [String: String] = [:]
                for field in line.split(separator: " ") {
                    let parts = field.split(separator: "=", maxSplits: 1).map(String.init)
                    if parts.count == 2 { fields[parts[0]] = parts[1] }
                }
                guard let state = fields["JobState"] else { return nil }
                let task = fields["ArrayTaskId"].map { task in
                    "\(fields["ArrayJobId"] ?? id)_" + (task.allSatisfy(\.isNumber) ? task : "[\(task)]")
                } ?? fields["JobId"] ?? id
                return TaskState(id: task, state: state, reason: fields["Reason"].flatMap { $0 == "None" ? nil : $0 },
                                 exitCode: fields["ExitCode"])
            }
        }
        let accounted = try Self.slurm("sacct", ["--noheader", "--parsable2", "--allocations", "--jobs", id,
                                                 "--format=JobID,State,ExitCode"])
        let rows = accounted.status == 0 ? accounted.output.split(separator: "\n").map { $0.split(separator: "|").map(String.init) } : []
        guard !rows.isEmpty, rows.allSatisfy({ $0.count == 3 }) else {
            throw PipelineError("job \(id): neither scontrol nor sacct knows it any more: "
                                + shown.output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        // sacct says "CANCELLED by 0": the state is the first word.
        return rows.map { TaskState(id: $0[0], state: String($0[1].prefix { $0 != " " }), reason: nil, exitCode: $0[2]) }
    }

    /// Runs a Slurm command (found on PATH), its stdout and stderr together.
    static func slurm(_ command: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [command] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
        } catch {
            throw PipelineError("cannot run \(command) (is Slurm installed, its commands on PATH?): \(error.localizedDescription)")
        }
        // One pipe read to its end before waiting: the command can never block on a full pipe.
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationStatus == 127 {
            throw PipelineError("cannot run \(command): not found on PATH (is Slurm installed?)")
        }
        return (process.terminationStatus, output)
    }

    /// The word as one shell word: in single quotes, its own single quotes closed, escaped and reopened.
    static func shellQuoted(_ word: String) -> String {
        "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

/// Slurm's time format (sbatch --time): MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS,
/// DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS.
enum SlurmTime {
    static func seconds(_ text: String) -> Int? {
        let dayParts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard dayParts.count <= 2 else { return nil }
        let days = dayParts.count == 2 ? Int(dayParts[0]) : 0
        let clock = dayParts.last!.split(separator: ":", omittingEmptySubsequences: false).map { Int($0) }
        guard let days, days >= 0, (1...3).contains(clock.count), clock.allSatisfy({ ($0 ?? -1) >= 0 }) else { return nil }
        let numbers = clock.map { $0! }
        // With days, the first number is hours; without, MINUTES[:SECONDS] or HOURS:MINUTES:SECONDS.
        let units = dayParts.count == 2 ? [3600, 60, 1] : numbers.count == 3 ? [3600, 60, 1] : [60, 1]
        return days * 86400 + zip(numbers, units).map(*).reduce(0, +)
    }

    /// "02:30:00", "1-00:00:00": as the file would give it.
    static func text(_ seconds: Int) -> String {
        let clock = String(format: "%02d:%02d:%02d", seconds % 86400 / 3600, seconds % 3600 / 60, seconds % 60)
        return seconds >= 86400 ? "\(seconds / 86400)-" + clock : clock
    }
}
