//! Printing an error with its causes.
//!
//! The project's error types show only their own part in `Display` and keep
//! the error they wrap as their [`source`](Error::source), so that a caller
//! can inspect each cause and a report does not print one twice. Whatever
//! prints an error for people (the CLI, a log line, an admin response)
//! prints it through [`ErrorChain`], so that no cause is lost.

use std::error::Error;
use std::fmt;

/// An error and every error under it, on one line: `what failed: why: the
/// root cause`.
///
/// A cause whose text its parent's message already ends with is not
/// repeated (some libraries' errors print their source in their own
/// message too).
///
/// ```
/// use plumber_engine::ErrorChain;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot read `{path}`")]
/// struct ReadError {
///     path: String,
///     #[source]
///     source: std::io::Error,
/// }
///
/// let error = ReadError {
///     path: "in.txt".into(),
///     source: std::io::Error::other("disk on fire"),
/// };
/// assert_eq!(error.to_string(), "cannot read `in.txt`");
/// assert_eq!(ErrorChain(&error).to_string(), "cannot read `in.txt`: disk on fire");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !text.is_empty() && !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorChain;

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Layer {
        message: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layers(messages: &[&'static str]) -> Layer {
        messages
            .iter()
            .rev()
            .fold(None, |source, message| {
                Some(Layer {
                    message,
                    source: source.map(Box::new),
                })
            })
            .expect("at least one layer")
    }

    #[test]
    fn every_cause_is_shown_in_order() {
        let error = layers(&["cannot start", "cannot open the state", "permission denied"]);
        assert_eq!(
            ErrorChain(&error).to_string(),
            "cannot start: cannot open the state: permission denied"
        );
    }

    #[test]
    fn a_cause_its_parent_already_printed_is_not_repeated() {
        let error = layers(&[
            "cannot connect: connection refused",
            "connection refused",
            "os error 111",
        ]);
        assert_eq!(
            ErrorChain(&error).to_string(),
            "cannot connect: connection refused: os error 111"
        );
    }

    #[test]
    fn an_error_without_a_source_is_its_own_message() {
        let error = layers(&["alone"]);
        assert_eq!(ErrorChain(&error).to_string(), "alone");
    }
}
