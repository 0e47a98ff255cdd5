//! `sparkvisor version`.

pub fn version() -> String {
    format!(
        "sparkvisor {} ({} {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}
