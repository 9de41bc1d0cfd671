//! Problems found while loading or validating config, each naming where it is: the file, the
//! object (`Kind namespace/name`) and the field path inside it.
use std::fmt;
use std::path::PathBuf;

/// Whether a problem rejects the config or only informs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem in one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// e.g. `spec.http[0].route[1].weight`; empty for the object as a whole.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A problem with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    /// `VirtualService default/reviews`, or `document 3` when the object has no name yet.
    pub object: Option<String>,
    pub problem: Problem,
}

impl ConfigError {
    pub fn is_error(&self) -> bool {
        self.problem.severity == Severity::Error
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if self.problem.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.problem.path.is_empty() {
            write!(f, "{}: ", self.problem.path)?;
        }
        f.write_str(&self.problem.message)
    }
}

impl std::error::Error for ConfigError {}
