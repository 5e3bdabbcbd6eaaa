//! Keeping steps away from the host's own services.
//!
//! Every step (and service) container sits on a bridge network orch made, whose Linux
//! bridge is named `orch…` ([`bridge_name`]). Two rules in the kernel's firewall then apply
//! to all of them, whatever their addresses:
//!
//! - `INPUT`: a new connection from an `orch+` interface to any address of this host (the
//!   bridge's gateway, the host's own addresses: orch's API, a database, a Docker daemon
//!   listening on TCP) is rejected; answers to connections the host opened (orch's
//!   readiness checks of services) pass.
//! - `DOCKER-USER` (forwarded traffic): link-local addresses (`169.254.0.0/16`, where cloud
//!   machines serve their credentials) are rejected.
//!
//! The rules live in a chain of orch's own (`ORCH-STEPS`, `ORCH-STEPS-FWD`) and are put in
//! place once, idempotently; they outlive orch (they only match orch's bridges). Putting
//! them in place needs root and `iptables`; without, [`ensure`] says why.

use std::process::Command;

/// The prefix of the bridges of runs kept from the host; the firewall rules match `orch+`.
pub const BRIDGE_PREFIX: &str = "orch";
/// The prefix of the bridges of runs allowed to reach the host (`--step-host-access`).
pub const OPEN_BRIDGE_PREFIX: &str = "orx";

/// The Linux bridge name of a network orch makes: a prefix and 10 hex digits (interface
/// names have at most 15 bytes).
pub fn bridge_name(network: &str, block_host: bool) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(network.as_bytes());
    let prefix = if block_host { BRIDGE_PREFIX } else { OPEN_BRIDGE_PREFIX };
    format!("{prefix}{}", hex::encode(&d[..5]))
}

const CHAIN: &str = "ORCH-STEPS";
const FORWARD_CHAIN: &str = "ORCH-STEPS-FWD";

fn run(tool: &str, args: &[&str]) -> Result<bool, String> {
    let out =
        Command::new(tool).args(["-w", "10"]).args(args).output().map_err(|e| format!("cannot run {tool}: {e}"))?;
    if out.status.success() {
        return Ok(true);
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // `-C` (check) answers 1 for "no such rule"; anything else is a real failure.
    if args.first() == Some(&"-C") && out.status.code() == Some(1) && !err.contains("Permission denied") {
        return Ok(false);
    }
    Err(format!("{tool} {}: {err}", args.join(" ")))
}

fn ensure_rule(tool: &str, chain: &str, position: Option<&str>, rule: &[&str]) -> Result<(), String> {
    let mut check = vec!["-C", chain];
    check.extend_from_slice(rule);
    if run(tool, &check)? {
        return Ok(());
    }
    let mut add = match position {
        Some(p) => vec!["-I", chain, p],
        None => vec!["-A", chain],
    };
    add.extend_from_slice(rule);
    run(tool, &add).map(|_| ())
}

fn ensure_with(tool: &str, reject_with: &str) -> Result<(), String> {
    // The chain may exist already (another orch, an earlier run): that is fine.
    let _ = run(tool, &["-N", CHAIN]);
    ensure_rule(tool, CHAIN, Some("1"), &["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"])?;
    ensure_rule(tool, CHAIN, None, &["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])?;
    ensure_rule(tool, CHAIN, None, &["-j", "REJECT", "--reject-with", reject_with])?;
    let iface = format!("{BRIDGE_PREFIX}+");
    ensure_rule(tool, "INPUT", Some("1"), &["-i", &iface, "-j", CHAIN])?;
    Ok(())
}

/// Puts the rules in place (once per process; later calls return the first answer).
pub fn ensure() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        if !rustix::process::geteuid().is_root() {
            return Err("keeping steps from this host's services needs root (iptables)".into());
        }
        ensure_with("iptables", "icmp-port-unreachable")?;
        // Cloud metadata (169.254.169.254) hands out the machine's credentials.
        let _ = run("iptables", &["-N", FORWARD_CHAIN]);
        let iface = format!("{BRIDGE_PREFIX}+");
        ensure_rule(
            "iptables",
            FORWARD_CHAIN,
            None,
            &["-d", "169.254.0.0/16", "-j", "REJECT", "--reject-with", "icmp-net-unreachable"],
        )?;
        // DOCKER-USER exists once Docker has set up its own rules; without it, forwarded
        // traffic is not Docker's to filter either.
        if run("iptables", &["-S", "DOCKER-USER"]).is_ok() {
            ensure_rule("iptables", "DOCKER-USER", Some("1"), &["-i", &iface, "-j", FORWARD_CHAIN])?;
        }
        // IPv6 only where the host has it; a missing ip6tables means no IPv6 to guard.
        if std::path::Path::new("/proc/net/if_inet6").exists()
            && Command::new("ip6tables").arg("-V").output().is_ok_and(|o| o.status.success())
        {
            ensure_with("ip6tables", "icmp6-port-unreachable")?;
        }
        Ok(())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_an_interface_name() {
        let a = bridge_name("orch-s1a2b3c4d-42-1", true);
        assert!(a.starts_with("orch") && a.len() <= 15, "{a}");
        assert_ne!(a, bridge_name("orch-s1a2b3c4d-43-1", true));
        let open = bridge_name("orch-s1a2b3c4d-42-1", false);
        assert!(!open.starts_with(BRIDGE_PREFIX) && open.len() <= 15, "{open}");
    }
}
