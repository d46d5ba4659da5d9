//! Configuration: the TOML file → a validated [`Config`], with every problem reported
//! at once as `file:line:col: message`. Only `app` and the CLI read this module; each
//! other module receives its own typed `Settings` from here.

pub mod file;
pub mod reload;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{Config, Hygiene, StoreSettings};

/// Where environment overrides come from (the process, or a map in tests).
pub trait Env {
    /// The value of `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line and column, when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn at(src: &str, span: std::ops::Range<usize>, message: impl Into<String>) -> Self {
        let message = message.into();
        if span == (0..0) {
            return Self { at: None, message };
        }
        let before = src.get(..span.start).unwrap_or(src);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self {
            at: Some((line, column)),
            message,
        }
    }
}

/// Loading a config failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file has problems; all of them are listed.
    #[error("{}", render(path, diagnostics))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(path: &Path, diagnostics: &[Diagnostic]) -> String {
    let mut out = format!("{} has {} problem(s):", path.display(), diagnostics.len());
    for d in diagnostics {
        out.push('\n');
        out.push_str(&DiagnosticLine(path, d).to_string());
    }
    out
}

struct DiagnosticLine<'a>(&'a Path, &'a Diagnostic);

impl fmt::Display for DiagnosticLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1.at {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.0.display(), self.1.message),
            None => write!(f, "{}: {}", self.0.display(), self.1.message),
        }
    }
}

/// Reads and validates the config file at `path`, applying `env` overrides.
///
/// # Errors
/// [`Error::Read`] or [`Error::Invalid`] with every problem found.
pub fn load(path: &Path, env: &dyn Env) -> Result<Config, Error> {
    let src = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&src, env).map_err(|diagnostics| Error::Invalid {
        path: path.to_owned(),
        diagnostics,
    })
}

/// Validates config text.
///
/// # Errors
/// Every problem found, in file order where they have a place.
pub fn parse(src: &str, env: &dyn Env) -> Result<Config, Vec<Diagnostic>> {
    validate::parse(src, env)
}

/// Parses a duration: `<N>ms`, `<N>s`, `<N>m`, `<N>h` or `<N>d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Parses a listen address.
pub(crate) fn parse_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

#[cfg(test)]
mod tests;
