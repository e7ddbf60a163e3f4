//! One rule for which errors are the user's mistake in what they asked for (exit code 2) and
//! which are failures of the work (exit code 1): every module error type answers
//! [`IsUsage::is_usage`], looking through the errors it wraps, and `main` asks only that.

/// Whether an error is a usage error (a bad name, flag or combination of options), as opposed
/// to a failure while doing the work (a file that cannot be read, a computation that failed).
pub trait IsUsage {
    fn is_usage(&self) -> bool;
}
