import Foundation
import BottleneckKernels

/// Runs a pipeline's stages in order, as make does: a stage whose settings and inputs are those of its last
/// finished run, and whose output is still there, is reused, not rerun. Each finished stage leaves a record
/// (`OUT/.stages/NAME.json`) holding the key of what it was made from: a SHA-256 of its settings, the
/// backbone, and the identity of its inputs (the image files' names, sizes and times; the weights file's; the
/// keys and files of the stages it reads). A stage that reruns changes its output files, so every stage
/// that reads them reruns too.
///
/// A stage that reruns keeps the guarantees its command has alone: extract continues its journal and reuses
/// the rows of the existing cache, full-finetune continues from its checkpoint when the interrupted run had
/// the same key, and a stage that fails leaves the older record in place (and the older cache: it is only ever
/// replaced whole). Only `--force` (and a cache made with other weights or preprocessing) starts a stage from
/// scratch.
package struct PipelineRunner {
    package let pipeline: Pipeline
    /// Names (or kinds) of stages to rerun whether or not they are up to date.
    let forced: Set<String>

    package init(pipeline: Pipeline, force: [String] = []) throws {
        let known = pipeline.stages.flatMap { [$0.name, $0.kind.rawValue] }
        for name in force where !known.contains(name) {
            throw PipelineError("--force \(name): \(pipeline.path) has no such stage (its stages: "
                                + pipeline.stages.map(\.name).joined(separator: ", ") + ")"
                                + Suggestion.didYouMean(name, among: known))
        }
        self.pipeline = pipeline
        forced = Set(force)
    }

    package struct StageOutcome: Sendable {
        package var name: String
        package var kind: Pipeline.StageKind
        package var reused: Bool
        /// The cache, run folder or report file(s) the stage made.
        package var outputs: [String]
        package var seconds: Double
        /// One line for people: what the stage produced.
        package var result: String
    }

    /// What `.stages/NAME.json` holds.
    struct StageRecord: Codable {
        var stage: String
        var kind: String
        var key: String
        var finished: String
        var seconds: Double
        var result: String
    }

    /// What `.stages/NAME.started.json` holds while a full-finetune run has not finished: its checkpoint is only
    /// continued by a run with the same key (the job itself compares settings, not the weights or the images).
    struct StartedRecord: Codable {
        var stage: String
        var key: String
        var started: String
    }

    package func run(log: (String) -> Void) throws -> [StageOutcome] {
        let (weights, fellBack) = WeightsChoice.resolve(pipeline.weights)
        // Said once, by the first stage that runs the network on stand-in weights; reused stages say nothing.
        var warnOfRandomWeights = fellBack
        try createOutputRoot()
        var keys: [String: String] = [:]
        var outcomes: [StageOutcome] = []
        for stage in pipeline.stages {
            let key = try stageKey(stage, weights: weights, upstreamKeys: keys)
            keys[stage.name] = key
            outcomes.append(try runUnlessUpToDate(stage, key: key, weights: weights, warnOfRandomWeights: &warnOfRandomWeights,
                                                  log: log))
        }
        return outcomes
    }

    /// `run FILE --stage NAME`: that stage alone, as `run` would run it in its turn (reused when up to date), taking
    /// the outputs of the stages before it as they are. Each Slurm job runs one stage this way.
    package func run(stage name: String, log: (String) -> Void) throws -> StageOutcome {
        let stage = try self.stage(named: name)
        let (weights, fellBack) = WeightsChoice.resolve(pipeline.weights)
        var warnOfRandomWeights = fellBack
        try createOutputRoot()
        let key = try currentKeys(through: stage.name, weights: weights)[stage.name]!
        return try runUnlessUpToDate(stage, key: key, weights: weights, warnOfRandomWeights: &warnOfRandomWeights, log: log)
    }

    /// `run FILE --stage extract --shard I/N`: one shard's cache (`Pipeline.shardCachePath`), which the extract stage
    /// merges once every shard is there. No stage record: the stage is finished only when merged.
    package func extractShard(_ shard: Shard, stage name: String, log: (String) -> Void) throws -> String {
        let stage = try self.stage(named: name)
        guard case .extract(let batchSize, _, let views) = stage.settings else {
            throw PipelineError("--shard \(shard): stage \(name) of \(pipeline.path) is \(stage.kind.rawValue); only the extract stage is sharded")
        }
        guard shard.count == pipeline.extractShardCount else {
            throw PipelineError("--shard \(shard): \(pipeline.path) extracts in \(pipeline.extractShardCount) shards, not \(shard.count)")
        }
        let (weights, fellBack) = WeightsChoice.resolve(pipeline.weights)
        if fellBack { log(WeightsChoice.randomFallbackWarning()) }
        try createOutputRoot()
        var job = extractionJob(batchSize: batchSize, compress: false, views: views, output: pipeline.shardCachePath(shard),
                                weights: weights, fromScratch: isForced(stage))
        job.shard = shard
        let summary = try runExtraction(&job, stage: stage, log: log)
        return "shard \(shard): \(summary.counts); \(summary.path)"
    }

    /// The names of the stages that `run` would reuse now, each judged as if the stages before it were reused too.
    /// The Slurm executor submits the others and those that read them (whose jobs then judge again, once their
    /// inputs are made).
    package func upToDateStages() throws -> Set<String> {
        let weights = WeightsChoice.resolve(pipeline.weights).choice
        let keys = try currentKeys(through: pipeline.stages.last!.name, weights: weights)
        return Set(pipeline.stages.filter { upToDateRecord(of: $0, key: keys[$0.name]!) != nil }.map(\.name))
    }

    /// The stages whose outputs this stage reads: when one of them reruns, so may this one.
    package func upstream(of stage: Pipeline.Stage) -> [String] {
        switch stage.settings {
        case .extract: []
        case .trainHead: pipeline.stages.filter { $0.kind == .extract }.map(\.name)
        case .fullFinetune(_, let initialHead): initialHead.map { [$0] } ?? []
        case .report: trainingStages.map(\.name)
        }
    }

    /// The record a stage's last finished run left, read by the Slurm executor once its job has ended.
    package func finishedRecord(of stage: Pipeline.Stage) -> (finished: Date, seconds: Double, result: String)? {
        guard let record = Self.read(StageRecord.self, from: recordPath(of: stage)),
              let finished = ISO8601DateFormatter().date(from: record.finished) else { return nil }
        return (finished, record.seconds, record.result)
    }

    private func stage(named name: String) throws -> Pipeline.Stage {
        guard let stage = pipeline.stages.first(where: { $0.name == name || $0.kind.rawValue == name }) else {
            let known = pipeline.stages.map(\.name)
            throw PipelineError("--stage \(name): \(pipeline.path) has no such stage (its stages: \(known.joined(separator: ", ")))"
                                + Suggestion.didYouMean(name, among: known))
        }
        return stage
    }

    /// The keys of the stages up to `last`, from the files as they are now.
    private func currentKeys(through last: String, weights: WeightsChoice) throws -> [String: String] {
        var keys: [String: String] = [:]
        for stage in pipeline.stages {
            keys[stage.name] = try stageKey(stage, weights: weights, upstreamKeys: keys)
            if stage.name == last { break }
        }
        return keys
    }

    private func createOutputRoot() throws {
        do {
            try FileManager.default.createDirectory(atPath: pipeline.outputRoot, withIntermediateDirectories: true)
        } catch {
            throw PipelineError("cannot create \(pipeline.outputRoot): \(error.localizedDescription)")
        }
    }

    func isForced(_ stage: Pipeline.Stage) -> Bool {
        forced.contains(stage.name) || forced.contains(stage.kind.rawValue)
    }

    /// The stage's record when its settings and inputs are those of its last finished run and its output is there.
    private func upToDateRecord(of stage: Pipeline.Stage, key: String) -> StageRecord? {
        guard !isForced(stage), let record = Self.read(StageRecord.self, from: recordPath(of: stage)), record.key == key,
              outputPaths(of: stage).allSatisfy(FileManager.default.fileExists) else { return nil }
        return record
    }

    private func runUnlessUpToDate(_ stage: Pipeline.Stage, key: String, weights: WeightsChoice, warnOfRandomWeights: inout Bool,
                                   log: (String) -> Void) throws -> StageOutcome {
        let outputs = outputPaths(of: stage)
        let recordPath = self.recordPath(of: stage)
        if let record = upToDateRecord(of: stage, key: key) {
            log("\(stage.name): up to date (\(outputs.joined(separator: ", "))), reused")
            return StageOutcome(name: stage.name, kind: stage.kind, reused: true, outputs: outputs, seconds: 0, result: record.result)
        }
        let isForced = isForced(stage)
        let hadRecord = Self.read(StageRecord.self, from: recordPath) != nil
        // The record stays until the stage succeeds: a run that fails leaves the last good one in place.
        log("\(stage.name): \(isForced ? "forced" : !hadRecord ? "running" : "inputs or settings changed, running") "
            + "\(stage.kind.rawValue)")
        if warnOfRandomWeights && [.extract, .fullFinetune].contains(stage.kind) {
            log(WeightsChoice.randomFallbackWarning())
            warnOfRandomWeights = false
        }
        let start = ContinuousClock.now
        let result: String
        do {
            result = try run(stage, key: key, fromScratch: isForced, weights: weights, log: log)
        } catch let error as SettingError {
            // Found only once the stage runs (train_from below the cut): said in the file's spelling.
            throw PipelineError("\(pipeline.path): stage \(stage.name): \(error.key.pipelineKey) \(error.problem)")
        }
        let seconds = start.secondsElapsed
        log("\(stage.name): \(result)")
        try write(StageRecord(stage: stage.name, kind: stage.kind.rawValue, key: key,
                              finished: ISO8601DateFormatter().string(from: Date()), seconds: seconds, result: result),
                  to: recordPath)
        try? FileManager.default.removeItem(atPath: startedRecordPath(of: stage))
        return StageOutcome(name: stage.name, kind: stage.kind, reused: false, outputs: outputs, seconds: seconds, result: result)
    }

    /// The file whose presence shows the stage finished (a run's summary.json is written last).
    func outputPaths(of stage: Pipeline.Stage) -> [String] {
        switch stage.settings {
        case .extract: [pipeline.cachePath]
        case .trainHead, .fullFinetune: [pipeline.runDirectory(of: stage) + "/" + RunDirectory.summaryFile]
        case .report(let formats): formats.map(pipeline.reportPath)
        }
    }

    private var trainingStages: [Pipeline.Stage] {
        pipeline.stages.filter { [.trainHead, .fullFinetune].contains($0.kind) }
    }

    private func recordPath(of stage: Pipeline.Stage) -> String { pipeline.outputRoot + "/.stages/\(stage.name).json" }

    private func startedRecordPath(of stage: Pipeline.Stage) -> String { pipeline.outputRoot + "/.stages/\(stage.name).started.json" }

    /// `fromScratch` (`--force`): the cache or checkpoint of earlier runs is not reused.
    private func run(_ stage: Pipeline.Stage, key: String, fromScratch: Bool, weights: WeightsChoice,
                     log: (String) -> Void) throws -> String {
        switch stage.settings {
        case .extract(let batchSize, let compress, let views):
            let shardCount = pipeline.extractShardCount
            guard shardCount > 1 else {
                var job = extractionJob(batchSize: batchSize, compress: compress, views: views, output: pipeline.cachePath,
                                        weights: weights, fromScratch: fromScratch)
                let summary = try runExtraction(&job, stage: stage, log: log)
                return "\(summary.counts), "
                    + String(format: "%.2f img/s; ", summary.imagesPerSecond) + "\(summary.path) (\(summary.fileBytes.formattedBytes))"
            }
            // The shards' processes (`--shard I/N`, a Slurm array) have run: the stage is their merge.
            let shards = (1...shardCount).map { pipeline.shardCachePath(Shard(index: $0, count: shardCount)) }
            let missing = (1...shardCount).filter { !FileManager.default.fileExists(atPath: shards[$0 - 1]) }
            guard missing.isEmpty else {
                throw PipelineError("\(stage.name): the shard caches of " + missing.map { "\($0)/\(shardCount)" }.joined(separator: ", ")
                                    + " are missing (\(shards[missing[0] - 1])): run 'run \(pipeline.path) --stage \(stage.name) "
                                    + "--shard I/\(shardCount)' for each first, as the Slurm array does")
            }
            func merge(overwrite: Bool) throws -> CacheSummary {
                try CacheMerge.merge(shards: shards, into: pipeline.cachePath, compress: compress, overwrite: overwrite, log: log)
            }
            let summary: CacheSummary
            do {
                summary = try merge(overwrite: fromScratch)
            } catch let error as FeatureCacheError where error.kind == .mismatch {
                // As for one process's cache below: a cache of other weights or preprocessing is started afresh.
                log("\(stage.name): \(error.finding); starting the cache afresh")
                summary = try merge(overwrite: true)
            }
            guard summary.rows > 0 else {
                throw PipelineError("\(stage.name): no image of \(pipeline.images) could be read (\(summary.failed) failed)")
            }
            return "merged \(shardCount) shards: \(summary.rows) rows, \(summary.failed) failed; "
                + "\(summary.path) (\(summary.fileBytes.formattedBytes))"
        case .trainHead(let settings):
            var job = HeadTrainingJob(cachePath: pipeline.cachePath, runDirectory: pipeline.runDirectory(of: stage))
            job.settings = settings
            job.config = pipeline.backbone
            job.overwrite = true
            let summary = try job.run(log: log)
            return String(format: "val accuracy %.4f at epoch %d of %d, %@, %.0f samples/s; %@", summary.bestValAccuracy,
                          summary.bestEpoch, summary.epochsRun, Report.duration(summary.wallSeconds), summary.throughput,
                          pipeline.runDirectory(of: stage))
        case .fullFinetune(let settings, let initialHead):
            let directory = pipeline.runDirectory(of: stage)
            var job = FineTuneJob(imagesRoot: pipeline.images, runDirectory: directory, weights: weights)
            job.settings = settings
            job.config = pipeline.backbone
            job.initialHead = initialHead.map { headModelPath(ofStage: $0) }
            let checkpoint = directory + "/" + FineTuneCheckpoint.fileName
            let startedPath = startedRecordPath(of: stage)
            let interrupted = FileManager.default.fileExists(atPath: checkpoint)
                && !FileManager.default.fileExists(atPath: directory + "/" + RunDirectory.summaryFile)
            if interrupted && !fromScratch {
                if Self.read(StartedRecord.self, from: startedPath)?.key == key {
                    job.resume = true
                    log("\(stage.name): continuing the interrupted run from \(checkpoint)")
                } else {
                    log("\(stage.name): \(checkpoint) was left by a run with other settings or inputs; starting over")
                }
            }
            if !job.resume {
                job.overwrite = true
                try write(StartedRecord(stage: stage.name, key: key, started: ISO8601DateFormatter().string(from: Date())),
                          to: startedPath)
            }
            let summary = try job.run(log: log)
            return String(format: "val accuracy %.4f at epoch %d of %d, %@, %.2f img/s; %@", summary.bestValAccuracy,
                          summary.bestEpoch, summary.epochsRun, Report.duration(summary.wallSeconds), summary.throughput,
                          pipeline.runDirectory(of: stage))
        case .report(let formats):
            let runs = try trainingStages.map { try RunRecord(directory: pipeline.runDirectory(of: $0)) }
            let report = try Report(title: "bottleneck — \(pipeline.name)", runs: runs)
            for format in formats {
                try report.write(format: format, to: pipeline.reportPath(format))
            }
            return "report of \(runs.count) runs: " + formats.map(pipeline.reportPath).joined(separator: ", ")
        }
    }

    private func extractionJob(batchSize: Int, compress: Bool, views: Int, output: String, weights: WeightsChoice,
                               fromScratch: Bool) -> ExtractionJob {
        var job = ExtractionJob(imagesRoot: pipeline.images, outputPath: output, weights: weights)
        job.layer = pipeline.layer
        job.batchSize = batchSize
        job.compress = compress
        job.views = views
        job.overwrite = fromScratch
        job.config = pipeline.backbone
        job.preprocessing = pipeline.preprocessing
        return job
    }

    private func runExtraction(_ job: inout ExtractionJob, stage: Pipeline.Stage, log: (String) -> Void) throws -> ExtractionJob.Summary {
        let summary: ExtractionJob.Summary
        do {
            summary = try job.run(log: log)
        } catch let error as FeatureCacheError where error.kind == .mismatch {
            // Weights, preprocessing or the image folder changed in the file: that cache (or journal) can never
            // serve this pipeline again, while a journal of this fingerprint never gets here (a mere resume).
            log("\(stage.name): \(error.finding); starting the cache afresh")
            job.overwrite = true
            summary = try job.run(log: log)
        }
        guard summary.rows > 0 else {
            throw PipelineError("\(stage.name): no image of \(pipeline.images) could be read (\(summary.failed.count) failed)")
        }
        return summary
    }

    private func headModelPath(ofStage name: String) -> String {
        pipeline.runDirectory(of: pipeline.stages.first { $0.name == name }!) + "/" + RunDirectory.modelFile
    }

    /// SHA-256 of everything the stage's output depends on.
    func stageKey(_ stage: Pipeline.Stage, weights: WeightsChoice, upstreamKeys: [String: String]) throws -> String {
        var ingredients = ["kind": stage.kind.rawValue, "backbone": Self.json(pipeline.backbone)]
        let upstream = { (stageName: String, file: String) in
            "\(upstreamKeys[stageName] ?? "none") \(Self.fileIdentity(file))"
        }
        switch stage.settings {
        case .extract(let batchSize, let compress, let views):
            ingredients["images"] = try Self.folderIdentity(pipeline.images)
            ingredients["weights"] = Self.identity(of: weights)
            ingredients["layer"] = pipeline.layer
            ingredients["preprocessing"] = pipeline.preprocessing.jsonDescription
            // Said only when there are views, so the stages of files written before views keep their keys.
            ingredients["settings"] = "batch \(batchSize) compress \(compress)" + (views > 0 ? " views \(views)" : "")
        case .trainHead(var settings):
            // Cores and the memory budget change the speed, not the model.
            settings.threads = 0
            settings.memoryBudgetBytes = 0
            ingredients["settings"] = Self.json(settings.resolved)
            // The cache file alone, not the extract stage's key: an extract rerun that found the same bytes
            // (images touched, not changed) leaves the file as it was, and the head as it was.
            ingredients["cache"] = Self.fileIdentity(pipeline.cachePath)
        case .fullFinetune(let settings, let initialHead):
            ingredients["images"] = try Self.folderIdentity(pipeline.images)
            ingredients["weights"] = Self.identity(of: weights)
            ingredients["settings"] = Self.json(settings.resolved)
            if let initialHead { ingredients["init_head"] = upstream(initialHead, headModelPath(ofStage: initialHead)) }
        case .report(let formats):
            ingredients["formats"] = formats.map(\.rawValue).joined(separator: ",")
            for run in trainingStages {
                ingredients["run " + run.name] = upstream(run.name, pipeline.runDirectory(of: run) + "/" + RunDirectory.summaryFile)
            }
        }
        return SHA256.hex(SHA256.digest(Array(Self.json(ingredients).utf8)))
    }

    private static func identity(of weights: WeightsChoice) -> String {
        switch weights {
        case .random(let seed): "random:\(seed)"
        case .file(let path): "\(URL(fileURLWithPath: path).standardizedFileURL.path) \(fileIdentity(path))"
        }
    }

    /// Size, modification time and inode, as make would judge a file (the inode tells a file renamed into place).
    private static func fileIdentity(_ path: String) -> String {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else { return "missing" }
        let size = (attributes[.size] as? Int) ?? -1
        let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let inode = (attributes[.systemFileNumber] as? Int) ?? -1
        return "\(size)@\(modified)#\(inode)"
    }

    /// Every file under the folder with its size and time: adding, removing or replacing an image changes it.
    private static func folderIdentity(_ root: String) throws -> String {
        let url = URL(fileURLWithPath: root).standardizedFileURL
        guard let walker = FileManager.default.enumerator(atPath: url.path) else {
            throw PipelineError("\(root): the image folder does not exist")
        }
        var lines = [url.path]
        while let relative = walker.nextObject() as? String {
            lines.append(relative + " " + fileIdentity(url.path + "/" + relative))
        }
        lines[1...].sort()
        return SHA256.hex(SHA256.digest(Array(lines.joined(separator: "\n").utf8)))
    }

    private static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Settings, configs and string maps are plain numbers and strings: encoding cannot fail.
        return String(decoding: try! encoder.encode(value), as: UTF8.self)
    }

    private static func read<Record: Decodable>(_ type: Record.Type, from path: String) -> Record? {
        try? JSONDecoder().decode(type, from: Data(DurableFiles.readRegularFile(path).bytes))
    }

    private func write<Record: Encodable>(_ record: Record, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try DurableFiles.writeAtomically(encoder.encode(record), to: path)
        } catch let error as FileAccessError {
            throw PipelineError("cannot write \(path): \(error.reason)")
        } catch {
            throw PipelineError("cannot write \(path): \(error)")
        }
    }
}
