//! How much a step container may do on the host: the isolation settings of `orch ci` and
//! `orch serve`, with safe defaults. Docker's own defaults give a step root with 14
//! capabilities, no memory or process limit, setuid programs that gain privileges, and a
//! route to every service of the host. See docs/security.md for each trade-off.

use clap::Args;

/// Linux capabilities a step keeps by default (all others are dropped): what package
/// managers and builds use (`chown`, file modes, changing user, binding low ports). Left
/// out of Docker's default set: `NET_RAW` (raw packets, ARP and DNS spoofing on the
/// bridge), `MKNOD` (device nodes), `SETFCAP`, `SETPCAP`, `SYS_CHROOT`, `AUDIT_WRITE`.
pub const DEFAULT_CAPS: &[&str] =
    &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE"];

/// Docker's own default set, for `--step-caps docker`.
pub const DOCKER_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability name Linux knows (`capabilities(7)`), to catch typos.
const KNOWN_CAPS: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// The default memory limit of a step (and of each of its services).
pub const DEFAULT_MEMORY: u64 = 4 << 30;
/// The default process limit of a step container.
pub const DEFAULT_PIDS: i64 = 4096;

/// What a step container is allowed. `Default` is the safe set.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Isolation {
    /// `no-new-privileges`: a setuid program does not gain privileges.
    pub no_new_privileges: bool,
    /// Bytes of memory (swap included); `None`: no limit.
    pub memory: Option<u64>,
    /// CPUs (`1.5`); `None`: no quota.
    pub cpus: Option<f64>,
    /// Processes and threads; `None`: no limit.
    pub pids: Option<i64>,
    /// The capabilities kept; every other one is dropped.
    pub caps: Vec<String>,
    /// New connections from steps to this host are refused (see `firewall`).
    pub block_host: bool,
    /// The Docker socket mounted at `/var/run/docker.sock`: the step controls the daemon,
    /// which is root on the host. Only for trusted pipelines (never a pull request's).
    pub docker_socket: bool,
    /// `--privileged`: every capability and device. Only for trusted pipelines.
    pub privileged: bool,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            no_new_privileges: true,
            memory: Some(DEFAULT_MEMORY),
            cpus: None,
            pids: Some(DEFAULT_PIDS),
            caps: DEFAULT_CAPS.iter().map(|c| c.to_string()).collect(),
            block_host: true,
            docker_socket: false,
            privileged: false,
        }
    }
}

/// The isolation settings, as flags (and `ORCH_STEP_*` variables) of `orch ci` and
/// `orch serve` (where the config file's `step_memory`, ... keys set them too).
#[derive(Debug, Args, Default, Clone)]
pub struct IsolationArgs {
    /// Memory limit of each step and service container: `2G`, `512M`, or `none` [default: 4G].
    #[arg(long, env = "ORCH_STEP_MEMORY", value_name = "SIZE")]
    pub step_memory: Option<String>,
    /// CPUs each step and service container may use: `1.5`, or `none` [default: none for
    /// `orch ci`; for `orch serve`, the machine's CPUs shared by its concurrent runs].
    #[arg(long, env = "ORCH_STEP_CPUS", value_name = "CPUS")]
    pub step_cpus: Option<String>,
    /// Processes (and threads) a step container may hold, or `none` [default: 4096].
    #[arg(long, env = "ORCH_STEP_PIDS", value_name = "N")]
    pub step_pids: Option<String>,
    /// The Linux capabilities steps keep, comma-separated (`CHOWN,SETUID`); `docker` for
    /// Docker's default set [default: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID,
    /// SETUID, NET_BIND_SERVICE].
    #[arg(long, env = "ORCH_STEP_CAPS", value_delimiter = ',', value_name = "CAPS")]
    pub step_caps: Vec<String>,
    /// Let steps open connections to this machine's own services (orch's API, a database
    /// listening on the host). Without it, the kernel's firewall turns them away (as root).
    #[arg(long, env = "ORCH_STEP_HOST_ACCESS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub step_host_access: Option<bool>,
    /// Let setuid programs in steps gain privileges (turns `no-new-privileges` off).
    #[arg(long, env = "ORCH_STEP_NEW_PRIVILEGES", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub step_new_privileges: Option<bool>,
}

/// The config file's keys for [`IsolationArgs`] (with `-`).
pub const KEYS: &[&str] =
    &["step-memory", "step-cpus", "step-pids", "step-caps", "step-host-access", "step-new-privileges"];

fn none(s: &str) -> bool {
    matches!(s.trim().to_ascii_lowercase().as_str(), "none" | "unlimited" | "0")
}

impl IsolationArgs {
    /// The settings, flags first, then `file` (a lookup of the config file's values by
    /// key), then the defaults (`default_cpus` for the CPU quota).
    pub fn resolve(
        &self,
        file: impl Fn(&str) -> Option<Vec<String>>,
        default_cpus: Option<f64>,
    ) -> Result<Isolation, String> {
        let one =
            |flag: &Option<String>, key: &str| flag.clone().or_else(|| file(key).and_then(|v| v.into_iter().next()));
        let boolean = |flag: Option<bool>, key: &str| -> Result<Option<bool>, String> {
            match flag {
                Some(b) => Ok(Some(b)),
                None => match file(key).and_then(|v| v.into_iter().next()) {
                    None => Ok(None),
                    Some(s) => match s.as_str() {
                        "true" | "1" | "yes" => Ok(Some(true)),
                        "false" | "0" | "no" => Ok(Some(false)),
                        _ => Err(format!("`{key}` must be true or false, got `{s}`")),
                    },
                },
            }
        };
        let mut iso = Isolation::default();
        if let Some(m) = one(&self.step_memory, "step-memory") {
            iso.memory = if none(&m) {
                None
            } else {
                let bytes = crate::cache::parse_size(&m).filter(|b| *b >= 6 << 20).ok_or_else(|| {
                    format!("`step-memory` must be a size of at least 6M (`4G`, `512M`) or `none`, got `{m}`")
                })?;
                Some(bytes)
            };
        }
        iso.cpus = default_cpus;
        if let Some(c) = one(&self.step_cpus, "step-cpus") {
            iso.cpus = if none(&c) {
                None
            } else {
                let n: f64 =
                    c.trim().parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.01).ok_or_else(|| {
                        format!("`step-cpus` must be a number of CPUs (`2`, `0.5`) or `none`, got `{c}`")
                    })?;
                Some(n)
            };
        }
        if let Some(p) = one(&self.step_pids, "step-pids") {
            iso.pids =
                if none(&p) {
                    None
                } else {
                    let n: i64 =
                        p.trim().parse().ok().filter(|n| *n >= 16).ok_or_else(|| {
                            format!("`step-pids` must be a number of at least 16 or `none`, got `{p}`")
                        })?;
                    Some(n)
                };
        }
        let caps: Vec<String> = if self.step_caps.iter().any(|c| !c.trim().is_empty()) {
            self.step_caps.clone()
        } else {
            file("step-caps").unwrap_or_default()
        };
        let caps: Vec<String> = caps.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
        if !caps.is_empty() {
            iso.caps = parse_caps(&caps)?;
        }
        if let Some(b) = boolean(self.step_host_access, "step-host-access")? {
            iso.block_host = !b;
        }
        if let Some(b) = boolean(self.step_new_privileges, "step-new-privileges")? {
            iso.no_new_privileges = !b;
        }
        Ok(iso)
    }
}

/// Capability names (`CAP_` optional, any case), `default`, `docker` or `none`.
pub fn parse_caps(names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let up = n.trim().to_ascii_uppercase();
        let up = up.strip_prefix("CAP_").unwrap_or(&up).to_string();
        let add: Vec<String> = match up.as_str() {
            "DEFAULT" => DEFAULT_CAPS.iter().map(|c| c.to_string()).collect(),
            "DOCKER" => DOCKER_CAPS.iter().map(|c| c.to_string()).collect(),
            "NONE" => Vec::new(),
            c if KNOWN_CAPS.contains(&c) => vec![c.to_string()],
            _ => {
                let hint = crate::pipeline::diag::did_you_mean(&up, KNOWN_CAPS.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(format!("`{n}` is not a Linux capability{hint}"));
            }
        };
        for c in add {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// The number of CPUs this machine has (1 if unknown).
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str)]) -> impl Fn(&str) -> Option<Vec<String>> {
        let owned: Vec<(String, String)> = entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| owned.iter().find(|(key, _)| key == k).map(|(_, v)| vec![v.clone()])
    }

    #[test]
    fn defaults_are_the_safe_set() {
        let iso = IsolationArgs::default().resolve(|_| None, None).unwrap();
        assert_eq!(iso, Isolation::default());
        assert!(iso.no_new_privileges && iso.block_host && !iso.docker_socket && !iso.privileged);
        assert_eq!((iso.memory, iso.pids, iso.cpus), (Some(4 << 30), Some(4096), None));
        assert!(!iso.caps.iter().any(|c| c == "NET_RAW" || c == "MKNOD" || c == "SYS_ADMIN"));
    }

    #[test]
    fn flags_win_over_the_file_and_none_lifts_a_limit() {
        let args = IsolationArgs {
            step_memory: Some("512M".into()),
            step_caps: vec!["cap_chown".into(), "setuid".into()],
            ..Default::default()
        };
        let iso = args
            .resolve(
                file(&[
                    ("step-memory", "8G"),
                    ("step-pids", "none"),
                    ("step-cpus", "1.5"),
                    ("step-host-access", "true"),
                ]),
                Some(4.0),
            )
            .unwrap();
        assert_eq!(iso.memory, Some(512 << 20));
        assert_eq!((iso.pids, iso.cpus, iso.block_host), (None, Some(1.5), false));
        assert_eq!(iso.caps, ["CHOWN", "SETUID"]);
        let d = IsolationArgs { step_caps: vec!["docker".into()], ..Default::default() }
            .resolve(|_| None, Some(2.0))
            .unwrap();
        assert_eq!((d.caps.len(), d.cpus), (14, Some(2.0)));
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let bad = |a: IsolationArgs| a.resolve(|_| None, None).unwrap_err();
        assert!(bad(IsolationArgs { step_memory: Some("lots".into()), ..Default::default() }).contains("step-memory"));
        assert!(bad(IsolationArgs { step_cpus: Some("-1".into()), ..Default::default() }).contains("step-cpus"));
        assert!(bad(IsolationArgs { step_pids: Some("3".into()), ..Default::default() }).contains("at least 16"));
        let e = bad(IsolationArgs { step_caps: vec!["SYS_ADMN".into()], ..Default::default() });
        assert!(e.contains("did you mean `SYS_ADMIN`"), "{e}");
    }
}
