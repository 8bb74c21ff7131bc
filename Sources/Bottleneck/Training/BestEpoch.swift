/// Which epoch a trainer keeps: the lowest validation loss so far, the earlier epoch on a tie, and never one
/// whose loss is not finite. (NaN compares false both ways, so a bare `<` or `!(>=)` keeps or drops it by accident.)
struct BestEpoch: Sendable, Equatable {
    /// From 1; nil until an epoch with a finite loss is offered.
    package private(set) var epoch: Int?
    private(set) var validationLoss = Double.infinity

    package init() {}

    /// The best of the epochs before a resume.
    package init(epoch: Int, validationLoss: Double) {
        self.epoch = epoch
        self.validationLoss = validationLoss
    }

    /// Offers `epoch` with its validation loss; true when it is the new best (and is now kept as it).
    mutating func offer(epoch: Int, validationLoss: Double) -> Bool {
        guard validationLoss.isFinite, self.epoch == nil || validationLoss < self.validationLoss else { return false }
        self.epoch = epoch
        self.validationLoss = validationLoss
        return true
    }
}
