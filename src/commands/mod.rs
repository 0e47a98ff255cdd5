//! One function per subcommand; `main.rs` parses the command line and calls
//! these. Each returns the process exit code or an [`Error`](crate::Error).

mod checkpoint;
mod plan;
mod restore;
mod run;
mod version;

pub use checkpoint::checkpoint_inspect;
pub use plan::{OutputFormat, plan};
pub use restore::restore;
pub use run::run;
pub use version::version;
