import Foundation
import BottleneckKernels

/// `checkpoint.h5` in a full-finetune run directory, rewritten (atomically) after every epoch: the whole
/// state dict, the optimizer's state, and what the epochs so far gave. Every random draw of a run is a
/// function of (seed, epoch, image), so this is all `--resume` needs to end where an uninterrupted run ends.
/// Plain HDF5 like model.h5: parameters under torchvision names, optimizer state under `optimizer.<slot>.<name>`.
struct FineTuneCheckpoint {
    static let fileName = "checkpoint.h5"
    static let formatName = "bottleneck-finetune-checkpoint/1"
    private static let optimizerPrefix = "optimizer."

    /// Finished epochs; the next one to run is `epochsDone` (counted from 0).
    var epochsDone: Int
    /// `FineTuneSettings.resolved` as JSON with sorted keys; a resume must match it.
    var settingsJSON: String
    var history: [EpochRecord]
    /// From 1; 0 before any epoch finished.
    var bestEpoch: Int
    var stateDict: [(key: String, tensor: Tensor)]
    var optimizerState: [String: Tensor]

    func save(to path: String) throws {
        let tensors = stateDict.map { ($0.key, $0.tensor) }
            + optimizerState.sorted { $0.key < $1.key }.map { (Self.optimizerPrefix + $0.key, $0.value) }
        try inRole("checkpoint file") {
            try writeStateDictHDF5(path: path, tensors: tensors, attributes: [
                "format": Self.formatName,
                "epochs_done": String(epochsDone),
                "settings": settingsJSON,
                "history": String(decoding: try JSONEncoder().encode(history), as: UTF8.self),
                "best_epoch": String(bestEpoch),
            ])
        }
    }

    /// What `settingsJSON` holds for `settings`.
    static func settingsJSON(_ settings: FineTuneSettings) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Settings are plain numbers and strings: encoding cannot fail.
        return String(decoding: try! encoder.encode(settings.resolved), as: UTF8.self)
    }

    init(epochsDone: Int, settingsJSON: String, history: [EpochRecord], bestEpoch: Int,
         stateDict: [(key: String, tensor: Tensor)], optimizerState: [String: Tensor]) {
        self.epochsDone = epochsDone
        self.settingsJSON = settingsJSON
        self.history = history
        self.bestEpoch = bestEpoch
        self.stateDict = stateDict
        self.optimizerState = optimizerState
    }

    init(contentsOf path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            // metrics.csv, not the missing checkpoint, says whether epochs finished: a checkpoint deleted by
            // hand or lost with its folder's other files is not a run that never got through one.
            let metrics = (path as NSString).deletingLastPathComponent + "/" + RunDirectory.metricsFile
            let finished = max(0, ((try? DurableFiles.readText(metrics)) ?? "").split(whereSeparator: \.isNewline).count - 1)
            throw TrainingError(.runDirectory, finished == 0
                ? "no checkpoint at \(path): the run did not finish an epoch; start it again without --resume"
                : "no checkpoint at \(path), though \(metrics) records \(counted(finished, "finished epoch")): the checkpoint "
                  + "was deleted, so the run cannot continue; start it again with --overwrite instead of --resume")
        }
        self = try inRole("checkpoint file") { try FineTuneCheckpoint(checking: path) }
    }

    private init(checking path: String) throws {
        let file = try StateDictFile.open(path: path)
        let metadata = file.metadata
        guard metadata["format"] == Self.formatName, let done = metadata["epochs_done"].flatMap({ Int($0) }),
              let settings = metadata["settings"], let history = metadata["history"],
              let best = metadata["best_epoch"].flatMap({ Int($0) }) else {
            throw TrainingError(.malformed, "\(path) is not a full-finetune checkpoint (\(Self.formatName))")
        }
        epochsDone = done
        settingsJSON = settings
        do {
            self.history = try JSONDecoder().decode([EpochRecord].self, from: Data(history.utf8))
        } catch {
            throw TrainingError(.malformed, "\(path) is damaged: its 'history' attribute is not valid (\(error))")
        }
        guard self.history.count == done, (0...done).contains(best), (best == 0) == (done == 0) else {
            throw TrainingError(.malformed, "\(path) is damaged: 'epochs_done' \(done), 'best_epoch' \(best) and a 'history' of "
                                + "\(self.history.count) epochs disagree")
        }
        bestEpoch = best
        try file.checkFitsInMemory()
        var parameters: [(key: String, tensor: Tensor)] = []
        var optimizer: [String: Tensor] = [:]
        for entry in file.entries {
            let tensor = try file.tensor(entry.key)
            if entry.key.hasPrefix(Self.optimizerPrefix) {
                optimizer[String(entry.key.dropFirst(Self.optimizerPrefix.count))] = tensor
            } else {
                parameters.append((entry.key, tensor))
            }
        }
        stateDict = parameters
        optimizerState = optimizer
    }

    /// Refuses optimizer state that does not fit `parameters` (the network's state dict, in slot order: slot
    /// `i` is `parameters[i]`), before the optimizer sizes or indexes anything by it.
    func checkOptimizerState(against parameters: [(key: String, tensor: Tensor)], path: String) throws {
        for (key, tensor) in optimizerState {
            let parts = key.split(separator: ".", maxSplits: 1)
            func damaged(_ problem: String) -> TrainingError {
                TrainingError(.malformed, "\(path) is damaged: dataset \(Self.optimizerPrefix)\(key) \(problem)")
            }
            guard parts.count == 2, let slot = Int(parts[0]), parameters.indices.contains(slot) else {
                throw damaged("names no parameter of the network (it has \(parameters.count))")
            }
            if parts[1] == "step" {
                guard tensor.count == 1, let step = tensor.data.first, step >= 0, step <= Float(1 << 24), step.rounded() == step else {
                    throw damaged("is not one whole step count")
                }
            } else if tensor.count != parameters[slot].tensor.count {
                throw damaged("holds \(tensor.count) values for \(parameters[slot].key)'s \(parameters[slot].tensor.count)")
            }
        }
    }
}
