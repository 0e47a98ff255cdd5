//! Test-only fault injection (cargo feature `fault-injection`, which
//! `make test` enables; release builds and a plain `cargo build` do not
//! have it, so no production setting can trip it).
//!
//! `SPARKVISOR_FAULT=<task>@<file>[,<task>@<file>…]`: the essential task
//! `<task>` (see `crate::tasks`), or `supervisor` (the loop itself),
//! panics once `<file>` exists. The trigger
//! is a file so a test can first bring sparkvisor to the state it wants to
//! break (app running, replica written) and then pull the trigger. Without
//! the feature the variable is an unknown configuration key (exit 2).

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The variable (with the `SPARKVISOR_` prefix the config loader skips).
pub const ENV: &str = "SPARKVISOR_FAULT";

fn armed() -> &'static [(String, PathBuf)] {
    static ARMED: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|item| {
                let (task, file) = item.trim().split_once('@')?;
                Some((task.to_string(), PathBuf::from(file)))
            })
            .collect()
    })
}

/// `fut`, made to panic once the trigger for `task` exists (unchanged when
/// no fault names `task`).
pub fn arm<F, T>(task: &'static str, fut: F) -> impl Future<Output = T> + Send + 'static
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let trigger = armed()
        .iter()
        .find(|(t, _)| t == task)
        .map(|(_, f)| f.clone());
    async move {
        let Some(trigger) = trigger else {
            return fut.await;
        };
        tokio::select! {
            v = fut => v,
            _ = async {
                while !trigger.exists() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } => panic!("fault injected into task {task} ({} exists)", trigger.display()),
        }
    }
}
