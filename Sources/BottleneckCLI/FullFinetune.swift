import ArgumentParser
import Bottleneck
import Foundation
import BottleneckKernels

struct FullFinetune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "full-finetune",
        abstract: "Fine-tune VGG16 end to end (or above --freeze-through) from the images: the slow comparison to train-head.",
        discussion: """
        No cache: every step decodes its images (on a thread of its own, a batch ahead), augments the training ones \
        with torchvision's RandomResizedCrop + RandomHorizontalFlip (--augment none: the eval transform), and runs \
        forward and backward through the network. fc8 is a new layer with one output per class, or the head a \
        train-head run learned (--init-head): an untrained layer under an unfrozen backbone makes the backbone \
        learn from noise, so train the new head first on cached features (extract, then train-head), then unfreeze \
        the network and fine-tune it starting from that head (--init-head RUN_DIR). --backbone-lr-mult gives the \
        pretrained layers a smaller learning rate.

        --freeze-through LAYER freezes that layer and everything below it (torch's requires_grad=False, optimizer \
        on the rest): no gradient, no update, no backward below the lowest trainable layer, and the frozen layers \
        run in evaluation mode, exactly as a feature cache has them (--freeze-through fc7 is train-head at fc7, uncached).

        RUN_DIR is the same as train-head's (config.json, metrics.csv, model.h5 with the whole state dict, \
        summary.json), so evaluate, predict and report take either. model.h5 holds the epoch with the lowest \
        validation loss. checkpoint.h5 is rewritten after every epoch: after an interruption, run the same command \
        with --resume and it ends where an uninterrupted run would have. A diverging loss (NaN, inf) stops the run \
        and keeps the last epoch's checkpoint. A batch that would not fit in memory is refused before anything runs.

        Data-parallel over MPI: started by mpirun (or srun --mpi=pmi2 or pmix) as K ranks, each rank decodes and trains on \
        its share of every --batch-size batch, the ranks sum their gradients (MPI_Iallreduce) before each update, and \
        all end with the model one process would have made (within float32 rounding). Each rank uses --threads \
        threads: on one machine, K ranks x --threads should not exceed its cores. Rank 0 alone writes RUN_DIR; \
        --resume works the same. A rank that dies or hangs ends the job after --collective-timeout seconds, with the \
        last epoch's checkpoint kept. OpenMPI's libmpi.so.40 is loaded only then (apt-get install openmpi-bin).

        Examples:
          bottleneck full-finetune --images data/shapes --out runs/shapes-ft \\
              --weights random --epochs 1 --image-size 112
          bottleneck full-finetune --images data/pets --out runs/pets-ft \\
              --init-head runs/pets-head --backbone-lr-mult 0.1
          bottleneck full-finetune --images data/pets --out runs/pets-conv5 \\
              --freeze-through conv4_3 --lr 1e-3
          mpirun -n 2 bottleneck full-finetune --threads 1 --images data/shapes \\
              --out runs/shapes-ft2 --weights random --epochs 1 --image-size 112
        """)

    @Option(name: .long, help: ArgumentHelp("Image folder (ImageFolder layout, optionally train/ val/).", valueName: "DIR"))
    var images: String

    @Option(name: .long, help: ArgumentHelp("The run directory to write (created if missing). " + outputPolicy, valueName: "RUN_DIR"))
    var out: String

    @OptionGroup var weights: WeightsOption

    @OptionGroup var training: SharedTrainingOptions<FineTuneSettings>
    @Option(name: .setting(.lr), parsing: .unconditional, help: .setting(.lr, in: .fullFinetune)) var lr = FineTuneSettings().learningRate
    @Option(name: .setting(.augment), help: .setting(.augment, in: .fullFinetune)) var augment = FineTuneSettings().augment
    @Option(name: .setting(.freezeThrough), help: .setting(.freezeThrough, in: .fullFinetune, valueName: "LAYER"))
    var freezeThrough: String?
    @Option(help: ArgumentHelp("A train-head run (its directory or model.h5) to start the head from.", valueName: "RUN_DIR"))
    var initHead: String?
    @Option(name: .setting(.backboneLrMult), parsing: .unconditional, help: .setting(.backboneLrMult, in: .fullFinetune))
    var backboneLrMult = FineTuneSettings().backboneLearningRateMultiplier
    @Option(name: .setting(.imageSize), parsing: .unconditional, help: .setting(.imageSize, in: .fullFinetune))
    var imageSize = FineTuneSettings().imageSize
    @Flag(help: "Continue the interrupted run in RUN_DIR from its last checkpoint (same settings).") var resume = false
    @Flag(help: "Replace a run already in RUN_DIR.") var overwrite = false
    @Option(parsing: .unconditional, help: ArgumentHelp("Under mpirun: seconds a rank waits for the others in one gradient sum "
                                                         + "before it ends the job (a rank died or hangs).", valueName: "SECONDS"))
    var collectiveTimeout = 600.0

    func validate() throws {
        guard collectiveTimeout > 0 else { throw ValidationError("--collective-timeout must be positive, got \(collectiveTimeout)") }
    }

    /// The job the command line describes.
    func job() -> FineTuneJob {
        var job = FineTuneJob(imagesRoot: images, runDirectory: out, weights: weights.resolved())
        training.apply(to: &job.settings)
        job.settings.learningRate = lr
        job.settings.augment = augment
        job.settings.freezeThrough = freezeThrough
        job.settings.backboneLearningRateMultiplier = backboneLrMult
        job.settings.imageSize = imageSize
        job.initialHead = initHead
        job.resume = resume
        job.overwrite = overwrite
        return job
    }
    @OptionGroup var threads: ThreadsOption

    func run() throws {
        threads.apply()
        var job = job()
        if try ProcessGroup.isLaunchedAsRanks() {
            job.group = try ProcessGroup(collectiveTimeout: .seconds(collectiveTimeout))
        }
        let summary: TrainingSummary
        if let group = job.group {
            do {
                // Only rank 0 speaks, but for the images it alone could not read.
                summary = try job.run { line in
                    if group.isCoordinator { printErr(line) } else if line.hasPrefix("warning:") { printErr("rank \(group.rank): \(line)") }
                }
            } catch {
                // The other ranks would wait at their next sum until the timeout: end them now.
                printErr("error: rank \(group.rank): \(error)")
                group.abort(code: 1)
            }
            group.finish()
            guard group.isCoordinator else { return }
        } else {
            summary = try job.run(log: printErr)
        }
        print(String(format: "full-finetune: best epoch %d of %d, val acc %.4f, val loss %.4f (chance %.3f); %.2f img/s training, "
                     + "peak RSS %@; %@", summary.bestEpoch, summary.epochsRun, summary.bestValAccuracy, summary.bestValLoss,
                     summary.chanceAccuracy, summary.throughput, (summary.peakResidentBytes ?? 0).formattedBytes, summary.model))
        printRandomWeightsNote(summary.backboneWeights)
    }
}
