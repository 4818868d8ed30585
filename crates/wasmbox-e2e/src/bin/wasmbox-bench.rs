//! Prints wasmbox-vs-runc figures from one private containerd (see `wasmbox_e2e::bench`).
fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let opts = wasmbox_e2e::bench::Options {
        runs: arg("--runs", 20) as usize,
        containers: arg("--containers", 20) as usize,
        cpu_rounds: arg("--cpu-rounds", 300),
        idle_secs: arg("--idle-secs", 30),
        density: arg("--density", 0) as usize,
    };
    let table = wasmbox_e2e::bench::run(&opts)?;
    std::io::Write::write_all(&mut std::io::stdout(), table.as_bytes())?;
    Ok(())
}
