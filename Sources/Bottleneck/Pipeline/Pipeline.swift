import Foundation
import BottleneckKernels

/// A pipeline file (`bottleneck run pipelines/NAME.yaml`): one dataset, one backbone and cut layer, and the
/// stages that run on them in order. Paths are relative to the directory the command runs from.
package struct Pipeline: Sendable {
    package enum StageKind: String, CaseIterable, Sendable {
        case extract
        case trainHead = "train-head"
        case fullFinetune = "full-finetune"
        case report

        /// The stage name when the file gives none: also the run folder's name.
        var defaultName: String {
            switch self {
            case .extract: "extract"
            case .trainHead: "head"
            case .fullFinetune: "finetune"
            case .report: "report"
            }
        }
    }

    package struct Stage: Sendable {
        package enum Settings: Sendable {
            case extract(batchSize: Int, compress: Bool, views: Int)
            case trainHead(HeadTrainingSettings)
            /// `initialHead`: the name of an earlier train-head stage whose model starts the head.
            case fullFinetune(FineTuneSettings, initialHead: String?)
            case report(formats: [ReportFormat])
        }

        package var name: String
        package var settings: Settings

        package var kind: StageKind {
            switch settings {
            case .extract: .extract
            case .trainHead: .trainHead
            case .fullFinetune: .fullFinetune
            case .report: .report
            }
        }
    }

    package var path: String
    package var name: String
    package var images: String
    /// As `--weights`: a file, `random`, `random:SEED`; nil: torchvision's download when found, else random.
    package var weights: String?
    package var backbone: VGGConfig
    package var layer: String
    /// Side of the square images the extraction sees (torchvision's 224); resize is 256/224 of it.
    package var imageSize: Int
    /// Where every stage writes: the cache, one folder per training stage, the report.
    package var outputRoot: String
    package var stages: [Stage]
    /// Where the stages run: here, one after another, or as jobs of a Slurm cluster (`executor: slurm`).
    package var executor: Executor = .local
    /// The line of each input path the file gives (`images`, `weights`), for `checkInputsExist`.
    var inputLines: [String: Int]

    package var preprocessing: Preprocessing {
        .evaluation(imageSize: imageSize)
    }

    package var cachePath: String { outputRoot + "/features-\(layer).h5" }

    /// How many `extract --shard I/N` processes make the cache: the Slurm array's size, one locally.
    package var extractShardCount: Int {
        if case .slurm(let settings) = executor { settings.shards } else { 1 }
    }

    /// The cache one shard's process writes; the extract stage merges them into `cachePath`.
    package func shardCachePath(_ shard: Shard) -> String {
        outputRoot + "/shards/features-\(layer).shard-\(shard.index)-of-\(shard.count).h5"
    }

    package func runDirectory(of stage: Stage) -> String { outputRoot + "/" + stage.name }

    func reportPath(_ format: ReportFormat) -> String { outputRoot + "/report." + format.rawValue }
}

extension Pipeline {
    package enum Executor: Sendable {
        case local
        case slurm(SlurmSettings)
    }

    /// The file's `slurm:` keys: what every job asks of the cluster, and how long `run` waits for them.
    package struct SlurmSettings: Sendable {
        /// Array tasks of the extract stage, each `run FILE --stage extract --shard I/N`.
        package var shards = 1
        package var partition: String?
        package var account: String?
        /// Each job's time limit, as sbatch's --time takes it ("30", "02:00:00", "1-12:00:00").
        package var time: String?
        package var cpusPerTask: Int?
        /// Each job's memory, as sbatch's --mem takes it ("4G", "500M").
        package var memory: String?
        /// The most seconds `run` waits for the jobs before it cancels them and fails.
        package var maxWaitSeconds = 24 * 3600
        /// The jobs' logs; made before submission, since Slurm makes no folders and a job whose log cannot be
        /// opened dies unseen.
        package var logs: String
    }
}

struct PipelineError: Error, CustomStringConvertible, Sendable {
    package let description: String
    package init(_ description: String) { self.description = description }
}
