//! `wasmbox`, the command line for people. All logic lives in the library crates;
//! this file parses flags and reports.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use wasmbox_engine::{cache::Cache, engine::Prepared};
use wasmbox_image as image;
use wasmbox_spec::Plan;

#[derive(Parser)]
#[command(name = "wasmbox", version, about = "Run WebAssembly as containers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a .wasm here, with the same core the shim uses and no containerd.
    Run {
        /// Grant a host directory: HOST[::GUEST][:ro]
        #[arg(long = "dir", value_name = "HOST[::GUEST]")]
        dirs: Vec<String>,
        /// Set a guest environment variable.
        #[arg(long = "env", short = 'e', value_name = "K=V")]
        env: Vec<String>,
        /// Where compiled code is cached (default: $XDG_CACHE_HOME/wasmbox or ~/.cache/wasmbox).
        #[arg(long, env = "WASMBOX_CACHE_DIR")]
        cache: Option<PathBuf>,
        /// Compile every time; use no cache.
        #[arg(long)]
        no_cache: bool,
        /// A wasmbox annotation, as a container would carry it (for example
        /// wasmbox.io/compiler=winch or wasmbox.io/fuel=1000000; see docs/reference.md).
        #[arg(long = "annotation", short = 'a', value_name = "K=V")]
        annotations: Vec<String>,
        /// FILE.wasm, or FILE.wasm#export to call an exported function of a core module.
        file: String,
        /// Arguments for the guest.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// OCI images.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// The compile cache the shim loads verified code from.
    Cache {
        /// The cache directory (the shim's default under containerd's state).
        #[arg(long, env = "WASMBOX_CACHE_DIR", default_value = "/run/containerd/wasmbox/cache")]
        dir: PathBuf,
        #[command(subcommand)]
        cmd: CacheCmd,
    },
    /// This node's containerd, as Kubernetes will use it.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Entries, least recently used first: size, last use, the wasm's digest.
    Ls,
    /// Removes entries no container is loading (all, or those unused for
    /// --older-than) and the leftovers of killed compiles.
    Prune {
        /// Only entries unused for this long (e.g. 30m, 12h).
        #[arg(long)]
        older_than: Option<String>,
    },
    /// Compiles into the cache, so the next container starts from it: a
    /// .wasm, or every .wasm of an image in containerd (mounted with ctr).
    Warm {
        /// Annotations the workloads will have (wasmbox.io/disabled-wasm-proposals).
        #[arg(long = "annotation", value_name = "K=V")]
        annotations: Vec<String>,
        /// containerd namespace of the image (ctr's -n).
        #[arg(long, default_value = "k8s.io")]
        namespace: String,
        /// A .wasm file, or an image reference.
        target: String,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Says, item by item, whether this node can run wasmbox pods: the
    /// containerd version, the handler in its configuration, the shim and
    /// runc on its PATH, CNI, the cgroup driver. Exits 1 if any item fails.
    Check {
        /// The containerd binary.
        #[arg(long, default_value = "containerd")]
        containerd: PathBuf,
        /// containerd's configuration file (containerd's default if not given).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The PATH containerd runs with (default: the running containerd's).
        #[arg(long)]
        path: Option<String>,
    },
    /// Copies the shim beside containerd and registers the `wasmbox`
    /// runtime in the configuration layout it finds (containerd 1.6/1.7
    /// and 2.x, a drop-in where the configuration imports a directory,
    /// k3s, RKE2, MicroK8s, k0s), keeping everything else in the file, and
    /// records what it did for `uninstall`. Running it again changes
    /// nothing. Run as root on the node.
    Install {
        /// containerd's configuration (default: k3s's, RKE2's, MicroK8s's or
        /// k0s's where one is installed, else /etc/containerd/config.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the shim goes (default: the directory of the containerd on
        /// PATH; /usr/local/bin for k3s, RKE2, MicroK8s and k0s).
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// The shim to install (default: containerd-shim-wasmbox-v1 beside
        /// this wasmbox).
        #[arg(long, value_name = "FILE")]
        shim: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Reverts what `install` recorded: the configuration as it was (byte
    /// for byte, unless it changed since: then only the runtime is taken
    /// out), files it created removed, the shim removed or the one before
    /// put back. Refuses while processes run from the shim (--force).
    Uninstall {
        /// The configuration installed into (default: the only one recorded).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Remove the shim even while processes run from it (containerd
        /// then cannot take their containers back when it restarts).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// What `node install` and `node uninstall` share.
#[derive(clap::Args)]
struct NodeArgs {
    /// The containerd binary: its version decides the form of a new
    /// configuration, and `ctr` beside it asks whether containerd answers.
    #[arg(long, default_value = "containerd")]
    containerd: PathBuf,
    /// The record of what install did.
    #[arg(long, value_name = "FILE", default_value = wasmbox_node::state::DEFAULT_STATE, env = "WASMBOX_INSTALL_STATE")]
    state: PathBuf,
    /// Restart containerd afterwards (`systemctl restart` of the unit that
    /// runs it) and wait until it answers on its socket.
    #[arg(long)]
    restart: bool,
    /// Restart containerd with this command (run by `sh -c`; it wins over
    /// --restart) and wait until it answers on its socket. With --host it
    /// runs in the host's cgroups and is told the pod's containerd in
    /// WASMBOX_CONTAINERD_PID, _CONFIG, _SOCKET and _BIN.
    #[arg(long, value_name = "CMD", env = "WASMBOX_RESTART_CMD")]
    restart_cmd: Option<String>,
    /// Run from a privileged pod with hostPID (the installer DaemonSet,
    /// deploy/installer.yaml): enter the host's mount namespace first, and
    /// take the configuration, containerd and the shim's directory from
    /// the containerd that runs this pod (the flags still win).
    #[arg(long)]
    host: bool,
    /// Label this Node (wasmbox.io/runtime=wasmbox and
    /// wasmbox.io/installed=VERSION) after an install, take the labels off
    /// before an uninstall; as the pod's service account.
    #[arg(long, value_name = "NODE", env = "WASMBOX_NODE_NAME")]
    label_node: Option<String>,
    /// Stay, asleep, until SIGTERM once done (a DaemonSet's pod).
    #[arg(long)]
    stay: bool,
    /// How long to wait for containerd to answer after the restart.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    restart_timeout: u64,
    /// Print the change (a unified diff per file) and the files it would
    /// write; change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl NodeArgs {
    fn restart(&self) -> Option<wasmbox_node::Restart> {
        match (self.restart_cmd.as_ref().filter(|c| !c.trim().is_empty()), self.restart) {
            (Some(cmd), _) => Some(wasmbox_node::Restart::Command(cmd.clone())),
            (None, true) => Some(wasmbox_node::Restart::Systemd),
            (None, false) => None,
        }
    }
}

/// How `image push` and `image pull` reach a registry.
#[derive(clap::Args)]
struct AccessArgs {
    /// Plain HTTP instead of HTTPS (a registry on this node or in a test).
    #[arg(long)]
    plain_http: bool,
    /// A PEM file of CAs to trust besides the system's (a private
    /// registry's).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// USER:PASSWORD, or USER with the password on standard input. Without
    /// it, the entry `docker login`/`nerdctl login` wrote for the registry
    /// in $DOCKER_CONFIG/config.json (else ~/.docker/config.json) is used.
    #[arg(long, short = 'u', value_name = "USER[:PASSWORD]")]
    user: Option<String>,
}

impl AccessArgs {
    fn access(self) -> Result<wasmbox_image::registry::Access> {
        let user = match self.user {
            Some(u) => Some(match u.split_once(':') {
                Some((user, password)) => (user.to_string(), password.to_string()),
                None => {
                    let mut password = String::new();
                    std::io::stdin().read_line(&mut password).context("reading the password from standard input")?;
                    (u, password.trim_end_matches(['\r', '\n']).to_string())
                }
            }),
            None => None,
        };
        Ok(wasmbox_image::registry::Access {
            plain_http: self.plain_http,
            ca_file: self.tls_ca,
            user,
            docker_config: wasmbox_image::registry::Access::default_docker_config(),
        })
    }
}

#[derive(Subcommand)]
enum ImageCmd {
    /// What a node would run from a .wasm or an image tarball: layout,
    /// platform, entrypoint, module or component, world, imports, exports,
    /// size and digest; blobs are checked against their digests.
    Inspect {
        /// A .wasm, or an image-layout tarball (`wasmbox image build -o`).
        file: PathBuf,
    },
    /// Push to a registry (OCI distribution API): a .wasm as an OCI wasm
    /// artifact (what `wkg oci push` and `oras push` make), or as a
    /// runnable image with --image; or an image-layout tarball as it is.
    Push {
        #[command(flatten)]
        access: AccessArgs,
        /// Push a .wasm as a runnable image (the wasm in a rootfs layer,
        /// which every containerd runs) instead of an OCI wasm artifact.
        #[arg(long)]
        image: bool,
        /// A .wasm (module or component), or an image-layout tarball
        /// (`wasmbox image build -o`, `docker save`).
        file: PathBuf,
        /// HOST[:PORT]/REPO[:TAG] (required for a .wasm; for a tarball, the
        /// default is the name it was built with).
        reference: Option<String>,
    },
    /// Pull an image from a registry into an image tarball (for `ctr image
    /// import` or `image push`). An OCI wasm artifact, whose config type
    /// containerd refuses, is given an image config containerd runs.
    Pull {
        #[command(flatten)]
        access: AccessArgs,
        /// HOST[:PORT]/REPO[:TAG]
        reference: String,
        /// Output tarball.
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Build an OCI image tarball around a .wasm, or of a Spin application
    /// (`--spin spin.toml`), for `ctr image import` or `wasmbox image push`.
    Build {
        /// Image reference, e.g. docker.io/library/hello-wasm:latest
        #[arg(long, short = 't')]
        tag: String,
        /// Output tarball.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Path of the wasm inside the image (default: /<file name>).
        #[arg(long)]
        wasm_path: Option<String>,
        /// Add a file: HOST:/PATH/IN/IMAGE
        #[arg(long = "file", value_name = "HOST:DEST")]
        files: Vec<String>,
        /// Image Env entry K=V.
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// An OCI wasm artifact (config application/vnd.wasm.config.v0+json,
        /// one application/wasm layer) instead of a rootfs image.
        #[arg(long, conflicts_with = "wasm_layer")]
        artifact: bool,
        /// runwasi's layout: an image config (platform wasi/wasm,
        /// Entrypoint) and the wasm as one layer, no rootfs.
        #[arg(long)]
        wasm_layer: bool,
        /// The rootfs image's platform: `wasi/wasm` (as Docker builds wasm
        /// images) or the host's `linux/ARCH` (the default).
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        /// A Spin application to package instead of a .wasm: its manifest
        /// (spin.toml, version 2); the image holds it at /, with each
        /// component's wasm and files, and runs `/`.
        #[arg(long, value_name = "SPIN_TOML", conflicts_with_all = ["artifact", "wasm_layer", "wasm_path", "files", "args"])]
        spin: Option<PathBuf>,
        /// The .wasm to package (module or component).
        #[arg(required_unless_present = "spin")]
        file: Option<PathBuf>,
        /// The image's Cmd: arguments after the wasm.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn default_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("wasmbox"))
}

/// `wasmbox node check`'s findings: the node's, then the wasmbox defaults
/// file the shim reads (`$WASMBOX_CONFIG`, else `/etc/wasmbox/config.toml`),
/// which fails every Create when it is bad.
fn node_findings(input: &wasmbox_node::Input) -> Vec<wasmbox_node::Finding> {
    let mut findings = wasmbox_node::check(input);
    let (level, detail) = match wasmbox_spec::defaults::summary(&wasmbox_spec::defaults::path()) {
        Ok(line) => (wasmbox_node::Level::Ok, line),
        Err(e) => (wasmbox_node::Level::Fail, format!("{e} (every wasm container's Create fails until it is fixed)")),
    };
    findings.push(wasmbox_node::Finding { level, item: "wasmbox defaults", detail });
    findings
}

/// `node check`'s lines; whether an item failed.
fn print_findings(findings: &[wasmbox_node::Finding]) -> Result<bool> {
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for f in findings {
        let tag = match f.level {
            wasmbox_node::Level::Ok => "ok  ",
            wasmbox_node::Level::Warn => "WARN",
            wasmbox_node::Level::Fail => "FAIL",
        };
        failed |= f.level == wasmbox_node::Level::Fail;
        writeln!(out, "{tag} {:<15} {}", f.item, f.detail)?;
    }
    Ok(failed)
}

fn main() {
    // `wasmbox` can also be an instance process (as the shim binary is).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(wasmbox_instance::INSTANCE_ARG) {
        wasmbox_instance::instance_main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some(wasmbox_instance::COMPILE_ARG) {
        wasmbox_instance::compile_main(&args[2..]);
    }
    if let Err(e) = run(Cli::parse()) {
        let _ = writeln!(std::io::stderr(), "wasmbox: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run { dirs, env, cache, no_cache, annotations, file, args } => {
            let mut plan = Plan::for_file(&file, &args, &env, &dirs)?;
            let given = annotations
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => Ok((k.trim().to_string(), v.to_string())),
                    None => anyhow::bail!("--annotation {kv:?}: expected NAME=VALUE"),
                })
                .collect::<Result<std::collections::HashMap<_, _>>>()?;
            plan.annotations = wasmbox_spec::annotations::ours(Some(&given))?;
            let cache = if no_cache {
                None
            } else {
                // A cache directory that is not private is not used.
                cache.or_else(default_cache).and_then(|d| match Cache::new(d) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let _ = writeln!(std::io::stderr(), "wasmbox: {e}; compiling without the cache");
                        None
                    }
                })
            };
            let code = Prepared::new(plan, cache.as_ref())?.run()?;
            std::process::exit(code)
        }
        Cmd::Cache { dir, cmd } => cache_cmd(&Cache::new(&dir)?, cmd),
        Cmd::Node { cmd: NodeCmd::Check { containerd, config, path } } => {
            let findings = node_findings(&wasmbox_node::Input { containerd, config, path });
            let failed = print_findings(&findings)?;
            std::process::exit(if failed { 1 } else { 0 })
        }
        Cmd::Node { cmd: NodeCmd::Install { config, bin_dir, shim, node } } => {
            let mut shim = match shim {
                Some(s) => s,
                None => {
                    std::env::current_exe().context("finding this program")?.with_file_name(wasmbox_node::SHIM_BINARY)
                }
            };
            let pod = wasmbox_node::host::InPod::prepare(node.host, node.label_node.as_deref(), &mut [&mut shim])?;
            let found = pod.containerd.as_ref();
            let containerd = found.map_or(node.containerd.clone(), |c| c.exe.clone());
            let config = config.or_else(|| found.map(|c| c.config.clone()));
            let report = wasmbox_node::install(&wasmbox_node::InstallOptions {
                config: config.clone(),
                bin_dir: bin_dir.or_else(|| found.map(|c| c.bin_dir.clone())),
                shim: shim.clone(),
                restart: node.restart(),
                containerd: containerd.clone(),
                state: node.state.clone(),
                restart_timeout: std::time::Duration::from_secs(node.restart_timeout),
                restart_context: pod.restart_context(),
                dry_run: node.dry_run,
            })?;
            print_lines(&report.lines)?;
            if node.dry_run {
                return Ok(());
            }
            if let Some(c) = found {
                // As `wasmbox node check` sees the node now.
                let findings = node_findings(&wasmbox_node::Input { containerd, config, path: c.path.clone() });
                if print_findings(&findings)? {
                    bail!("node check fails after the install (above); the node is not labelled");
                }
            }
            if let Some(line) = pod.label_installed(env!("CARGO_PKG_VERSION"), &shim)? {
                print_lines(&[line])?;
            }
            if node.stay {
                wasmbox_node::host::stay();
            }
            Ok(())
        }
        Cmd::Node { cmd: NodeCmd::Uninstall { config, force, node } } => {
            let pod = wasmbox_node::host::InPod::prepare(node.host, node.label_node.as_deref(), &mut [])?;
            let found = pod.containerd.as_ref();
            if !node.dry_run {
                if let Some(line) = pod.unlabel()? {
                    print_lines(&[line])?;
                }
            }
            let report = wasmbox_node::uninstall(&wasmbox_node::UninstallOptions {
                config: config.or_else(|| found.map(|c| c.config.clone())),
                force,
                restart: node.restart(),
                containerd: found.map_or(node.containerd.clone(), |c| c.exe.clone()),
                state: node.state,
                restart_timeout: std::time::Duration::from_secs(node.restart_timeout),
                restart_context: pod.restart_context(),
                dry_run: node.dry_run,
            })?;
            print_lines(&report.lines)?;
            if node.stay && !node.dry_run {
                wasmbox_node::host::stay();
            }
            Ok(())
        }
        Cmd::Image { cmd: ImageCmd::Pull { access, reference, output } } => {
            let access = access.access()?;
            // Into a temporary file beside the output, renamed when whole.
            let tmp = output.with_extension("part");
            let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            match wasmbox_image::registry::pull(&reference, &access, std::io::BufWriter::new(file)) {
                Ok(line) => {
                    std::fs::rename(&tmp, &output).with_context(|| format!("writing {}", output.display()))?;
                    writeln!(std::io::stdout(), "{line}; wrote {}", output.display())?;
                    Ok(())
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(e.into())
                }
            }
        }
        Cmd::Image { cmd: ImageCmd::Push { access, image: runnable, file, reference } } => {
            let pushable = image::pushable(&file, reference.as_deref(), runnable)?;
            let access = access.access()?;
            let pushed = wasmbox_image::registry::push(&pushable.tarball, reference.as_deref(), &access)?;
            let mut out = std::io::stdout().lock();
            if let Some(built) = &pushable.built {
                writeln!(out, "packaged {built}")?;
            }
            writeln!(out, "{pushed}")?;
            Ok(())
        }
        Cmd::Image { cmd: ImageCmd::Inspect { file } } => {
            let mut out = std::io::stdout().lock();
            for line in image::inspect(&file)? {
                writeln!(out, "{line}")?;
            }
            Ok(())
        }
        Cmd::Image {
            cmd:
                ImageCmd::Build { tag, output, wasm_path, files, env, artifact, wasm_layer, platform, spin, file, args },
        } => {
            let host = format!("linux/{}", image::host_arch());
            let wasi_platform = match platform.as_deref() {
                None => false,
                Some("wasi/wasm") => true,
                Some(p) if p == host => false,
                Some(p) => bail!("--platform {p}: a wasm image is for wasi/wasm or {host}"),
            };
            if wasi_platform && (artifact || wasm_layer) {
                bail!("--platform is for rootfs images; --artifact and --wasm-layer have their own");
            }
            if let Some(manifest) = spin {
                let out = std::fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
                let packaged = image::build_spin(&tag, &manifest, &env, wasi_platform, std::io::BufWriter::new(out));
                let packaged = match packaged {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = std::fs::remove_file(&output);
                        return Err(e.into());
                    }
                };
                return print_lines(&packaged);
            }
            let file = file.context("a .wasm to package, or --spin spin.toml")?;
            let files = files
                .iter()
                .map(|f| {
                    let (host, dest) = f.split_once(':').with_context(|| format!("--file {f}: expected HOST:DEST"))?;
                    Ok((PathBuf::from(host), dest.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            let spec =
                image::ImageSpec { name: tag, wasm: file, wasm_dest: wasm_path, files, args, env, wasi_platform };
            let out = std::fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
            if wasm_layer {
                image::build_wasm_layer_image(&spec, std::io::BufWriter::new(out))?;
            } else if artifact {
                image::build_artifact(&spec, std::io::BufWriter::new(out))?;
            } else {
                image::build(&spec, std::io::BufWriter::new(out))?;
            }
            Ok(())
        }
    }
}

fn print_lines(lines: &[String]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn cache_cmd(cache: &Cache, cmd: CacheCmd) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        CacheCmd::Ls => {
            let now = std::time::SystemTime::now();
            let entries = cache.list();
            writeln!(out, "{:>10}  {:>10}  {:<8}  ENTRY", "BYTES", "UNUSED FOR", "RECORD")?;
            for e in &entries {
                let idle = now.duration_since(e.last_used).unwrap_or_default().as_secs();
                let name = e.path.file_name().unwrap_or_default().to_string_lossy();
                let record = if e.recorded { "ok" } else { "MISSING" };
                writeln!(out, "{:>10}  {:>9}s  {record:<8}  {name}", e.bytes, idle)?;
            }
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            writeln!(out, "{} entries, {total} bytes in {}", entries.len(), cache.dir().display())?;
        }
        CacheCmd::Prune { older_than } => {
            let older = match older_than {
                None => None,
                Some(v) => Some(
                    std::time::SystemTime::now()
                        - wasmbox_spec::annotations::parse_duration(&v)
                            .with_context(|| format!("--older-than {v:?}: expected a duration such as 30m or 12h"))?,
                ),
            };
            let p = cache.prune(older);
            writeln!(
                out,
                "removed {} entries ({} bytes) and {} leftovers; {} in use kept",
                p.entries, p.bytes, p.leftovers, p.in_use
            )?;
        }
        CacheCmd::Warm { annotations, namespace, target } => {
            let annotations = annotations
                .iter()
                .map(|a| {
                    let (k, v) = a.split_once('=').with_context(|| format!("--annotation {a}: expected K=V"))?;
                    Ok((k.to_string(), v.to_string()))
                })
                .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
            let file = std::path::Path::new(&target);
            if file.is_file() {
                writeln!(out, "{}", wasmbox_engine::engine::warm(file, cache, &annotations)?)?;
            } else {
                for line in warm_image(cache, &namespace, &target, &annotations)? {
                    writeln!(out, "{line}")?;
                }
            }
        }
    }
    Ok(())
}

/// Mounts `image` (containerd's `ctr images mount`) and warms every .wasm
/// in it.
fn warm_image(
    cache: &Cache,
    namespace: &str,
    image: &str,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let mnt = std::env::temp_dir().join(format!("wasmbox-warm-{}", std::process::id()));
    std::fs::create_dir_all(&mnt)?;
    let ctr = |args: &[&str]| -> Result<std::process::Output> {
        std::process::Command::new("ctr").arg("-n").arg(namespace).args(args).output().context("running ctr")
    };
    let mounted = ctr(&["images", "mount", image, &mnt.to_string_lossy()])?;
    if !mounted.status.success() {
        let _ = std::fs::remove_dir(&mnt);
        bail!(
            "{image} is neither a file nor an image ctr can mount in namespace {namespace}: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
    }
    let mut found = Vec::new();
    let mut dirs = vec![mnt.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type()?;
            if ft.is_dir() {
                dirs.push(e.path());
            } else if ft.is_file() && e.path().extension().is_some_and(|x| x == "wasm") {
                found.push(e.path());
            }
        }
    }
    let reports = found
        .iter()
        .map(|p| wasmbox_engine::engine::warm(p, cache, annotations).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>();
    let _ = ctr(&["images", "unmount", &mnt.to_string_lossy()]);
    let _ = std::fs::remove_dir(&mnt);
    let reports = reports?;
    anyhow::ensure!(!reports.is_empty(), "no .wasm file in {image}");
    Ok(reports)
}

#[cfg(test)]
mod tests {
    /// Every argument and subcommand of every command says what it is.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&<super::Cli as clap::CommandFactory>::command(), "wasmbox", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
