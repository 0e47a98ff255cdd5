//! Client-mode properties: the driver's pod-IP networking on fixed ports,
//! executor sizing, and what Kubernetes or a standalone master needs.
//!
//! Invariants: the driver binds and advertises the pod IP on fixed ports
//! with `spark.port.maxRetries = 0`; on Kubernetes executors are owned by
//! the driver pod and named per attempt, so a restarted driver never
//! adopts or collides with the previous attempt's executors.

use std::collections::BTreeMap;

use super::{Origin, Property, prop};
use crate::config::{ClientConfig, Loaded, Master, ResolvedClient};

/// Adds client mode's computed properties for `attempt` to `out`.
pub(super) fn properties(
    loaded: &Loaded,
    client: &ResolvedClient,
    attempt: u32,
    out: &mut BTreeMap<String, Property>,
) {
    let c = &loaded.config.spark.client;
    let mut put = |k: &str, v: String, why: &str| {
        out.insert(k.to_string(), prop(v, Origin::Computed(why.to_string())));
    };
    network(client, c, &mut put);
    executors(c, &mut put);
    match &client.master.value {
        Master::Kubernetes(_) => kubernetes(client, c, attempt, &mut put),
        Master::Standalone(_) => put(
            "spark.cores.max",
            (c.executor_instances * c.executor_cores).to_string(),
            "spark.client.executor_instances × executor_cores",
        ),
    }
}

type Put<'a> = dyn FnMut(&str, String, &str) + 'a;

/// The driver on the pod IP and fixed ports.
fn network(client: &ResolvedClient, c: &ClientConfig, put: &mut Put<'_>) {
    let ip = client.pod_ip.value.to_string();
    let ip_why = format!("the pod IP ({})", client.pod_ip.source);
    put("spark.driver.host", ip.clone(), &ip_why);
    put("spark.driver.bindAddress", ip, &ip_why);
    put(
        "spark.driver.port",
        c.driver_port.to_string(),
        "spark.client.driver_port (fixed, so executors and NetworkPolicies know it)",
    );
    put(
        "spark.driver.blockManager.port",
        c.block_manager_port.to_string(),
        "spark.client.block_manager_port (fixed)",
    );
    put(
        "spark.port.maxRetries",
        "0".into(),
        "fail fast instead of drifting to a port executors do not expect",
    );
}

/// Executor sizing and decommissioning.
fn executors(c: &ClientConfig, put: &mut Put<'_>) {
    put(
        "spark.executor.cores",
        c.executor_cores.to_string(),
        "spark.client.executor_cores",
    );
    put(
        "spark.executor.memory",
        format!("{}m", c.executor_memory.bytes() >> 20),
        "spark.client.executor_memory",
    );
    if let Some(o) = c.executor_memory_overhead {
        put(
            "spark.executor.memoryOverhead",
            format!("{}m", o.bytes() >> 20),
            "spark.client.executor_memory_overhead",
        );
    }
    if c.decommission {
        for k in [
            "spark.decommission.enabled",
            "spark.storage.decommission.enabled",
            "spark.storage.decommission.rddBlocks.enabled",
            "spark.storage.decommission.shuffleBlocks.enabled",
        ] {
            put(k, "true".into(), "spark.client.decommission (spot nodes)");
        }
    }
}

/// Executors as Kubernetes pods owned by the driver pod.
fn kubernetes(client: &ResolvedClient, c: &ClientConfig, attempt: u32, put: &mut Put<'_>) {
    put(
        "spark.executor.instances",
        c.executor_instances.to_string(),
        "spark.client.executor_instances",
    );
    if let Some(ns) = &client.namespace {
        put(
            "spark.kubernetes.namespace",
            ns.value.clone(),
            &format!("the pod's namespace ({})", ns.source),
        );
    }
    if let Some(name) = &client.pod_name {
        put(
            "spark.kubernetes.driver.pod.name",
            name.value.clone(),
            &format!(
                "the pod's name ({}); executors are owned by it and deleted with it",
                name.source
            ),
        );
        put(
            "spark.kubernetes.executor.podNamePrefix",
            executor_prefix(&name.value, attempt),
            "per attempt, so a restarted driver never adopts or collides with old executors",
        );
    }
    if let Some(img) = &c.executor_image {
        put(
            "spark.kubernetes.container.image",
            img.clone(),
            "spark.client.executor_image",
        );
    }
    if let Some(sa) = &c.service_account {
        put(
            "spark.kubernetes.authenticate.driver.serviceAccountName",
            sa.clone(),
            "spark.client.service_account",
        );
        put(
            "spark.kubernetes.authenticate.executor.serviceAccountName",
            sa.clone(),
            "spark.client.service_account",
        );
    }
    if let Some(t) = &c.executor_pod_template {
        put(
            "spark.kubernetes.executor.podTemplateFile",
            t.display().to_string(),
            "spark.client.executor_pod_template",
        );
    }
    put(
        "spark.kubernetes.executor.useDriverPodIP",
        "false".into(),
        "pinned: executors use spark.driver.host (the pod IP); the default differs across Spark versions",
    );
}

/// A DNS-1123 label prefix of at most 47 characters, unique per attempt.
pub fn executor_prefix(pod_name: &str, attempt: u32) -> String {
    let suffix = format!("-a{attempt}");
    let mut base: String = pod_name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base.truncate(47 - suffix.len());
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "spark" } else { base };
    let base = if base.starts_with(|c: char| c.is_ascii_digit()) {
        format!("s{base}")
    } else {
        base.to_string()
    };
    let mut base = base;
    base.truncate(47 - suffix.len());
    format!("{}{suffix}", base.trim_end_matches('-'))
}
