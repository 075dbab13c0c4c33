//! One line for an error and its causes, for the command line and logs.

use std::error::Error;
use std::fmt;

/// Displays an error, then each cause that adds something. Many libraries (Google's clients
/// among them) already write their source into their own message, so a plain walk down the
/// chain, like `anyhow`'s `{:#}`, repeats the same text once per level.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parent = self.0.to_string();
        f.write_str(&parent)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let part = error.to_string();
            // Echoing goes from an error to its own source, so only the parent is compared: a
            // short cause that happens to appear further up is still said.
            if !part.is_empty() && !parent.contains(&part) {
                write!(f, ": {part}")?;
            }
            parent = part;
            cause = error.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause; `echo` writes the cause into its own
    /// message, as Google's errors do.
    #[derive(Debug)]
    struct Layer {
        message: &'static str,
        echo: bool,
        source: Option<Box<Layer>>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match (&self.source, self.echo) {
                (Some(source), true) => write!(f, "{}: {source}", self.message),
                _ => f.write_str(self.message),
            }
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn layer(message: &'static str, echo: bool, source: Option<Layer>) -> Layer {
        Layer {
            message,
            echo,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn each_cause_appears_once() {
        let root = layer("connection refused", false, None);
        let echoing = layer(
            "cannot connect",
            true,
            Some(layer("sending request", true, Some(root))),
        );
        let top = layer("creating topic t", false, Some(echoing));
        assert_eq!(
            Chain(&top).to_string(),
            "creating topic t: cannot connect: sending request: connection refused"
        );
    }

    #[test]
    fn causes_that_do_not_echo_are_all_kept() {
        let top = layer(
            "a",
            false,
            Some(layer("b", false, Some(layer("c", false, None)))),
        );
        assert_eq!(Chain(&top).to_string(), "a: b: c");
        // A cause is compared with its parent only, not with everything said before it.
        let echo_of_top = layer(
            "reading config: invalid",
            false,
            Some(layer("parse", false, Some(layer("invalid", false, None)))),
        );
        assert_eq!(
            Chain(&echo_of_top).to_string(),
            "reading config: invalid: parse: invalid"
        );
        assert_eq!(Chain(&layer("alone", false, None)).to_string(), "alone");
    }
}
