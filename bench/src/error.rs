//! What can stop a bench.

use std::path::PathBuf;

use thiserror::Error;

/// A benchmark that could not run or finish.
#[derive(Debug, Error)]
pub enum BenchError {
    /// Bad arguments (exit code 2).
    #[error("{0}")]
    BadInput(String),
    /// The host is not what the bench needs (no cgroup v1, not root, ...).
    #[error("{0}")]
    Unsupported(String),
    /// A step of the bench failed.
    #[error("{step}: {message}")]
    Step {
        /// What was being done.
        step: String,
        /// The error.
        message: String,
    },
    /// Writing the results failed.
    #[error("writing {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl BenchError {
    /// A failed step, with its error rendered.
    pub fn step(step: impl Into<String>, e: impl std::fmt::Display) -> Self {
        BenchError::Step {
            step: step.into(),
            message: e.to_string(),
        }
    }
}
