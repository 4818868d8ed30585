//! Prints wasmbox-vs-runc figures from one private containerd (see `wasmbox_bench`).
fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--serve") {
        let opts = wasmbox_bench::ServeOptions { secs: arg("--secs", 3) };
        return print(&wasmbox_bench::run_serve(&opts)?);
    }
    if std::env::args().any(|a| a == "--cache") {
        let opts = wasmbox_bench::CacheOptions {
            mb: arg("--mb", 40) as usize,
            instances: arg("--instances", 20) as usize,
            runs: arg("--runs", 10) as usize,
        };
        return print(&wasmbox_bench::run_cache(&opts)?);
    }
    if std::env::args().any(|a| a == "--tiers") {
        let opts = wasmbox_bench::tiers::TiersOptions {
            mb: arg("--mb", 40) as usize,
            runs: arg("--runs", 5) as usize,
            cpu_rounds: arg("--cpu-rounds", 300),
            // A real program (scripts/bench.sh fetches yosys from its wheel).
            real: std::env::var_os("WASMBOX_BENCH_REAL_WASM").map(Into::into),
        };
        return print(&wasmbox_bench::tiers::run_tiers(&opts)?);
    }
    if std::env::args().any(|a| a == "--cluster") {
        let opts = wasmbox_bench::cluster::ClusterOptions {
            replicas: arg("--replicas", 100) as usize,
            node_pods: arg("--node-pods", 300) as usize,
            runc_node_pods: arg("--runc-node-pods", 300) as usize,
        };
        return print(&wasmbox_bench::cluster::run_cluster(&opts)?);
    }
    if std::env::args().any(|a| a == "--cri") {
        let opts = wasmbox_bench::CriOptions {
            runs: arg("--runs", 10) as usize,
            pods: arg("--pods", 100) as usize,
            per_pod: arg("--per-pod", 10) as usize,
            runc_pods: arg("--runc-pods", 100) as usize,
        };
        return print(&wasmbox_bench::run_cri(&opts)?);
    }
    let opts = wasmbox_bench::Options {
        runs: arg("--runs", 20) as usize,
        containers: arg("--containers", 20) as usize,
        cpu_rounds: arg("--cpu-rounds", 300),
        idle_secs: arg("--idle-secs", 30),
        density: arg("--density", 0) as usize,
    };
    print(&wasmbox_bench::run(&opts)?)
}

fn print(table: &str) -> anyhow::Result<()> {
    std::io::Write::write_all(&mut std::io::stdout(), table.as_bytes())?;
    Ok(())
}
