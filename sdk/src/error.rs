//! The one error type of the SDK.
//!
//! Like `anyhow::Error`, [`Error`] converts from any `std::error::Error`, so `?`
//! works on serde, parsing and I/O errors alike. It deliberately does not
//! implement `std::error::Error` itself (that would conflict with the blanket
//! conversion). Its message travels to the host, which puts it in the
//! dead-letter headers and the application status: write messages a person can
//! act on.

use std::fmt;

/// An error in a processor: a message, with optional context lines.
pub struct Error {
    message: String,
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with the given message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error { message: message.to_string() }
    }

    /// The message, including any context added with [`ResultExt::context`].
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with `context: `.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error { message: format!("{context}: {}", self.message) }
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Error::msg(error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?})", self.message)
    }
}

/// Adds context to errors of any `Result` whose error converts into [`Error`].
pub trait ResultExt<T> {
    /// Prefixes the error message with `context`.
    fn context(self, context: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
}

/// Returns early with an [`Error`] built like `format!`.
///
/// ```
/// # use weir_sdk::prelude::*;
/// fn check(qty: i64) -> Result<()> {
///     if qty <= 0 {
///         bail!("quantity must be positive, got {qty}");
///     }
///     Ok(())
/// }
/// assert_eq!(check(0).unwrap_err().message(), "quantity must be positive, got 0");
/// ```
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*)))
    };
}
