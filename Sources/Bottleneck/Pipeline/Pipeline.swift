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
    /// The line of each input path the file gives (`images`, `weights`), for `checkInputsExist`.
    var inputLines: [String: Int]

    package var preprocessing: Preprocessing {
        .evaluation(imageSize: imageSize)
    }

    package var cachePath: String { outputRoot + "/features-\(layer).h5" }

    package func runDirectory(of stage: Stage) -> String { outputRoot + "/" + stage.name }

    func reportPath(_ format: ReportFormat) -> String { outputRoot + "/report." + format.rawValue }
}

struct PipelineError: Error, CustomStringConvertible, Sendable {
    package let description: String
    package init(_ description: String) { self.description = description }
}
