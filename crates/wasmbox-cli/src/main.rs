//! `wasmbox`, the command line for people. All logic lives in wasmbox-core;
//! this file parses flags and reports.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use wasmbox_core::{cache::Cache, engine::Prepared, image, Plan};

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
    /// This node's containerd, as Kubernetes will use it.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
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
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build an OCI image tarball around a .wasm (for `ctr image import`).
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
        file: PathBuf,
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

fn main() {
    // `wasmbox` can also be an instance process (as the shim binary is).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(wasmbox_core::instance::INSTANCE_ARG) {
        wasmbox_core::instance::instance_main(&args[2..]);
    }
    if let Err(e) = run(Cli::parse()) {
        let _ = writeln!(std::io::stderr(), "wasmbox: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run { dirs, env, cache, no_cache, file, args } => {
            let plan = Plan::for_file(&file, &args, &env, &dirs)?;
            let cache = if no_cache { None } else { cache.or_else(default_cache).map(Cache::new).transpose()? };
            let code = Prepared::new(plan, cache.as_ref())?.run()?;
            std::process::exit(code)
        }
        Cmd::Node { cmd: NodeCmd::Check { containerd, config, path } } => {
            let findings = wasmbox_core::node::check(&wasmbox_core::node::Input { containerd, config, path });
            let mut out = std::io::stdout().lock();
            let mut failed = false;
            for f in &findings {
                let tag = match f.level {
                    wasmbox_core::node::Level::Ok => "ok  ",
                    wasmbox_core::node::Level::Warn => "WARN",
                    wasmbox_core::node::Level::Fail => "FAIL",
                };
                failed |= f.level == wasmbox_core::node::Level::Fail;
                writeln!(out, "{tag} {:<15} {}", f.item, f.detail)?;
            }
            std::process::exit(if failed { 1 } else { 0 })
        }
        Cmd::Image { cmd: ImageCmd::Build { tag, output, wasm_path, files, env, file, args } } => {
            let files = files
                .iter()
                .map(|f| {
                    let (host, dest) = f.split_once(':').with_context(|| format!("--file {f}: expected HOST:DEST"))?;
                    Ok((PathBuf::from(host), dest.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            let spec = image::ImageSpec { name: tag, wasm: file, wasm_dest: wasm_path, files, args, env };
            let out = std::fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
            image::build(&spec, std::io::BufWriter::new(out))?;
            Ok(())
        }
    }
}
