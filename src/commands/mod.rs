//! One function per subcommand; `main.rs` parses the command line and calls
//! these. Each returns the process exit code or an [`Error`](crate::Error).

mod plan;
mod restore;
mod version;

pub use plan::{OutputFormat, plan};
pub use restore::restore;
pub use version::version;
