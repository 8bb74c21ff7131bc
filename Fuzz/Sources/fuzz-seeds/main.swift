@testable import Bottleneck
import Foundation

// Writes the seeds that only the library can make (feature caches, a journal, a model) with the narrow test
// network, so they stay a few kB: `fuzz-seeds REPO CORPUS` fills CORPUS/cache, CORPUS/journal, CORPUS/model.
let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    FileHandle.standardError.write(Data("usage: fuzz-seeds REPO CORPUS\n".utf8))
    exit(2)
}
let repo = URL(fileURLWithPath: arguments[1])
let corpus = URL(fileURLWithPath: arguments[2])
let manager = FileManager.default
let work = manager.temporaryDirectory.appendingPathComponent("bottleneck-fuzz-seeds-\(getpid())")
defer { try? manager.removeItem(at: work) }

let config = VGGConfig.vgg16.narrowed(by: 16, hidden: 64, classes: 10)
let weights = WeightsChoice.file(repo.appendingPathComponent("Tests/Fixtures/network/narrow_vgg16_legacy.pth").path)
let preprocessing = Preprocessing(resize: 36, crop: 32)

func seed(_ file: URL, into target: String, as name: String) throws {
    let folder = corpus.appendingPathComponent(target)
    try manager.createDirectory(at: folder, withIntermediateDirectories: true)
    let destination = folder.appendingPathComponent(name)
    try? manager.removeItem(at: destination)
    try manager.copyItem(at: file, to: destination)
}

do {
    // Two classes, with train/ and val/ splits, of small images.
    let images = work.appendingPathComponent("images")
    let fixtures = repo.appendingPathComponent("Tests/Fixtures/images")
    for (folder, file) in [("train/a", "rgb_17x23.jpg"), ("train/a", "rgb_trns_19x13.png"), ("train/b", "gray2_trns_19x13.png"),
                           ("train/b", "p4_37x29.png"), ("val/a", "bilevel_17x23.png"), ("val/b", "la16_23x17.png")] {
        let target = images.appendingPathComponent(folder)
        try manager.createDirectory(at: target, withIntermediateDirectories: true)
        try manager.copyItem(at: fixtures.appendingPathComponent(file), to: target.appendingPathComponent(file))
    }

    for (layer, compress) in [("fc7", false), ("fc7", true), ("pool5", false)] {
        let name = "\(layer)\(compress ? "-compressed" : "").h5"
        var job = ExtractionJob(imagesRoot: images.path, outputPath: work.appendingPathComponent(name).path, weights: weights)
        job.config = config
        job.preprocessing = preprocessing
        job.layer = layer
        job.batchSize = 2
        job.compress = compress
        try seed(URL(fileURLWithPath: try job.run { _ in }.path), into: "cache", as: name)
    }

    var training = HeadTrainingJob(cachePath: work.appendingPathComponent("fc7.h5").path,
                                   runDirectory: work.appendingPathComponent("head").path)
    training.config = config
    training.settings.epochs = 1
    training.allowIncomplete = true
    _ = try training.run { _ in }
    try seed(work.appendingPathComponent("head/model.h5"), into: "model", as: "head.h5")

    // What a killed extract leaves: a journal holding one batch, and no cache.
    let folder = try ImageFolder(root: images.path)
    let cut = try CutPoint("fc7", in: config)
    let fingerprint = CacheFingerprint(config: config, cut: cut, weights: .random(seed: 0), preprocessing: preprocessing,
                                       imageRoot: images.path)
    let cachePath = work.appendingPathComponent("interrupted.h5").path
    let builder = try FeatureCacheBuilder.open(path: cachePath, fingerprint: fingerprint, classes: folder.classes,
                                               manifest: folder.items, overwrite: true) { _, _ in nil }
    let rows = folder.items.prefix(2).map { item in
        (item: item, identity: FileIdentity(size: 1, mtimeNanoseconds: 0, ctimeNanoseconds: 0, inode: 0,
                                            sha256: [UInt8](repeating: 7, count: 32)))
    }
    let features = (0..<rows.count * fingerprint.rowSize).map { Float($0 % 7) }
    _ = try features.withUnsafeBufferPointer { try builder.append(features: $0, rows: rows, failed: [("b/broken.png", "truncated")]) }
    builder.abandon()
    try seed(URL(fileURLWithPath: FeatureCacheBuilder.journalPath(for: cachePath)), into: "journal", as: "one-batch.partial")
} catch {
    FileHandle.standardError.write(Data("fuzz-seeds: \(error)\n".utf8))
    exit(1)
}
