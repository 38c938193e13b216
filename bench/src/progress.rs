//! Where a bench's status and progress lines go. The harness does not write them to
//! stderr itself: the program running it passes a [`Context`] whose [`Progress`] does
//! (the `host-cgroups` command prints them as its other status lines, in text or as
//! JSON log lines), so that the harness needs nothing from the command.

/// Receives the lines a bench reports while it runs (never its results: those go to
/// stdout and to the files under `--out`).
pub trait Progress {
    /// A status line about the bench as a whole, e.g. which files were written.
    fn status(&self, msg: &str);
    /// A progress line: one step of a bench done, with its figures so far.
    fn progress(&self, line: &str);
}

/// A [`Progress`] that drops every line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn status(&self, _msg: &str) {}
    fn progress(&self, _line: &str) {}
}

/// What the program running a bench gives it.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The program's version: the `version` field of every result.
    pub version: &'a str,
    /// Where status and progress lines go.
    pub progress: &'a dyn Progress,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}
