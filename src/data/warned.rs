//! A result a reader could use although something was lost on the way (a truncated stream, a
//! token out of range). Readers return the loss with the value instead of printing it, so the
//! caller decides where it goes: a command prints it on stderr, `prepare` keeps it in its report.

/// A value and what was lost producing it; each warning names the file and the loss.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "warnings say what was lost; report them"]
pub struct Warned<T> {
    pub value: T,
    pub warnings: Vec<String>,
}

impl<T> Warned<T> {
    /// A value nothing was lost from.
    pub fn clean(value: T) -> Self {
        Self { value, warnings: Vec::new() }
    }

    /// Map the value through a step that may fail, keeping the warnings.
    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Warned<U>, E> {
        Ok(Warned { value: f(self.value)?, warnings: self.warnings })
    }

    /// The value, after printing each warning on stderr as `warning: ...` (for commands).
    pub fn print_warnings(self) -> T {
        for warning in &self.warnings {
            eprintln!("warning: {warning}");
        }
        self.value
    }
}
