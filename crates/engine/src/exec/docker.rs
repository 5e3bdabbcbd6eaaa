//! The Docker backend, through bollard. One container per step attempt, a named volume per
//! run for the workspace, output streamed over an attach (the daemon's log driver is off:
//! json-file logging of a 50 MB output costs ~36 s, an attached stream under 1 s).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, DownloadFromContainerOptions, InspectNetworkOptions,
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions, LogsOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StartContainerOptions, StopContainerOptions, UploadToContainerOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::*;
use crate::confined::Root;
use crate::plan::WORKSPACE;

pub struct DockerBackend {
    docker: Docker,
    pid: String,
    host: String,
    /// Workspaces still to fill, by run: the first step container created fills it, the
    /// others wait for that.
    fills: std::sync::Mutex<HashMap<String, Arc<Fill>>>,
    /// The workspace bases held by runs whose workspace is a layer over one, by run.
    leases: std::sync::Mutex<HashMap<String, super::base::Lease>>,
    /// Network lanes, by run.
    lanes: std::sync::Mutex<HashMap<String, Vec<Lane>>>,
}

/// A network lane: a container that does nothing but hold a network namespace on the
/// steps' network. Step containers of its run join it (`network_mode: container:<id>`),
/// one at a time, one after another: joining costs a fraction of attaching a container to
/// a bridge (the veth pair, the address and Docker's embedded DNS are set up once per
/// lane). A step whose container has stopped left nothing in the namespace (its processes
/// are gone), so the next one finds it as a fresh container would, and steps that run at
/// once never share one. Lanes are a run's own: runs stay apart as on the bridge.
struct Lane {
    id: String,
    network: String,
    /// The step container using it now, by a number handed out once.
    user: Option<u64>,
}

static LANE_USERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What a shell made, removed once it ends.
struct ShellMade {
    container: Option<String>,
    image: Option<String>,
    /// Services started for a shell before a step, and their network.
    services: StepHandle,
}

struct Fill {
    root: PathBuf,
    files: Vec<PathBuf>,
    done: tokio::sync::OnceCell<Result<(), String>>,
}

/// Why a ping got no answer: the socket refuses this user, is not there, or the daemon
/// does not answer on it.
fn unanswered(e: DockerError) -> BackendError {
    match io_cause(&e).map(std::io::Error::kind) {
        Some(std::io::ErrorKind::PermissionDenied) => BackendError::Denied,
        Some(std::io::ErrorKind::NotFound) => BackendError::Unreachable { detail: "no socket".into() },
        _ => BackendError::Unreachable { detail: crate::fmt::root_cause(&e) },
    }
}

fn api(e: DockerError) -> BackendError {
    match e {
        DockerError::DockerResponseServerError { status_code, message } => {
            BackendError::Api(format!("{message} (HTTP {status_code})"))
        }
        DockerError::SocketNotFoundError(p) => BackendError::Unreachable { detail: format!("no socket at {p}") },
        DockerError::HyperResponseError { .. }
        | DockerError::HyperLegacyError { .. }
        | DockerError::IOError { .. }
        | DockerError::RequestTimeoutError => BackendError::Unreachable { detail: crate::fmt::root_cause(&e) },
        other => BackendError::Api(other.to_string()),
    }
}

/// The system error under a failed request, if there is one: bollard and hyper wrap it in
/// messages ("client error (Connect)") that hide whether the socket is missing or refuses.
fn io_cause(e: &DockerError) -> Option<&std::io::Error> {
    // Transparent: its `source()` is the I/O error's own source, not the I/O error.
    if let DockerError::IOError { err } = e {
        return Some(err);
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// 404 and 409 ("already gone", "removal in progress") are success for cleanup calls.
fn gone_is_ok(r: Result<(), DockerError>) -> Result<(), BackendError> {
    match r {
        Ok(()) => Ok(()),
        Err(DockerError::DockerResponseServerError { status_code: 404 | 409 | 304, .. }) => Ok(()),
        Err(e) => Err(api(e)),
    }
}

fn label_filter(key: &str, value: Option<&str>) -> HashMap<String, Vec<String>> {
    let f = match value {
        Some(v) => format!("{key}={v}"),
        None => key.to_string(),
    };
    HashMap::from([("label".to_string(), vec![f])])
}

pub fn volume_name(run_id: &str) -> String {
    format!("orch-{run_id}-workspace")
}

/// This machine's name, for the owner labels.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn pid_alive(pid: &str) -> bool {
    !pid.is_empty() && Path::new("/proc").join(pid).exists()
}

/// What `orch gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub runs: Vec<String>,
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

impl DockerBackend {
    /// Connects to the local daemon (`DOCKER_HOST` or the default socket) and checks it
    /// answers.
    pub async fn connect() -> Result<Self, BackendError> {
        let docker = Docker::connect_with_local_defaults().map_err(api)?;
        docker.ping().await.map_err(unanswered)?;
        let docker = docker.negotiate_version().await.map_err(api)?;
        Ok(DockerBackend {
            docker,
            pid: std::process::id().to_string(),
            host: hostname(),
            fills: std::sync::Mutex::new(HashMap::new()),
            leases: std::sync::Mutex::new(HashMap::new()),
            lanes: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Whether the daemon answers now.
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.docker.ping().await.map(|_| ()).map_err(unanswered)
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Removes a network, waiting for a container on it that is being removed (by another
    /// cleanup of the same run, `orch gc` or a starting `orch ci`: Docker answers 409 to the
    /// second removal of a container at once, and 403 "active endpoints" to the network
    /// until the first one is done).
    async fn remove_network(&self, id: &str) -> Result<(), BackendError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.docker.remove_network(id).await {
                Err(DockerError::DockerResponseServerError { status_code: 403, message })
                    if message.contains("active endpoints") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => return gone_is_ok(r),
            }
        }
    }

    fn labels(&self, run_id: &str, step: Option<&str>) -> HashMap<String, String> {
        let mut l = HashMap::from([
            (LABEL_RUN.to_string(), run_id.to_string()),
            (LABEL_PID.to_string(), self.pid.clone()),
            (LABEL_HOST.to_string(), self.host.clone()),
        ]);
        if let Some(s) = step {
            l.insert(LABEL_STEP.to_string(), s.to_string());
        }
        l
    }

    /// Whether an image exists locally.
    pub async fn has_image(&self, image: &str) -> Result<bool, BackendError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => Err(api(e)),
        }
    }

    /// Removes what orch runs left behind. With `only_stale`, runs whose orch process is
    /// still alive on this host are kept.
    pub async fn gc(&self, only_stale: bool) -> Result<GcReport, BackendError> {
        // A run is live when its orch process is: on this host, when that pid exists; on
        // another host sharing this daemon, always (only `--all` removes those).
        self.sweep(|_, labels| {
            only_stale
                && match labels.get(LABEL_HOST) {
                    Some(h) if *h != self.host => true,
                    _ => labels.get(LABEL_PID).is_some_and(|p| pid_alive(p)),
                }
        })
        .await
    }

    /// Removes every run's objects unless `keep(run, labels)` holds for one of them.
    pub async fn sweep(&self, keep: impl Fn(&str, &HashMap<String, String>) -> bool) -> Result<GcReport, BackendError> {
        let mut report = GcReport::default();
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filter(LABEL_RUN, None)),
                ..Default::default()
            }))
            .await
            .map_err(api)?;
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: Some(label_filter(LABEL_RUN, None)) }))
            .await
            .map_err(api)?;
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions { filters: Some(label_filter(LABEL_RUN, None)) }))
            .await
            .map_err(api)?
            .volumes
            .unwrap_or_default();
        // Images too: an `orch ci --shell` killed while its shell was open leaves the copy
        // of the step's container it started from.
        let images = self
            .docker
            .list_images(Some(bollard::query_parameters::ListImagesOptions {
                filters: Some(label_filter(LABEL_RUN, None)),
                ..Default::default()
            }))
            .await
            .map_err(api)?;
        let image_runs: Vec<(String, String)> =
            images.iter().map(|i| (i.id.clone(), i.labels.get(LABEL_RUN).cloned().unwrap_or_default())).collect();
        let labelled = containers
            .into_iter()
            .map(|c| c.labels.unwrap_or_default())
            .chain(networks.into_iter().map(|n| n.labels.unwrap_or_default()))
            .chain(volumes.into_iter().map(|v| v.labels))
            .chain(images.into_iter().map(|i| i.labels));
        let mut dead_runs = std::collections::BTreeSet::new();
        let mut live_runs = std::collections::HashSet::new();
        for labels in labelled {
            let run = labels.get(LABEL_RUN).cloned().unwrap_or_default();
            if keep(&run, &labels) {
                live_runs.insert(run);
            } else {
                dead_runs.insert(run);
            }
        }
        for run in dead_runs.difference(&live_runs.iter().cloned().collect()) {
            let (c, n, v) = self.destroy_counted(run).await?;
            report.containers += c;
            report.networks += n;
            report.volumes += v;
            report.runs.push(run.clone());
            for (image, _) in image_runs.iter().filter(|(_, r)| r == run) {
                let options = bollard::query_parameters::RemoveImageOptions { force: true, ..Default::default() };
                match self.docker.remove_image(image, Some(options), None).await {
                    Ok(_) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
                    Err(e) => return Err(api(e)),
                }
            }
        }
        Ok(report)
    }

    async fn destroy_counted(&self, run_id: &str) -> Result<(usize, usize, usize), BackendError> {
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filter(LABEL_RUN, Some(run_id))),
                ..Default::default()
            }))
            .await
            .map_err(api)?;
        for c in &containers {
            if let Some(id) = &c.id {
                gone_is_ok(
                    self.docker
                        .remove_container(
                            id,
                            Some(RemoveContainerOptions { force: true, v: true, ..Default::default() }),
                        )
                        .await,
                )?;
            }
        }
        // Networks and volumes go at once: each removal is a round trip of the daemon's.
        let networks = async {
            let networks = self
                .docker
                .list_networks(Some(ListNetworksOptions { filters: Some(label_filter(LABEL_RUN, Some(run_id))) }))
                .await
                .map_err(api)?;
            let ids = networks.iter().filter_map(|n| n.id.as_deref());
            futures_util::future::try_join_all(ids.map(|id| self.remove_network(id))).await?;
            Ok::<_, BackendError>(networks.len())
        };
        let volumes = async {
            let volumes = self
                .docker
                .list_volumes(Some(ListVolumesOptions { filters: Some(label_filter(LABEL_RUN, Some(run_id))) }))
                .await
                .map_err(api)?
                .volumes
                .unwrap_or_default();
            // The workspace volume by name too: a volume created without labels (by a
            // container create that raced the cleanup) must not survive it. "In use" is a
            // failure here.
            let mut names: Vec<String> = volumes.iter().map(|v| v.name.clone()).collect();
            if !names.contains(&volume_name(run_id)) {
                names.push(volume_name(run_id));
            }
            for name in &names {
                match self.docker.remove_volume(name, Some(RemoveVolumeOptions { force: true })).await {
                    Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
                    Err(e) => return Err(api(e)),
                }
            }
            Ok(volumes.len())
        };
        let (networks, volumes) = tokio::join!(networks, volumes);
        let (networks, volumes) = (networks?, volumes?);
        Ok((containers.len(), networks, volumes))
    }

    fn workspace_mount(&self, run: &str, ws: &Workspace) -> Mount {
        match ws {
            Workspace::Bind(dir) => Mount {
                target: Some(WORKSPACE.to_string()),
                source: Some(dir.display().to_string()),
                typ: Some(MountType::BIND),
                ..Default::default()
            },
            _ => Mount {
                target: Some(WORKSPACE.to_string()),
                source: Some(volume_name(run)),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            },
        }
    }

    /// Streams the files into the volume through a created (never started) container.
    /// Streams the work tree's files into `container`'s workspace (a created, not yet
    /// started step container: no helper container is needed).
    async fn upload_files(&self, container: &str, root: &Path, files: &[PathBuf]) -> Result<(), BackendError> {
        // Every file is read beneath the tree (see `tree::write`).
        let files = files.to_vec();
        let (stream, writer) = crate::tree::stream(root.to_path_buf(), move |_| Ok(files));
        let upload = self
            .docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptions { path: WORKSPACE.to_string(), ..Default::default() }),
                bollard::body_try_stream(stream),
            )
            .await;
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BackendError::Workspace(format!("cannot read the work tree: {e}"))),
            Err(e) => return Err(BackendError::Workspace(format!("copy task failed: {e}"))),
        }
        upload.map_err(|e| BackendError::Workspace(format!("upload failed: {}", api(e))))
    }
}

/// The network of every step without services: one per daemon, kept between runs (as the
/// firewall's chains are). Its containers cannot reach one another (ICC off), so runs are
/// as far apart as on networks of their own, without a network made and removed per run
/// (about 0.4 s of the daemon's each). Its bridge is one of orch's, which the firewall
/// rules match; runs allowed to reach the host get the other one.
pub fn steps_network(block_host: bool) -> &'static str {
    if block_host { "orch-steps" } else { "orch-steps-open" }
}

/// Docker's options for a bridge network named `name` whose Linux bridge is one of orch's
/// (kept from the host by the firewall, or not).
fn bridge_options(name: &str, block_host: bool) -> HashMap<String, String> {
    HashMap::from([("com.docker.network.bridge.name".to_string(), super::firewall::bridge_name(name, block_host))])
}

/// The host settings a step or service container gets from the run's isolation.
fn isolated(iso: &Isolation, mut h: HostConfig) -> HostConfig {
    if iso.privileged {
        h.privileged = Some(true);
    } else {
        h.cap_drop = Some(vec!["ALL".into()]);
        h.cap_add = Some(iso.caps.clone());
    }
    if iso.no_new_privileges {
        h.security_opt = Some(vec!["no-new-privileges:true".into()]);
    }
    if let Some(m) = iso.memory {
        let m = i64::try_from(m).unwrap_or(i64::MAX);
        h.memory = Some(m);
        // Swap counts against the limit too: no escape into swap.
        h.memory_swap = Some(m);
    }
    if let Some(c) = iso.cpus {
        h.nano_cpus = Some((c * 1e9) as i64);
    }
    h.pids_limit = iso.pids;
    if iso.docker_socket {
        let socket = docker_socket_path();
        let mut binds = h.binds.take().unwrap_or_default();
        binds.push(format!("{socket}:/var/run/docker.sock"));
        h.binds = Some(binds);
    }
    h
}

/// Whether the daemon runs on this machine (reached through a Unix socket), so that paths
/// it names are paths here.
fn daemon_is_local() -> bool {
    std::env::var("DOCKER_HOST").map_or(true, |h| h.starts_with("unix://"))
}

/// The directory of a volume at `mountpoint` when this process can write it and it is the
/// daemon's (the daemon is on this machine: reached through a Unix socket).
fn local_volume_dir(mountpoint: &str) -> Option<Root> {
    if !daemon_is_local() || mountpoint.is_empty() {
        return None;
    }
    let dir = Root::open(mountpoint).ok()?;
    rustix::fs::access(mountpoint, rustix::fs::Access::WRITE_OK).ok()?;
    Some(dir)
}

/// Whether an overlay can join `lower` (the base) and `upper` (a volume's directory): the
/// kernel has overlayfs, both sit on file systems known to work with it, and the paths
/// can be written in mount options.
fn overlay_fits(lower: &Path, upper: &Path) -> bool {
    static KERNEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let kernel = *KERNEL.get_or_init(|| {
        std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.lines().any(|l| l.ends_with("\toverlay")))
    });
    // ext4, xfs, btrfs, tmpfs, zfs; overlay too as a lower layer.
    const UPPER: [i64; 5] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x2FC1_2FC1];
    // `f_type` is a C long here and an unsigned int on some architectures.
    #[allow(clippy::unnecessary_cast)]
    let fs = |p: &Path| rustix::fs::statfs(p).map(|s| s.f_type as i64).unwrap_or(0);
    let plain = |p: &Path| p.to_str().is_some_and(|s| !s.contains([',', ':', '\n']));
    let lower_fs = fs(lower);
    kernel
        && (UPPER.contains(&lower_fs) || lower_fs == 0x794C_7630)
        && UPPER.contains(&fs(upper))
        && plain(lower)
        && plain(upper)
}

/// Mounts an overlay with `options` on a directory of `dir` and unmounts it again.
fn try_overlay(dir: &Root, options: &str) -> std::io::Result<()> {
    dir.create_dir_all("probe")?;
    let target = dir.path().join("probe");
    let data = std::ffi::CString::new(options).map_err(std::io::Error::other)?;
    let mounted =
        rustix::mount::mount("overlay", &target, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str());
    if mounted.is_ok() {
        // Still mounted, the probe is left alone (removing it would write through the overlay).
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH)?;
    }
    dir.remove_all("probe")?;
    Ok(mounted?)
}

/// The daemon's socket on this host (`DOCKER_HOST=unix://...`, else the default).
fn docker_socket_path() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string())
}

fn create_error(e: DockerError, image: &str) -> BackendError {
    match &e {
        DockerError::DockerResponseServerError { status_code: 404, message } if message.contains("image") => {
            BackendError::ImageMissing { image: image.to_string() }
        }
        _ => api(e),
    }
}

impl DockerBackend {
    /// Creates a volume of the run (local driver, with `options` if given).
    async fn create_volume(
        &self,
        run_id: &str,
        name: String,
        options: Option<HashMap<String, String>>,
    ) -> Result<bollard::models::Volume, BackendError> {
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name),
                labels: Some(self.labels(run_id, None)),
                driver_opts: options,
                ..Default::default()
            })
            .await
            .map_err(api)
    }

    /// Makes the run's workspace a copy-on-write layer over the tree's base (see
    /// [`super::base`]): the base is brought in line (only what changed is copied), a
    /// volume of the run holds the layer's writes, and the workspace volume is the
    /// overlay of the two, which the daemon mounts. False (and nothing made that the run's
    /// cleanup would not remove) where this cannot be done: the caller copies instead.
    async fn layered(&self, run_id: &str, root: &Path, files: &[PathBuf], base: &Path) -> Result<bool, BackendError> {
        if !daemon_is_local() || !rustix::process::geteuid().is_root() {
            return Ok(false);
        }
        let (r, f, b) = (root.to_path_buf(), files.to_vec(), base.to_path_buf());
        let Ok(Ok(Some(lease))) = tokio::task::spawn_blocking(move || super::base::lease(&r, &f, &b)).await else {
            return Ok(false);
        };
        let layer = self.create_volume(run_id, format!("orch-{run_id}-layer"), None).await?;
        let Some(dir) = local_volume_dir(&layer.mountpoint) else { return Ok(false) };
        let upper = Path::new(&layer.mountpoint);
        if !overlay_fits(&lease.tree, upper)
            || dir.create_dir_all("upper").is_err()
            || dir.create_dir_all("work").is_err()
        {
            return Ok(false);
        }
        let mount_options = format!(
            "lowerdir={},upperdir={}/upper,workdir={}/work",
            lease.tree.display(),
            upper.display(),
            upper.display()
        );
        // The daemon mounts the overlay only when a step starts: the same mount, tried here
        // first, turns a kernel that refuses it into a plain copy instead of a failed step.
        if try_overlay(&dir, &mount_options).is_err() {
            return Ok(false);
        }
        let options = HashMap::from([
            ("type".to_string(), "overlay".to_string()),
            ("device".to_string(), "overlay".to_string()),
            ("o".to_string(), mount_options),
        ]);
        self.create_volume(run_id, volume_name(run_id), Some(options)).await?;
        if let Ok(mut l) = self.leases.lock() {
            l.insert(run_id.to_string(), lease);
        }
        Ok(true)
    }

    /// Makes the steps' network unless it is there; one that is there but not orch's (made
    /// by hand, without the firewall's bridge name or with ICC on) is an error, not used.
    async fn ensure_steps_network(&self, block_host: bool) -> Result<(), BackendError> {
        let name = steps_network(block_host);
        let options = HashMap::from([
            ("com.docker.network.bridge.name".to_string(), super::firewall::bridge_name(name, block_host)),
            ("com.docker.network.bridge.enable_icc".to_string(), "false".to_string()),
        ]);
        for _ in 0..2 {
            match self.docker.inspect_network(name, None::<InspectNetworkOptions>).await {
                Ok(n) => {
                    let have = n.options.unwrap_or_default();
                    if options.iter().any(|(k, v)| have.get(k) != Some(v)) {
                        return Err(BackendError::Api(format!(
                            "the network `{name}` is not the one orch makes (its bridge name or its \
                             inter-container setting differ): remove it (`docker network rm {name}`) \
                             and orch makes it again"
                        )));
                    }
                    return Ok(());
                }
                Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(api(e)),
            }
            let created = self
                .docker
                .create_network(NetworkCreateRequest {
                    name: name.to_string(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(LABEL_SHARED.to_string(), "steps".to_string())])),
                    options: Some(options.clone()),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => return Ok(()),
                // Made at the same moment by another orch: look again.
                Err(DockerError::DockerResponseServerError { status_code: 409, .. }) => {}
                Err(e) => return Err(api(e)),
            }
        }
        Err(BackendError::Api(format!("the network `{name}` could not be made")))
    }

    /// Creates the step's private network, starts its services on it and waits until each
    /// is ready. On error, what was started is removed before returning.
    async fn start_services(&self, step: &StepSpec, handle: &mut StepHandle) -> Result<(), BackendError> {
        let net = format!("orch-{}-{}-{}", step.run_id, crate::plan::slug(&step.step), step.attempt);
        self.docker
            .create_network(NetworkCreateRequest {
                name: net.clone(),
                driver: Some("bridge".into()),
                labels: Some(self.labels(&step.run_id, Some(&step.step))),
                options: Some(bridge_options(&net, step.isolation.block_host)),
                ..Default::default()
            })
            .await
            .map_err(api)?;
        handle.network = Some(net.clone());
        for svc in &step.services {
            let name = format!("orch-{}-{}-{}-{}", step.run_id, crate::plan::slug(&step.step), step.attempt, svc.name);
            let body = ContainerCreateBody {
                image: Some(svc.image.clone()),
                cmd: svc.command.clone(),
                env: Some(svc.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                labels: Some(self.labels(&step.run_id, Some(&step.step))),
                host_config: Some(isolated(
                    &Isolation { docker_socket: false, ..step.isolation.clone() },
                    HostConfig { network_mode: Some(net.clone()), init: Some(true), ..Default::default() },
                )),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        net.clone(),
                        EndpointSettings { aliases: Some(vec![svc.name.clone()]), ..Default::default() },
                    )])),
                }),
                ..Default::default()
            };
            let created = self
                .docker
                .create_container(Some(CreateContainerOptions { name: Some(name), ..Default::default() }), body)
                .await
                .map_err(|e| create_error(e, &svc.image))?;
            handle.services.push(created.id.clone());
            self.docker.start_container(&created.id, None::<StartContainerOptions>).await.map_err(|e| {
                BackendError::ServiceNotReady {
                    service: svc.name.clone(),
                    reason: format!("could not start: {e}"),
                    logs: String::new(),
                }
            })?;
        }
        for (svc, id) in step.services.iter().zip(handle.services.clone()) {
            tokio::select! {
                r = self.wait_ready(svc, &id, &net) => r?,
                _ = step.cancel.cancelled() => return Err(BackendError::Cancelled),
            }
        }
        Ok(())
    }

    async fn wait_ready(&self, svc: &ServiceSpec, id: &str, net: &str) -> Result<(), BackendError> {
        let timeout = svc.ready.as_ref().map_or(crate::pipeline::DEFAULT_READY_TIMEOUT, |r| r.timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let state = self.docker.inspect_container(id, None).await.map_err(api)?;
            let running = state.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            if !running {
                let code = state.state.and_then(|s| s.exit_code).unwrap_or(-1);
                return Err(BackendError::ServiceNotReady {
                    service: svc.name.clone(),
                    reason: format!("exited with code {code} before it was ready"),
                    logs: self.tail_logs(id, 20).await,
                });
            }
            let ready = match &svc.ready {
                None => true,
                Some(r) => {
                    let mut ok = true;
                    if let Some(cmd) = &r.command {
                        ok &= self.exec_ok(id, cmd).await;
                    }
                    if let (true, Some(port)) = (ok, r.tcp) {
                        let ip = state
                            .network_settings
                            .and_then(|n| n.networks)
                            .and_then(|n| n.get(net).and_then(|e| e.ip_address.clone()))
                            .unwrap_or_default();
                        ok &= matches!(
                            tokio::time::timeout(
                                Duration::from_secs(1),
                                tokio::net::TcpStream::connect((ip.as_str(), port))
                            )
                            .await,
                            Ok(Ok(_))
                        );
                    }
                    ok
                }
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::ServiceNotReady {
                    service: svc.name.clone(),
                    reason: format!("was not ready after {}", crate::pipeline::format_duration(timeout)),
                    logs: self.tail_logs(id, 20).await,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `sh -c cmd` in a running container; true when it exits 0.
    async fn exec_ok(&self, id: &str, cmd: &str) -> bool {
        let Ok(exec) = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
        else {
            return false;
        };
        if let Ok(StartExecResults::Attached { mut output, .. }) = self.docker.start_exec(&exec.id, None).await {
            while output.next().await.is_some() {}
        }
        matches!(self.docker.inspect_exec(&exec.id).await, Ok(i) if i.exit_code == Some(0))
    }

    async fn tail_logs(&self, id: &str, lines: usize) -> String {
        let mut stream = self
            .docker
            .logs(id, Some(LogsOptions { stdout: true, stderr: true, tail: lines.to_string(), ..Default::default() }));
        let mut out = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            out.extend_from_slice(chunk.as_ref());
        }
        String::from_utf8_lossy(&out).trim_end().to_string()
    }

    /// Unpacks cached tars into a created (not yet started) container. Each tar is uploaded
    /// into the deepest existing ancestor of its path, so that directories the image already
    /// has keep their owner and mode; only missing ones are created.
    async fn restore(&self, id: &str, restores: &[Restore]) -> Result<(), BackendError> {
        for r in restores {
            let parent = Path::new(&r.path).parent().unwrap_or(Path::new("/")).to_path_buf();
            let mut base = Some(parent.as_path());
            loop {
                let Some(at) = base else {
                    return Err(BackendError::Cache(format!("restoring {}: no directory to unpack into", r.path)));
                };
                match self.upload_restore(id, &r.tar, at, &parent).await {
                    Ok(()) => break,
                    // The directory is not in the image: try one level up, creating it.
                    Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => base = at.parent(),
                    Err(e) => return Err(BackendError::Cache(format!("restoring {}: {}", r.path, api(e)))),
                }
            }
        }
        Ok(())
    }

    /// Uploads `tar` (entries relative to `parent`) into `at`, an ancestor of `parent`,
    /// with directory entries for the levels between them.
    async fn upload_restore(&self, id: &str, tar_file: &Path, at: &Path, parent: &Path) -> Result<(), DockerError> {
        let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
        let tar_file = tar_file.to_path_buf();
        let missing = parent.strip_prefix(at).map(Path::to_path_buf).unwrap_or_default();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut b = tar::Builder::new(crate::tree::ChannelWriter::new(tx));
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut dir = PathBuf::new();
            for c in missing.components() {
                dir.push(c);
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(now);
                h.set_size(0);
                b.append_data(&mut h, &dir, std::io::empty())?;
            }
            let mut src = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(&tar_file)?));
            for entry in src.entries()? {
                let mut entry = entry?;
                let mut h = entry.header().clone();
                let name = missing.join(entry.path()?);
                let kind = h.entry_type();
                match entry.link_name()? {
                    // Hard link targets are archive paths: they move with the entries.
                    Some(link) if kind.is_hard_link() => {
                        let link = missing.join(link);
                        b.append_link(&mut h, &name, link)?;
                    }
                    Some(link) => {
                        let link = link.into_owned();
                        b.append_link(&mut h, &name, link)?;
                    }
                    None => b.append_data(&mut h, &name, &mut entry)?,
                }
            }
            let mut w = b.into_inner()?;
            w.flush()
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let up = self
            .docker
            .upload_to_container(
                id,
                Some(UploadToContainerOptions { path: at.display().to_string(), ..Default::default() }),
                bollard::body_try_stream(stream),
            )
            .await;
        // If the upload was refused the writer sees a closed channel: its error is moot.
        let written = writer.await;
        up?;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DockerError::IOError { err: e }),
            Err(e) => Err(DockerError::IOError { err: std::io::Error::other(e.to_string()) }),
        }
    }

    /// Starts a lane for `run_id` on `network` (see [`Lane`]), with `image`'s shell
    /// waiting on a stdin nobody writes to, and makes it free for the run's steps.
    async fn start_lane(&self, run_id: &str, image: &str, network: &str) -> Result<(), BackendError> {
        let n = self.lanes.lock().map(|l| l.get(run_id).map_or(0, Vec::len)).unwrap_or(0);
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["read _".into()]),
            open_stdin: Some(true),
            labels: Some(self.labels(run_id, None)),
            host_config: Some(HostConfig {
                log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
                network_mode: Some(network.to_string()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                pids_limit: Some(4),
                memory: Some(32 << 20),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("orch-{run_id}-lane-{}", n + 1);
        let options = CreateContainerOptions { name: Some(name), ..Default::default() };
        let id = self.docker.create_container(Some(options), body).await.map_err(|e| create_error(e, image))?.id;
        if let Err(e) = self.docker.start_container(&id, None::<StartContainerOptions>).await {
            let _ = self
                .docker
                .remove_container(&id, Some(RemoveContainerOptions { force: true, ..Default::default() }))
                .await;
            return Err(api(e));
        }
        if let Ok(mut lanes) = self.lanes.lock() {
            lanes.entry(run_id.to_string()).or_default().push(Lane { id, network: network.into(), user: None });
        }
        Ok(())
    }

    /// A free lane of `run_id` on `network`, now taken: (its id, the taker's number).
    fn take_lane(&self, run_id: &str, network: &str) -> Option<(String, u64)> {
        let mut lanes = self.lanes.lock().ok()?;
        let lane = lanes.get_mut(run_id)?.iter_mut().find(|l| l.user.is_none() && l.network == network)?;
        let user = LANE_USERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lane.user = Some(user);
        Some((lane.id.clone(), user))
    }

    /// Frees the lane `taken` holds (only if it still does: freeing twice is harmless).
    fn free_lane(&self, taken: &(String, u64)) {
        if let Ok(mut lanes) = self.lanes.lock() {
            for lane in lanes.values_mut().flatten() {
                if lane.id == taken.0 && lane.user == Some(taken.1) {
                    lane.user = None;
                }
            }
        }
    }

    /// Forgets a lane that cannot be joined (its container is gone).
    fn drop_lane(&self, id: &str) {
        if let Ok(mut lanes) = self.lanes.lock() {
            for run in lanes.values_mut() {
                run.retain(|l| l.id != id);
            }
        }
    }

    /// A container of the step: `image` running `script` in `/bin/sh -c`, with the step's
    /// environment, working directory, workspace and isolation, on `network`, its output
    /// attached (the daemon logs nothing).
    fn container_body(&self, step: &StepSpec, image: String, script: String, network: String) -> ContainerCreateBody {
        let workspace = match &step.bind {
            Some(dir) => Workspace::Bind(dir.clone()),
            None => Workspace::Empty,
        };
        ContainerCreateBody {
            image: Some(image),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![script]),
            env: Some(step.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(step.workdir.clone()),
            labels: Some(self.labels(&step.run_id, Some(&step.step))),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(isolated(
                &step.isolation,
                HostConfig {
                    mounts: Some(vec![self.workspace_mount(&step.run_id, &workspace)]),
                    log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
                    // A tiny init as PID 1 forwards SIGTERM to the shell and reaps zombies, so
                    // a graceful stop is graceful.
                    init: Some(true),
                    network_mode: Some(network),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    async fn start_inner(
        &self,
        step: &StepSpec,
        logs: mpsc::Sender<LogChunk>,
        handle: &mut StepHandle,
    ) -> Result<(), BackendError> {
        if !step.services.is_empty() {
            self.start_services(step, handle).await?;
        }
        let name = format!("orch-{}-{}-{}", step.run_id, crate::plan::slug(&step.step), step.attempt);
        let steps_net = steps_network(step.isolation.block_host);
        if handle.network.is_none() {
            handle.lane = self.take_lane(&step.run_id, steps_net);
        }
        // The services' network, else a lane of the steps' network, else that.
        let network = match (&handle.network, &handle.lane) {
            (Some(net), _) => net.clone(),
            (None, Some((lane, _))) => format!("container:{lane}"),
            (None, None) => steps_net.into(),
        };
        let mut body = self.container_body(step, step.image.clone(), step.script.clone(), network);
        let options = CreateContainerOptions { name: Some(name), ..Default::default() };
        let mut created = self.docker.create_container(Some(options.clone()), body.clone()).await;
        // A lane whose container is gone (removed by hand, the daemon restarted): the step
        // goes on the steps' network itself.
        if let (Err(DockerError::DockerResponseServerError { message, .. }), Some((lane, _))) = (&created, &handle.lane)
            && message.contains(lane.as_str())
        {
            self.drop_lane(lane);
            handle.lane = None;
            if let Some(h) = body.host_config.as_mut() {
                h.network_mode = Some(steps_net.into());
            }
            created = self.docker.create_container(Some(options.clone()), body.clone()).await;
        }
        let created = match created {
            // The steps' network was removed since (`docker network prune`): made again.
            Err(DockerError::DockerResponseServerError { status_code: 404, message })
                if handle.network.is_none() && message.contains("network") =>
            {
                self.ensure_steps_network(step.isolation.block_host).await?;
                self.docker.create_container(Some(options), body).await
            }
            r => r,
        }
        .map_err(|e| create_error(e, &step.image))?;
        handle.id = created.id.clone();
        let id = created.id;
        // The first step container of the run fills the shared workspace before it starts.
        self.fill_workspace(&step.run_id, &id).await?;
        self.restore(&id, &step.restore).await?;
        let attached = self
            .docker
            .attach_container(
                &id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdout: true,
                    stderr: true,
                    logs: false,
                    ..Default::default()
                }),
            )
            .await
            .map_err(api)?;
        let mut output = attached.output;
        handle.pump = Some(tokio::spawn(async move {
            let mut receiver_gone = false;
            while let Some(item) = output.next().await {
                let (stream, data) = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => (Stream::Stdout, message),
                    Ok(LogOutput::StdErr { message }) => (Stream::Stderr, message),
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(_) => break,
                };
                // Keep draining when nobody listens, so the container never blocks on output.
                if !receiver_gone && logs.send(LogChunk { stream, data }).await.is_err() {
                    receiver_gone = true;
                }
            }
        }));
        if let Err(e) = self.docker.start_container(&id, None::<StartContainerOptions>).await {
            let msg = e.to_string();
            if msg.contains("/bin/sh") && (msg.contains("no such file") || msg.contains("not found")) {
                return Err(BackendError::NoShell { image: step.image.clone() });
            }
            return Err(api(e));
        }
        Ok(())
    }

    /// The shell of [`Backend::shell`]; what it makes is recorded in `made` for the caller
    /// to remove, whatever happens.
    async fn shell_inner(
        &self,
        step: &StepSpec,
        after: Option<&StepHandle>,
        io: ShellIo,
        made: &mut ShellMade,
    ) -> Result<i64, BackendError> {
        let steps_net = steps_network(step.isolation.block_host);
        let (image, network) = match after {
            Some(h) if !h.id.is_empty() => {
                // What the step left outside the workspace (installed packages, files in
                // /tmp) is in its container's file system: the shell starts from a copy.
                let options = bollard::query_parameters::CommitContainerOptions {
                    container: Some(h.id.clone()),
                    comment: Some(format!("orch ci --shell: step `{}` of run {}", step.step, step.run_id)),
                    pause: false,
                    ..Default::default()
                };
                let config = bollard::models::ContainerConfig {
                    labels: Some(self.labels(&step.run_id, Some(&step.step))),
                    ..Default::default()
                };
                let committed = self.docker.commit_container(options, config).await.map_err(api)?;
                made.image = Some(committed.id.clone());
                (committed.id, h.network.clone().unwrap_or_else(|| steps_net.to_string()))
            }
            _ => {
                // Before the step: its services as it would get them, started afresh.
                let spec = StepSpec { attempt: 0, ..step.clone() };
                if !spec.services.is_empty() {
                    self.start_services(&spec, &mut made.services).await?;
                }
                (step.image.clone(), made.services.network.clone().unwrap_or_else(|| steps_net.to_string()))
            }
        };
        let shell = "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi".to_string();
        let body = ContainerCreateBody {
            tty: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            ..self.container_body(step, image, shell, network)
        };
        let name = format!("orch-{}-{}-shell", step.run_id, crate::plan::slug(&step.step));
        let options = CreateContainerOptions { name: Some(name), ..Default::default() };
        let id = self.docker.create_container(Some(options), body).await.map_err(|e| create_error(e, &step.image))?.id;
        made.container = Some(id.clone());
        if after.is_none() {
            self.fill_workspace(&step.run_id, &id).await?;
            self.restore(&id, &step.restore).await?;
        }
        let attach = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            logs: false,
            ..Default::default()
        };
        let attached = self.docker.attach_container(&id, Some(attach)).await.map_err(api)?;
        self.docker.start_container(&id, None::<StartContainerOptions>).await.map_err(api)?;
        let resize = async |size: (u16, u16)| {
            let options = bollard::query_parameters::ResizeContainerTTYOptions { w: size.0.into(), h: size.1.into() };
            let _ = self.docker.resize_container_tty(&id, options).await;
        };
        if let Some(size) = io.size {
            resize(size).await;
        }
        let ShellIo { mut input, mut output, mut resized, .. } = io;
        let mut to_container = attached.input;
        let mut from_container = attached.output;
        let mut buf = vec![0u8; 8192];
        let mut input_open = true;
        loop {
            tokio::select! {
                chunk = from_container.next() => match chunk {
                    Some(Ok(out)) => {
                        let _ = output.write_all(&out.into_bytes());
                        let _ = output.flush();
                    }
                    // The stream ends when the shell exits.
                    _ => break,
                },
                n = tokio::io::AsyncReadExt::read(&mut input, &mut buf), if input_open => match n {
                    Ok(0) | Err(_) => {
                        input_open = false;
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_container).await;
                    }
                    Ok(n) => {
                        if tokio::io::AsyncWriteExt::write_all(&mut to_container, &buf[..n]).await.is_err() {
                            input_open = false;
                        }
                    }
                },
                size = async { resized.as_mut()?.recv().await }, if resized.is_some() => match size {
                    Some(size) => resize(size).await,
                    None => resized = None,
                },
            }
        }
        let mut wait = self.docker.wait_container(&id, Some(WaitContainerOptions { condition: "not-running".into() }));
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(api(e)),
            None => Ok(-1),
        }
    }

    /// The first container of a run fills its workspace (a step's, or a shell's before it).
    async fn fill_workspace(&self, run_id: &str, container: &str) -> Result<(), BackendError> {
        let fill = self.fills.lock().ok().and_then(|f| f.get(run_id).cloned());
        if let Some(fill) = fill {
            let filled = fill
                .done
                .get_or_init(|| async {
                    self.upload_files(container, &fill.root, &fill.files).await.map_err(|e| e.to_string())
                })
                .await;
            if let Err(e) = filled {
                return Err(BackendError::Workspace(e.trim_start_matches("workspace: ").to_string()));
            }
        }
        Ok(())
    }

    async fn cleanup_handle(&self, handle: &StepHandle) -> Result<(), BackendError> {
        if let Some(lane) = &handle.lane {
            self.free_lane(lane);
        }
        let mut result = if handle.id.is_empty() {
            Ok(())
        } else {
            gone_is_ok(
                self.docker
                    .remove_container(
                        &handle.id,
                        Some(RemoveContainerOptions { force: true, v: true, ..Default::default() }),
                    )
                    .await,
            )
        };
        for id in &handle.services {
            let r = gone_is_ok(
                self.docker
                    .remove_container(id, Some(RemoveContainerOptions { force: true, v: true, ..Default::default() }))
                    .await,
            );
            result = result.and(r);
        }
        if let Some(net) = &handle.network {
            result = result.and(self.remove_network(net).await);
        }
        result
    }
}

impl Backend for DockerBackend {
    async fn prepare(&self, run: &RunSpec) -> Result<(), BackendError> {
        // The steps' network (made once per daemon) and a lane on it, and the run's
        // workspace volume, at once. A lane that cannot start is no error: steps go on the
        // network itself.
        let network = async {
            self.ensure_steps_network(run.block_host).await?;
            if let Some(image) = &run.lane_image {
                // A missing image is the first step's own error, reported when it starts.
                let _ = self.start_lane(&run.run_id, image, steps_network(run.block_host)).await;
            }
            Ok::<_, BackendError>(())
        };
        let volume = async {
            let Workspace::Copy { root, files, base } = &run.workspace else {
                if matches!(run.workspace, Workspace::Empty) {
                    self.create_volume(&run.run_id, volume_name(&run.run_id), None).await?;
                }
                return Ok(false);
            };
            if let Some(base) = base
                && self.layered(&run.run_id, root, files, base).await?
            {
                return Ok(true);
            }
            let v = self.create_volume(&run.run_id, volume_name(&run.run_id), None).await?;
            // On the daemon's own machine, where orch may write the volume's directory (as
            // root, or with rootless Docker), the tree is copied straight in: no archive for
            // the daemon to unpack. Anything else (or a copy that fails) takes the upload.
            let Some(dest) = local_volume_dir(&v.mountpoint) else { return Ok(false) };
            let (root, files) = (root.clone(), files.clone());
            let copied = tokio::task::spawn_blocking(move || super::base::copy(&root, &dest, &files)).await;
            Ok(matches!(copied, Ok(Ok(()))))
        };
        let (network, filled) = tokio::join!(network, volume);
        network?;
        let filled = filled?;
        if let Workspace::Copy { root, files, .. } = &run.workspace
            && !filled
        {
            let fill = Fill { root: root.clone(), files: files.clone(), done: tokio::sync::OnceCell::new() };
            if let Ok(mut f) = self.fills.lock() {
                f.insert(run.run_id.clone(), Arc::new(fill));
            }
        }
        Ok(())
    }

    async fn start(&self, step: &StepSpec, logs: mpsc::Sender<LogChunk>) -> Result<StepHandle, BackendError> {
        let mut handle = StepHandle { id: String::new(), services: Vec::new(), network: None, lane: None, pump: None };
        match self.start_inner(step, logs, &mut handle).await {
            Ok(()) => Ok(handle),
            Err(e) => {
                if let Some(p) = handle.pump.take() {
                    p.abort();
                }
                let _ = self.cleanup_handle(&handle).await;
                Err(e)
            }
        }
    }

    async fn wait(&self, handle: &mut StepHandle) -> Result<ExitInfo, BackendError> {
        let mut stream =
            self.docker.wait_container(&handle.id, Some(WaitContainerOptions { condition: "not-running".into() }));
        let lost = |e: BackendError| match e {
            BackendError::Unreachable { detail } => BackendError::DaemonLost { detail },
            other => other,
        };
        let code = match stream.next().await {
            Some(Ok(r)) => r.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(lost(api(e))),
            None => return Err(BackendError::Api("the wait stream ended without an exit status".into())),
        };
        // A daemon that stops kills its containers first and closes its API: an exit by
        // that signal is no verdict on the step. The inspect tells the two apart.
        let inspected = self.docker.inspect_container(&handle.id, None).await;
        let oom_killed = match inspected {
            Ok(i) => i.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(e) => match api(e) {
                BackendError::Unreachable { detail } => return Err(BackendError::DaemonLost { detail }),
                _ => false,
            },
        };
        // The container has stopped: nothing of it is left in its lane.
        if let Some(lane) = handle.lane.take() {
            self.free_lane(&lane);
        }
        if let Some(pump) = handle.pump.take() {
            let _ = pump.await;
        }
        Ok(ExitInfo { code, oom_killed })
    }

    async fn stop(&self, handle: &StepHandle, grace: Duration) -> Result<(), BackendError> {
        if grace.is_zero() {
            gone_is_ok(
                self.docker.kill_container(&handle.id, Some(KillContainerOptions { signal: "KILL".into() })).await,
            )
        } else {
            let t = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
            gone_is_ok(
                self.docker.stop_container(&handle.id, Some(StopContainerOptions { t: Some(t), signal: None })).await,
            )
        }
    }

    async fn remove(&self, handle: &StepHandle) -> Result<(), BackendError> {
        self.cleanup_handle(handle).await
    }

    async fn shell(&self, step: &StepSpec, after: Option<&StepHandle>, io: ShellIo) -> Result<i64, BackendError> {
        let empty = StepHandle { id: String::new(), services: Vec::new(), network: None, lane: None, pump: None };
        let mut made = ShellMade { container: None, image: None, services: empty };
        let result = self.shell_inner(step, after, io, &mut made).await;
        let remove = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        if let Some(id) = &made.container {
            let _ = gone_is_ok(self.docker.remove_container(id, Some(remove)).await);
        }
        if let Some(image) = &made.image {
            let options = bollard::query_parameters::RemoveImageOptions { force: true, ..Default::default() };
            let _ = self.docker.remove_image(image, Some(options), None).await;
        }
        let _ = self.cleanup_handle(&made.services).await;
        result
    }

    async fn destroy(&self, run_id: &str) -> Result<(), BackendError> {
        if let Ok(mut f) = self.fills.lock() {
            f.remove(run_id);
        }
        if let Ok(mut l) = self.lanes.lock() {
            l.remove(run_id);
        }
        let done = self.destroy_counted(run_id).await.map(|_| ());
        // The layer is gone with the volumes: the base is free for a run of a changed tree.
        if let Ok(mut l) = self.leases.lock() {
            l.remove(run_id);
        }
        done
    }

    async fn export(&self, handle: &StepHandle, path: &str, dest: &Path) -> Result<bool, BackendError> {
        use tokio::io::AsyncWriteExt;
        let mut stream = self
            .docker
            .download_from_container(&handle.id, Some(DownloadFromContainerOptions { path: path.to_string() }));
        let mut file = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if file.is_none() {
                        file =
                            Some(tokio::fs::File::create(dest).await.map_err(|e| BackendError::Cache(e.to_string()))?);
                    }
                    if let Some(f) = file.as_mut() {
                        f.write_all(&bytes).await.map_err(|e| BackendError::Cache(e.to_string()))?;
                    }
                }
                Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => return Ok(false),
                Err(e) => return Err(BackendError::Cache(format!("saving {path}: {}", api(e)))),
            }
        }
        match file {
            Some(mut f) => {
                f.flush().await.map_err(|e| BackendError::Cache(e.to_string()))?;
                f.sync_all().await.map_err(|e| BackendError::Cache(e.to_string()))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn collect(
        &self,
        handle: &StepHandle,
        patterns: &[String],
        optional: bool,
        dest: &Path,
    ) -> Result<Collected, BackendError> {
        let matchers: Vec<globset::GlobMatcher> =
            patterns.iter().map(|p| artifact_matcher(p)).collect::<Result<_, _>>().map_err(BackendError::Artifacts)?;
        let mut matched = vec![false; patterns.len()];
        let mut files = Vec::new();
        // One download per distinct directory the patterns start from.
        let mut prefixes: Vec<String> = patterns.iter().map(|p| literal_prefix(p)).collect();
        prefixes.sort();
        prefixes.dedup();
        let prefixes: Vec<String> = prefixes
            .iter()
            .filter(|p| !prefixes.iter().any(|q| q != *p && (q.is_empty() || p.starts_with(&format!("{q}/")))))
            .cloned()
            .collect();
        for prefix in prefixes {
            let container = if prefix.is_empty() { WORKSPACE.to_string() } else { format!("{WORKSPACE}/{prefix}") };
            let tmp = tempfile::NamedTempFile::new().map_err(|e| BackendError::Artifacts(e.to_string()))?;
            if !self.export(handle, &container, tmp.path()).await.map_err(|e| BackendError::Artifacts(e.to_string()))? {
                continue;
            }
            // Docker names the entries after the last component of the path it was given.
            let rebase = Path::new(&prefix).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            let rebase = if prefix.is_empty() { String::new() } else { rebase };
            let into = dest.to_path_buf();
            let matchers = matchers.clone();
            let mut m = matched.clone();
            let ((got, links), m) = tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(tmp.path()).map_err(|e| e.to_string())?;
                // A whole-workspace download starts with the `workspace/` directory itself.
                let strip = if prefix.is_empty() { "workspace" } else { "" };
                let root = Root::open(&into).map_err(|e| e.to_string())?;
                let got = extract_matching(std::io::BufReader::new(f), &rebase, &matchers, &root, &mut m, strip)?;
                Ok::<_, String>((got, m))
            })
            .await
            .map_err(|e| BackendError::Artifacts(e.to_string()))?
            .map_err(BackendError::Artifacts)?;
            matched = m.iter().zip(&matched).map(|(a, b)| *a || *b).collect();
            files.extend(got);
            // A hard link whose other name was not collected: fetched alone, Docker sends
            // it as a regular file.
            for rel in links {
                let one = tempfile::NamedTempFile::new().map_err(|e| BackendError::Artifacts(e.to_string()))?;
                let path = format!("{WORKSPACE}/{rel}");
                if !self.export(handle, &path, one.path()).await.map_err(|e| BackendError::Artifacts(e.to_string()))? {
                    continue;
                }
                let parent = Path::new(&rel).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                let exact = artifact_matcher(&rel).map_err(BackendError::Artifacts)?;
                let dest = dest.to_path_buf();
                let (got, _) = tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(one.path()).map_err(|e| e.to_string())?;
                    let root = Root::open(&dest).map_err(|e| e.to_string())?;
                    extract_matching(std::io::BufReader::new(f), &parent, &[exact], &root, &mut [false], "")
                })
                .await
                .map_err(|e| BackendError::Artifacts(e.to_string()))?
                .map_err(BackendError::Artifacts)?;
                files.extend(got);
            }
        }
        // Each link was judged alone when it was made; together, one can lead another out
        // (`a/s -> ..` makes `a/t -> s/..` leave). The kernel judges the finished tree.
        let root = dest.to_path_buf();
        let leaving = tokio::task::spawn_blocking(move || Root::open(&root)?.links_leaving(MAX_ARTIFACT_FILES))
            .await
            .map_err(|e| BackendError::Artifacts(e.to_string()))?
            .map_err(|e| BackendError::Artifacts(e.to_string()))?;
        if let Some(first) = leaving.first() {
            return Err(BackendError::Artifacts(format!(
                "`{}` is a link that leads outside the workspace: refused",
                first.display()
            )));
        }
        let unmatched: Vec<String> =
            patterns.iter().zip(&matched).filter(|(_, m)| !**m).map(|(p, _)| p.clone()).collect();
        if !unmatched.is_empty() && !optional {
            return Err(BackendError::Artifacts(format!(
                "{} matched nothing in the workspace (mark the artifacts `optional: true` to allow that)",
                unmatched.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Collected { files, unmatched })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root (CI): the overlay a layered workspace asks the daemon for is tried first, and
    /// a refused one leaves nothing mounted or made.
    #[test]
    fn an_overlay_is_tried_and_undone_before_the_daemon_is_asked() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let lower = tempfile::tempdir().unwrap();
        std::fs::write(lower.path().join("a.txt"), "a").unwrap();
        let vol = tempfile::tempdir().unwrap();
        let dir = Root::open(vol.path()).unwrap();
        dir.create_dir_all("upper").unwrap();
        dir.create_dir_all("work").unwrap();
        let up = vol.path().display();
        let good = format!("lowerdir={},upperdir={up}/upper,workdir={up}/work", lower.path().display());
        if overlay_fits(lower.path(), vol.path()) {
            match try_overlay(&dir, &good) {
                // Root without the right to mount (a container): nothing to try here.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return,
                r => r.unwrap(),
            }
            assert!(!vol.path().join("probe").exists(), "the probe is unmounted and removed");
        }
        let bad = format!("lowerdir={}/missing,upperdir={up}/upper,workdir={up}/work", lower.path().display());
        assert!(try_overlay(&dir, &bad).is_err());
        assert!(!vol.path().join("probe").exists(), "a refused mount leaves no probe");
    }

    #[test]
    fn the_system_error_under_a_docker_error_is_found() {
        let e = DockerError::IOError { err: std::io::Error::from(std::io::ErrorKind::PermissionDenied) };
        assert_eq!(io_cause(&e).map(std::io::Error::kind), Some(std::io::ErrorKind::PermissionDenied));
        let e = DockerError::RequestTimeoutError;
        assert!(io_cause(&e).is_none());
    }
}
