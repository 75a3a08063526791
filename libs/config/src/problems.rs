//! Collecting configuration problems, all of them, before giving up.

use std::fmt;

use figment::Figment;
use figment::value::Value;
use serde::de::DeserializeOwned;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `kafka.brokers`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
    /// Where the offending value came from (an environment variable, a file), if known.
    pub origin: Option<String>,
}

impl Problem {
    /// A problem with no known origin.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.key, self.message)?;
        if let Some(origin) = &self.origin {
            write!(formatter, " (from {origin})")?;
        }
        Ok(())
    }
}

/// Every problem found while loading; the service prints it and exits non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn single(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }

    /// The problems, in the order of the sections and fields.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(formatter, "invalid configuration, {count} {noun}:")?;
        for problem in &self.problems {
            write!(formatter, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// The problems found so far, with the figment they were found in.
pub(crate) struct Problems<'a> {
    figment: &'a Figment,
    found: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(figment: &'a Figment) -> Self {
        Self {
            figment,
            found: Vec::new(),
        }
    }

    /// Extracts `section.field` as `T`, recording a problem (and returning `None`)
    /// when it is missing or has the wrong shape.
    pub(crate) fn field<T: DeserializeOwned>(&mut self, section: &str, field: &str) -> Option<T> {
        let key = format!("{section}.{field}");
        match self.figment.extract_inner::<T>(&key) {
            Ok(value) => Some(value),
            Err(first_error) => {
                // Environment variables are typed by their look: `FRAUD_REDIS__KEY_PREFIX=1234`
                // arrives as a number. Where text is expected, take the text as written.
                if let Ok(value @ (Value::Num(..) | Value::Bool(..))) =
                    self.figment.find_value(&key)
                    && let Some(text) = scalar_text(&value)
                    && let Ok(retyped) = Value::from(text).deserialize::<T>()
                {
                    return Some(retyped);
                }
                let message = first_error.kind.to_string();
                self.add(&key, message);
                None
            }
        }
    }

    /// Records a problem with the value at `key`.
    pub(crate) fn add(&mut self, key: &str, message: impl Into<String>) {
        let origin = self.origin_of(key);
        self.found.push(Problem {
            key: key.to_owned(),
            message: message.into(),
            origin,
        });
    }

    fn origin_of(&self, key: &str) -> Option<String> {
        let metadata = self.figment.find_metadata(key)?;
        if let Some(path) = metadata.source.as_ref().and_then(|s| s.file_path()) {
            return Some(format!("file {}", path.display()));
        }
        if metadata.name.contains("environment") {
            let name = key.replace('.', "__").to_ascii_uppercase();
            return Some(format!("environment variable {}{name}", crate::ENV_PREFIX));
        }
        Some(metadata.name.to_string())
    }

    pub(crate) fn into_result<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        match value {
            Some(value) if self.found.is_empty() => Ok(value),
            _ => Err(ConfigError {
                problems: self.found,
            }),
        }
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::Bool(_, flag) => Some(flag.to_string()),
        Value::Num(..) => value
            .to_u128()
            .map(|natural| natural.to_string())
            .or_else(|| value.to_i128().map(|integer| integer.to_string()))
            .or_else(|| value.to_f64().map(|real| real.to_string())),
        _ => None,
    }
}
