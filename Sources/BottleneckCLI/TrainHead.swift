import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

extension HeadTrainingSettings.ViewsChoice: ExpressibleByArgument {}

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
          bottleneck train-head --cache runs/pets-fc7.h5 --out runs/pets-adam \\
              --optimizer adam --lr 3e-4 --schedule cosine
          bottleneck train-head --cache runs/pets-pool5.h5 --out runs/pets-fc6 \\
              --train-from fc6 --weights vgg16-397923af.pth
        """)

    @Option(name: .long, help: ArgumentHelp("The feature cache written by 'bottleneck extract'.", valueName: "CACHE.h5"))
    var cache: String

    @Option(name: .long, help: ArgumentHelp("The run directory to write (created if missing). " + outputPolicy, valueName: "RUN_DIR"))
    var out: String

    @OptionGroup var training: SharedTrainingOptions<HeadTrainingSettings>
    @Option(name: .setting(.lr), parsing: .unconditional, help: .setting(.lr, in: .trainHead)) var lr: Double?
    @Option(name: .setting(.schedule), help: .setting(.schedule, in: .trainHead)) var schedule = HeadTrainingSettings().schedule
    @Option(name: .setting(.stepSize), parsing: .unconditional, help: .setting(.stepSize, in: .trainHead)) var stepSize: Int?
    @Option(name: .setting(.gamma), parsing: .unconditional, help: .setting(.gamma, in: .trainHead))
    var gamma = HeadTrainingSettings().gamma
    @Option(name: .setting(.patience), parsing: .unconditional, help: .setting(.patience, in: .trainHead))
    var patience = HeadTrainingSettings().patience
    @Option(name: .setting(.trainFrom), help: .setting(.trainFrom, in: .trainHead, valueName: "LAYER"))
    var trainFrom = HeadTrainingSettings().trainFrom
    @OptionGroup var threads: ThreadsOption
    @Option(name: .setting(.memoryBudgetMb), parsing: .unconditional, help: .setting(.memoryBudgetMb, in: .trainHead))
    var memoryBudgetMb: Int?

    @Option(name: .long, help: ArgumentHelp("""
        Backbone weights for the frozen layers between a cut below fc7 and fc8; must be the file the cache was \
        extracted with (default: the file the cache records).
        """, valueName: "FILE|random"))
    var weights: String?

    @Option(name: .setting(.views), help: .setting(.views, in: .trainHead)) var views = HeadTrainingSettings().views

    @Flag(help: "Train on a cache whose extraction did not finish.") var allowIncomplete = false
    @Flag(help: "Replace a run already in RUN_DIR.") var overwrite = false

    /// The job the command line describes.
    func job() -> HeadTrainingJob {
        var job = HeadTrainingJob(cachePath: cache, runDirectory: out)
        training.apply(to: &job.settings)
        job.settings.learningRate = lr
        job.settings.schedule = schedule
        job.settings.stepSize = stepSize
        job.settings.gamma = gamma
        job.settings.patience = patience
        job.settings.trainFrom = trainFrom
        job.settings.threads = threads.threads
        job.settings.views = views
        if let memoryBudgetMb { job.settings.memoryBudgetBytes = memoryBudgetMb << 20 }
        job.weights = weights.map { WeightsChoice.resolve($0).choice }
        job.allowIncomplete = allowIncomplete
        job.overwrite = overwrite
        return job
    }

    func run() throws {
        threads.apply()
        let summary = try job().run(log: printErr)
        print(String(format: "train-head: best epoch %d of %d, val accuracy %.4f (chance %.4f), val loss %.4f; "
                     + "%.1f s, %.0f samples/s; %@", summary.bestEpoch, summary.epochsRun, summary.bestValAccuracy,
                     summary.chanceAccuracy, summary.bestValLoss, summary.wallSeconds, summary.throughput, out))
        printRandomWeightsNote(summary.backboneWeights)
    }
}
