import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct TrainHead: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-head",
        abstract: "Train a new classifier head on a feature cache: seconds, not hours.",
        discussion: """
        The head is the network above the cache's layer, with fc8 replaced by a new layer with one output per class \
        (torch's nn.Linear initialisation, seeded). At fc7 that is dropout → fc8; at fc6 or pool5 the layers between \
        come from the backbone weights the cache was made with (checked by sha256) and stay frozen unless --train-from \
        names a lower layer. Dropout is active in training as in torchvision's classifier, with masks drawn per \
        (seed, epoch, image, layer): training on the cache gives the same model as training the frozen network \
        (prefix in eval mode, head in train mode) from the images.

        Validation: the cache's val split when it has one, else each image by a hash of --split-seed, its class \
        and its path (SHA-256, below --val-fraction: about that share of each class), so that full-finetune on the \
        images splits them alike, unreadable files or not, and added images never move the others. \
        Training stops when the validation loss has not improved for --patience epochs and keeps the best epoch. \
        The same command and seed give the same model.

        RUN_DIR receives config.json (every setting, the cache's fingerprint), metrics.csv (one line per epoch), \
        model.h5 (torchvision state-dict names, class names, cut, weights sha256: all that evaluate and predict \
        need) and, last, summary.json (best epoch, per-class precision and recall, confusion matrix, speed).

        Examples:
          bottleneck train-head --cache runs/shapes-fc7.h5 --out runs/shapes-head
          bottleneck train-head --cache runs/pets-fc7.h5 --out runs/pets-adam --optimizer adam --lr 3e-4 --schedule cosine
          bottleneck train-head --cache runs/pets-pool5.h5 --out runs/pets-fc6 --train-from fc6 --weights vgg16-397923af.pth
        """)

    @Option(name: .long, help: ArgumentHelp("The feature cache written by 'bottleneck extract'.", valueName: "CACHE.h5"))
    var cache: String

    @Option(name: .long, help: ArgumentHelp("The run directory to write (created if missing). " + outputPolicy, valueName: "RUN_DIR"))
    var out: String

    @Option(help: "Passes over the training rows (fewer when early stopping ends the run).") var epochs = 30
    @Option(help: "Rows per optimizer step.") var batchSize = 64
    @Option(help: "Learning rate (default 0.01 for sgd, 0.001 for adam and adamw).") var lr: Double?
    @Option(help: "sgd (with --momentum), adam or adamw, as torch.optim.") var optimizer = HeadTrainingSettings.OptimizerKind.sgd
    @Option(help: "SGD momentum.") var momentum = 0.9
    @Option(help: "Weight decay (default 0, or 0.01 for adamw: torch's defaults).") var weightDecay: Double?
    @Option(help: "Learning-rate schedule per epoch: constant, step (StepLR) or cosine (CosineAnnealingLR over --epochs).")
    var schedule = HeadTrainingSettings.ScheduleKind.constant
    @Option(help: "StepLR: epochs between decays (default a third of --epochs).") var stepSize: Int?
    @Option(help: "StepLR: the factor of each decay.") var gamma = 0.1
    @Option(help: "Stop after this many epochs without a lower validation loss (0: never stop early).") var patience = 5
    @Option(help: "Share of the images held out for validation (by hash) when the cache has no val split.") var valFraction = 0.2
    @Option(help: "Seed of the new layer, the shuffling and the dropout masks.") var seed: UInt64 = 0
    @Option(help: "Seed of the hashed validation split alone (runs to compare must share it).") var splitSeed: UInt64 = 0
    @Option(help: "Dropout probability of the classifier's dropout layers (torchvision: 0.5).") var dropout = 0.5
    @Option(help: ArgumentHelp("The lowest layer that learns (fc8, fc7, fc6); those between the cut and it stay frozen.", valueName: "LAYER"))
    var trainFrom = "fc8"
    @Option(help: "Cores to split per-row work across (all by default).") var threads = availableCores
    @Option(help: "Stream the cache in windows instead of reading it once when its rows exceed this many MB (default: half the RAM).")
    var memoryBudgetMb: Int?

    @Option(name: .long, help: ArgumentHelp("""
        Backbone weights for the frozen layers between a cut below fc7 and fc8; must be the file the cache was \
        extracted with (default: the file the cache records).
        """, valueName: "FILE|random"))
    var weights: String?

    @Flag(help: "Train on a cache whose extraction did not finish.") var allowIncomplete = false
    @Flag(help: "Replace a run already in RUN_DIR.") var overwrite = false

    func run() throws {
        var job = HeadTrainingJob(cachePath: cache, runDirectory: out)
        job.settings.epochs = epochs
        job.settings.batchSize = batchSize
        job.settings.learningRate = lr
        job.settings.optimizer = optimizer
        job.settings.momentum = momentum
        job.settings.weightDecay = weightDecay
        job.settings.schedule = schedule
        job.settings.stepSize = stepSize
        job.settings.gamma = gamma
        job.settings.patience = patience
        job.settings.validationFraction = valFraction
        job.settings.seed = seed
        job.settings.splitSeed = splitSeed
        job.settings.dropout = dropout
        job.settings.trainFrom = trainFrom
        job.settings.threads = threads
        if let memoryBudgetMb { job.settings.memoryBudgetBytes = memoryBudgetMb << 20 }
        job.weights = weights.map { WeightsChoice.resolve($0).choice }
        job.allowIncomplete = allowIncomplete
        job.overwrite = overwrite
        let summary = try job.run(log: printErr)
        print(String(format: "train-head: best epoch %d of %d, val accuracy %.4f (chance %.4f), val loss %.4f; "
                     + "%.1f s, %.0f samples/s; %@", summary.bestEpoch, summary.epochsRun, summary.bestValAccuracy,
                     summary.chanceAccuracy, summary.bestValLoss, summary.wallSeconds, summary.throughput, out))
    }
}

extension HeadTrainingSettings.OptimizerKind: ExpressibleByArgument {}
extension HeadTrainingSettings.ScheduleKind: ExpressibleByArgument {}
