//! Cluster keys (issue #17; `src/cluster`): the NATS server this node joins the
//! cluster through, the node's name, the NATS credentials and TLS files, and the
//! replication of the JetStream KV buckets. `cluster_nats = ""` (the default) is
//! single-node mode: nothing of the cluster runs.

use clap::Args;

use super::cli::{d, with_default};
use super::value::{int, optional_path, push_text, text, Expect, Raw};
use super::Config;

#[derive(Args, Debug, Default, Clone)]
pub struct ClusterArgs {
    /// NATS server URL(s) this node joins the cluster through, comma-separated
    /// (nats://host:4222, tls://host:4222), usually the node's local member of a
    /// NATS cluster with JetStream. Default: "" (single node, no cluster)
    #[arg(long, value_name = "URL")]
    pub cluster_nats: Option<String>,
    /// This node's name in the cluster, unique per node (letters, digits, '-', '_').
    /// Default: "" (a random name per start)
    #[arg(long, value_name = "NAME")]
    pub cluster_node_name: Option<String>,
    /// NATS user name (with --cluster-nats-password). Default: "" (none)
    #[arg(long, value_name = "USER")]
    pub cluster_nats_user: Option<String>,
    /// NATS password (with --cluster-nats-user). Default: "" (none)
    #[arg(long, value_name = "PASSWORD")]
    pub cluster_nats_password: Option<String>,
    /// NATS credentials file (JWT and NKey seed, as `nsc` writes it). Default: "" (none)
    #[arg(long, value_name = "FILE")]
    pub cluster_nats_creds_file: Option<String>,
    /// Subject prefix of this node's NATS reply inboxes (request replies, JetStream
    /// acks, KV watches), e.g. _RINGMQ_INBOX.n1, so NATS permissions can keep other
    /// users from reading them (deploy/nats/ringmq-nats.conf). Default: "" (_INBOX)
    #[arg(long, value_name = "PREFIX")]
    pub cluster_nats_inbox_prefix: Option<String>,
    /// PEM file of the CA that signs the NATS servers' certificates; setting it
    /// requires TLS to NATS. Default: "" (system roots when the URL is tls://)
    #[arg(long, value_name = "FILE")]
    pub cluster_nats_tls_ca_file: Option<String>,
    /// PEM certificate chain this node presents to NATS (with
    /// --cluster-nats-tls-key-file). Default: "" (none)
    #[arg(long, value_name = "FILE")]
    pub cluster_nats_tls_cert_file: Option<String>,
    /// PEM private key of --cluster-nats-tls-cert-file. Default: "" (none)
    #[arg(long, value_name = "FILE")]
    pub cluster_nats_tls_key_file: Option<String>,
    #[arg(long, value_name = "N", help = with_default("JetStream replicas of the cluster's KV buckets (retained messages); at most the NATS cluster size, 1..=5", d().cluster_kv_replicas))]
    pub cluster_kv_replicas: Option<String>,
    #[arg(long, value_name = "MS", help = with_default("How often this node puts its heartbeat in the cluster, in ms", d().cluster_beat_ms))]
    pub cluster_beat_ms: Option<String>,
    #[arg(long, value_name = "MS", help = with_default("A node whose heartbeat NATS has not acknowledged for this long closes its clients that have a will (MQTT 5: DISCONNECT 0x9C), before the others may take it for dead; below cluster_dead_after_ms - cluster_beat_ms", d().cluster_fence_after_ms))]
    pub cluster_fence_after_ms: Option<String>,
    #[arg(long, value_name = "MS", help = with_default("A node whose heartbeat is this old is dead and its clients' wills are published; the same on every node", d().cluster_dead_after_ms))]
    pub cluster_dead_after_ms: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "cluster_nats",
    "cluster_node_name",
    "cluster_nats_user",
    "cluster_nats_password",
    "cluster_nats_creds_file",
    "cluster_nats_inbox_prefix",
    "cluster_nats_tls_ca_file",
    "cluster_nats_tls_cert_file",
    "cluster_nats_tls_key_file",
    "cluster_kv_replicas",
    "cluster_beat_ms",
    "cluster_fence_after_ms",
    "cluster_dead_after_ms",
];

/// `nats://`, `tls://` (and `ws(s)://`, which async-nats would refuse here) URLs.
fn nats_urls(raw: &Raw) -> Result<Vec<String>, Expect> {
    let expected = || "NATS URLs like nats://127.0.0.1:4222, comma-separated, or \"\"".to_string();
    let s = text(raw).map_err(|_| expected())?;
    let mut urls = Vec::new();
    for u in s.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let ok = ["nats://", "tls://"].iter().any(|p| {
            u.strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
        });
        if !ok {
            return Err(expected());
        }
        urls.push(u.to_string());
    }
    Ok(urls)
}

fn node_name(raw: &Raw) -> Result<String, Expect> {
    let expected = || "a name of letters, digits, '-' and '_' (at most 64), or \"\"".to_string();
    let s = text(raw).map_err(|_| expected())?;
    let ok = s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(s).ok_or_else(expected)
}

/// A NATS subject prefix: dot-separated tokens of letters, digits, '-', '_' and '$'
/// (no wildcard, no empty token), at most 128 bytes; or "" (async-nats's `_INBOX`).
fn inbox_prefix(raw: &Raw) -> Result<String, Expect> {
    let expected = || {
        "a NATS subject prefix like _RINGMQ_INBOX.n1 (tokens of letters, digits, '-', \
         '_', '$' joined by '.', at most 128 bytes), or \"\""
            .to_string()
    };
    let s = text(raw).map_err(|_| expected())?;
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'$')
    };
    let ok = s.is_empty() || (s.len() <= 128 && s.split('.').all(token_ok));
    ok.then_some(s).ok_or_else(expected)
}

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "cluster_nats" => cfg.cluster_nats = nats_urls(raw)?,
        "cluster_node_name" => cfg.cluster_node_name = node_name(raw)?,
        "cluster_nats_user" => cfg.cluster_nats_user = text(raw)?,
        "cluster_nats_password" => cfg.cluster_nats_password = text(raw)?,
        "cluster_nats_creds_file" => cfg.cluster_nats_creds_file = optional_path(raw)?,
        "cluster_nats_inbox_prefix" => cfg.cluster_nats_inbox_prefix = inbox_prefix(raw)?,
        "cluster_nats_tls_ca_file" => cfg.cluster_nats_tls_ca_file = optional_path(raw)?,
        "cluster_nats_tls_cert_file" => cfg.cluster_nats_tls_cert_file = optional_path(raw)?,
        "cluster_nats_tls_key_file" => cfg.cluster_nats_tls_key_file = optional_path(raw)?,
        "cluster_kv_replicas" => cfg.cluster_kv_replicas = int(raw, 1, 5)? as usize,
        "cluster_beat_ms" => cfg.cluster_beat_ms = int(raw, 100, 60_000)?,
        "cluster_fence_after_ms" => cfg.cluster_fence_after_ms = int(raw, 200, 600_000)?,
        "cluster_dead_after_ms" => cfg.cluster_dead_after_ms = int(raw, 500, 600_000)?,
        _ => return Ok(false),
    }
    Ok(true)
}

impl ClusterArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_text(v, "cluster_nats", &self.cluster_nats);
        push_text(v, "cluster_node_name", &self.cluster_node_name);
        push_text(v, "cluster_nats_user", &self.cluster_nats_user);
        push_text(v, "cluster_nats_password", &self.cluster_nats_password);
        push_text(v, "cluster_nats_creds_file", &self.cluster_nats_creds_file);
        push_text(
            v,
            "cluster_nats_inbox_prefix",
            &self.cluster_nats_inbox_prefix,
        );
        push_text(
            v,
            "cluster_nats_tls_ca_file",
            &self.cluster_nats_tls_ca_file,
        );
        push_text(
            v,
            "cluster_nats_tls_cert_file",
            &self.cluster_nats_tls_cert_file,
        );
        push_text(
            v,
            "cluster_nats_tls_key_file",
            &self.cluster_nats_tls_key_file,
        );
        push_text(v, "cluster_kv_replicas", &self.cluster_kv_replicas);
        push_text(v, "cluster_beat_ms", &self.cluster_beat_ms);
        push_text(v, "cluster_fence_after_ms", &self.cluster_fence_after_ms);
        push_text(v, "cluster_dead_after_ms", &self.cluster_dead_after_ms);
    }
}

/// The lease timings across keys (review H3): a node must have closed its clients
/// with wills before any survivor can take it for dead. Survivors judge by their own
/// latest heartbeat, which lags by up to a beat, against this node's last one; this
/// node counts from the send of its last acknowledged one. So the fence must come
/// more than a beat before `dead_after`, and after more than two beats (else one
/// slow acknowledgement would close clients of a healthy node).
pub(super) fn check(cfg: &Config) -> Result<(), (String, Expect, String)> {
    let (beat, fence, dead) = (
        cfg.cluster_beat_ms,
        cfg.cluster_fence_after_ms,
        cfg.cluster_dead_after_ms,
    );
    if fence >= dead.saturating_sub(beat) {
        return Err((
            "cluster_fence_after_ms".into(),
            format!(
                "less than cluster_dead_after_ms - cluster_beat_ms ({dead} - {beat} = {} ms)",
                dead.saturating_sub(beat)
            ),
            fence.to_string(),
        ));
    }
    if fence < 2 * beat {
        return Err((
            "cluster_fence_after_ms".into(),
            format!("at least 2 x cluster_beat_ms ({} ms)", 2 * beat),
            fence.to_string(),
        ));
    }
    if !cfg.cluster_nats.is_empty() {
        check_joined(cfg)?;
    }
    Ok(())
}

/// What only matters once the node joins a cluster (review10 L2): settings that would
/// be ignored, or fail only later in the cluster thread (which then ends and leaves
/// the node alone), are refused at load time, naming the key to fix.
fn check_joined(cfg: &Config) -> Result<(), (String, Expect, String)> {
    let none = || "none".to_string();
    match (
        &cfg.cluster_nats_tls_cert_file,
        &cfg.cluster_nats_tls_key_file,
    ) {
        (Some(_), None) => {
            return Err((
                "cluster_nats_tls_key_file".into(),
                "a key file, since cluster_nats_tls_cert_file is set".into(),
                none(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                "cluster_nats_tls_cert_file".into(),
                "a certificate file, since cluster_nats_tls_key_file is set".into(),
                none(),
            ))
        }
        _ => {}
    }
    if !cfg.cluster_nats_password.is_empty() && cfg.cluster_nats_user.is_empty() {
        return Err((
            "cluster_nats_user".into(),
            "a user name, since cluster_nats_password is set".into(),
            none(),
        ));
    }
    if let Some(creds) = &cfg.cluster_nats_creds_file {
        if !cfg.cluster_nats_user.is_empty() {
            return Err((
                "cluster_nats_creds_file".into(),
                "not set together with cluster_nats_user (one way to authenticate to NATS)".into(),
                creds.clone(),
            ));
        }
    }
    for (key, file) in [
        ("cluster_nats_creds_file", &cfg.cluster_nats_creds_file),
        ("cluster_nats_tls_ca_file", &cfg.cluster_nats_tls_ca_file),
        (
            "cluster_nats_tls_cert_file",
            &cfg.cluster_nats_tls_cert_file,
        ),
        ("cluster_nats_tls_key_file", &cfg.cluster_nats_tls_key_file),
    ] {
        let Some(path) = file else { continue };
        if let Err(e) = std::fs::File::open(path) {
            return Err((key.into(), format!("a readable file ({e})"), path.clone()));
        }
    }
    let id_max = crate::cluster::subject::CLIENT_ID_MAX_BYTES;
    if cfg.max_client_id_len > id_max {
        return Err((
            "max_client_id_len".into(),
            format!(
                "at most {id_max} with cluster_nats set (a client id is a key of the \
                 cluster's KV buckets, within NATS's subject limit)"
            ),
            cfg.max_client_id_len.to_string(),
        ));
    }
    let claim_ms = crate::cluster::CLAIM_TIMEOUT_MS;
    if cfg.connect_timeout_ms <= claim_ms {
        return Err((
            "connect_timeout_ms".into(),
            format!(
                "more than {claim_ms} with cluster_nats set (a CONNECT may wait that long \
                 for its session claim)"
            ),
            cfg.connect_timeout_ms.to_string(),
        ));
    }
    Ok(())
}
