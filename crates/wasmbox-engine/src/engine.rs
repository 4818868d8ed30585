//! Running a [`Plan`] on wasmtime: load (or compile and cache) the code,
//! check that the entry point exists, build the WASI context, run, and turn
//! the outcome into a process exit status.

use crate::cache::Cache;
use crate::guest::{wasi, GuestLimiter, MemoryLimitReached};
use crate::net::{Outbound, Policy};
use crate::proposals::Disabled;
use crate::threads::Threads;
use crate::tier::{Compiler, Settings, Tier};
use crate::tuning::Tuning;
use std::io::Write;
use wasmbox_spec::annotations::{COMPILE_CACHE, CPU_DEADLINE, MEMORY_LIMIT};
use wasmbox_spec::plan::{Limits, Plan};
use wasmbox_spec::wasm::{detect, WasmKind};
use wasmbox_spec::{Error, Result};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, ExternType, Linker, Module, Store, WasmBacktraceDetails};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Exit status of a guest that trapped (as a process killed by SIGABRT).
pub const TRAP_EXIT: i32 = 134;

/// Exit status of a guest ended at its memory limit: what a Linux
/// container's process gets from the OOM killer (SIGKILL).
pub const OUT_OF_MEMORY_EXIT: i32 = 137;

/// How a guest's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The process exit status.
    pub code: i32,
    /// The guest was ended at its memory limit (not by its own exit, even
    /// one with status 137).
    pub out_of_memory: bool,
}

/// Everything that makes a workload's engine but the tier: its compiler
/// settings, interruption, disabled proposals and (for a served
/// component) the pooling allocator's size. A background compile gets it
/// to make the same engine the instance would have made for the optimized
/// tier; cached code is keyed by the engine's compatibility hash, which
/// covers every setting that changes code, so each has its own entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    pub settings: Settings,
    /// Stack, fuel, memory reservation and guard, pooling.
    pub tuning: Tuning,
    /// Code that checks for interruption (for a CPU deadline, and served
    /// components' request timeouts).
    pub epoch: bool,
    /// Proposals turned off, by name.
    pub disabled: Vec<String>,
    /// A served component's concurrency: its engine pools instances.
    pub serve_concurrency: Option<usize>,
    /// The component uses WASI 0.3: the engine takes the component
    /// model's async ABI.
    #[serde(default)]
    pub component_async: bool,
}

impl Recipe {
    /// A workload's recipe: its annotations' settings and proposals.
    fn of(plan: &Plan, epoch: bool) -> Result<Recipe> {
        Ok(Recipe {
            settings: Settings::of(&plan.annotations)?,
            tuning: Tuning::of(&plan.annotations)?,
            epoch,
            disabled: Disabled::of(&plan.annotations)?.names(),
            serve_concurrency: None,
            component_async: false,
        })
    }

    /// The engine for `tier`. `parallel`: compile on rayon's current pool
    /// (see [`crate::threads`] for an instance process's).
    pub fn engine(&self, tier: Tier, parallel: bool) -> Result<Engine> {
        let off = Disabled::from_names(&self.disabled)?;
        let served = self.serve_concurrency.is_some();
        let mut config = Config::new();
        config.wasm_backtrace_details(WasmBacktraceDetails::Enable);
        config.parallel_compilation(parallel);
        config.epoch_interruption(self.epoch || served);
        config.wasm_component_model_async(self.component_async);
        off.apply(&mut config);
        self.settings.apply(tier, &mut config)?;
        self.tuning.apply(&mut config);
        if !self.tuning.pooled(served) {
            return new_engine(&config, tier, &self.tuning);
        }
        // The pooling allocator, sized for the requests served at once (one
        // instance for a command); on-demand allocation where the pool's
        // address space cannot be had (an address-space rlimit), unless
        // the workload asked for the pool by name.
        let slots = self.serve_concurrency.map_or(1, |c| c.min(1000) as u32 + 8);
        let mut pool = self.tuning.pool(slots);
        if served {
            pool.max_unused_warm_slots(64)
                // A slot's memory is reset by rewriting the pages the request
                // dirtied (found with PAGEMAP_SCAN where the kernel has it), not
                // by madvise: no TLB shootdown across the server's threads and no
                // page faults when the slot is reused.
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(64 << 10)
                .pagemap_scan(wasmtime::Enabled::Auto);
        }
        let mut pooled = config.clone();
        pooled.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&pooled) {
            Ok(e) => Ok(e),
            Err(e) if self.tuning.pooling == crate::tuning::Pooling::On => Err(Error::Unsupported(format!(
                "the pooling allocator (annotation {}=on): {e:#}",
                wasmbox_spec::annotations::POOLING
            ))),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "wasmbox: no pooling allocator ({e:#}); instances are allocated on demand"
                );
                new_engine(&config, tier, &self.tuning)
            }
        }
    }
}

fn new_engine(config: &Config, tier: Tier, tuning: &Tuning) -> Result<Engine> {
    Engine::new(config).map_err(|e| {
        let given = tuning.named();
        let settings = if given.is_empty() { String::new() } else { format!(" (with annotations {given})") };
        Error::Unsupported(format!("creating the wasm engine for the {} tier{settings}: {e:#}", tier.name()))
    })
}

/// Linked code and the guest's WASI context (its preopens already open),
/// or a proxy component's server (its socket already bound).
enum Code {
    Module(wasmtime::InstancePre<ModuleState>, WasiP1Ctx),
    Component(CommandPre<ComponentState>, WasiCtx, Policy),
    /// A WASI 0.3 command (`wasi:cli/run@0.3.x`), run on the async ABI.
    Component0_3(wasmtime_wasi::p3::bindings::CommandPre<ComponentState>, WasiCtx, Policy),
    Proxy(Box<crate::serve::Server>),
}

/// Bytes of a pooled linear memory kept resident between requests.
const KEEP_RESIDENT: usize = 2 << 20;

/// What a component is, from its top-level imports and exports: whether
/// it serves HTTP (`wasi:http/incoming-handler@0.2.x` or
/// `wasi:http/handler@0.3.x`) and whether it uses WASI 0.3. A component
/// that cannot be parsed is neither: compiling it says why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub serves_http: bool,
    pub wasi_0_3: bool,
}

impl Shape {
    /// The component's shape; an error naming the file where it imports or
    /// exports a pre-release WASI interface, which nothing here implements.
    pub fn of(path: &std::path::Path, bytes: &[u8]) -> Result<Shape> {
        match wasmbox_spec::wasm::describe(path, bytes) {
            Ok(info) if info.kind == WasmKind::Component => {
                if let Some(name) = info.wasi_prerelease() {
                    return Err(Error::NotRunnable {
                        path: path.to_path_buf(),
                        reason: format!(
                            "it uses {name}, a pre-release of WASI; this runtime (wasmtime {}) implements WASI 0.2.x and 0.3.0 only: rebuild the guest against a released WASI (for Rust, the wasip2 crate, or wasip3 0.7 to 0.9 for WASI 0.3.0)",
                            WASMTIME_VERSION
                        ),
                    });
                }
                Ok(Shape { serves_http: info.serves_http(), wasi_0_3: info.wasi_0_3() })
            }
            _ => Ok(Shape::default()),
        }
    }
}

/// The wasmtime this runtime is built on, for errors.
const WASMTIME_VERSION: &str = "48";

/// Store data for core modules.
pub struct ModuleState {
    ctx: WasiP1Ctx,
    limiter: GuestLimiter,
}

/// Store data for components: the WASI context, its resource table and
/// outbound HTTP (under the network policy).
pub struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    http: WasiHttpCtx,
    hooks: Outbound,
}

impl ComponentState {
    /// A command's store data: its WASI context, a fresh resource table,
    /// its memory limiter, outbound HTTP under the network policy.
    fn new(ctx: WasiCtx, limiter: GuestLimiter, net: &Policy) -> ComponentState {
        ComponentState { ctx, table: ResourceTable::new(), limiter, http: WasiHttpCtx::new(), hooks: net.outbound() }
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Compiled, linked and checked code, ready to run: everything that can be
/// wrong with the input has been found by the time this exists.
pub struct Prepared {
    plan: Plan,
    engine: Engine,
    code: Code,
    limits: Limits,
    /// Whether the compiled code came from the cache.
    pub cache_hit: bool,
    /// How the code was had: compiled (how long, where cached), or which
    /// cache entry was verified and mapped; discarded entries and why.
    pub code_report: String,
    /// Fuel the guest may burn (annotation `wasmbox.io/fuel`).
    fuel: Option<u64>,
    /// A served component on a lower tier: what loads the optimized code
    /// into it.
    upgrade: Option<Upgrader>,
}

/// Loads the optimized code into a served component that started on a
/// lower tier, while it serves (see [`crate::serve::CodeSlot`]).
pub struct Upgrader {
    recipe: Recipe,
    plan: Plan,
    slot: crate::serve::CodeSlot,
}

impl Upgrader {
    /// Serves new requests with `code`, the optimized tier's compiled
    /// component: a cache entry its parent verified and opened; how it
    /// went, for the log.
    pub fn upgrade(&self, code: std::fs::File) -> Result<String> {
        let t = std::time::Instant::now();
        let engine = self.recipe.engine(Tier::Optimized, false)?;
        // Mapped from the file where /proc shows it (the page cache is
        // shared with every instance that maps the entry), else read.
        let component = if std::path::Path::new("/proc/self/fd").is_dir() {
            Component::load_open(&engine, code, std::path::Path::new("/nonexistent"))
        } else {
            let mut bytes = Vec::new();
            // From the start: the parent read it through to verify it.
            std::io::Seek::rewind(&mut &code)
                .and_then(|()| std::io::Read::read_to_end(&mut &code, &mut bytes))
                .map_err(|e| Error::io("reading the optimized code", e))?;
            // SAFETY: a cache entry verified against its record, compiled
            // by this wasmtime for an engine of this recipe (the entry's
            // key covers the engine's compatibility hash).
            unsafe { Component::deserialize(&engine, &bytes) }
        }
        .map_err(|e| invalid(&self.plan, WasmKind::Component, e))?;
        let pre = link_proxy(&engine, &component, &self.plan, self.recipe.component_async, false)?;
        self.slot.replace(crate::serve::Generation { engine, pre, tier: Tier::Optimized.name() });
        Ok(format!(
            "{}: new requests run on the {} code from now on (loaded in {})",
            self.plan.args.first().map(String::as_str).unwrap_or("the wasm"),
            Tier::Optimized.name(),
            ms(t.elapsed())
        ))
    }
}

/// A component linked on the async ABI against WASI 0.2 and 0.3 and
/// wasi:http of both: a WASI 0.3 component built by today's toolchains
/// still imports 0.2 interfaces (the standard library's, through the
/// preview-1 adapter), and a served 0.2 component is run async too.
fn async_linker<T: WasiView + WasiHttpView + Send + 'static>(
    engine: &Engine,
    plan: &Plan,
    wasi_0_3: bool,
) -> Result<wasmtime::component::Linker<T>> {
    let kind = WasmKind::Component;
    let mut linker = wasmtime::component::Linker::<T>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| invalid(plan, kind, e))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| invalid(plan, kind, e))?;
    if wasi_0_3 {
        wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(|e| invalid(plan, kind, e))?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(|e| invalid(plan, kind, e))?;
    }
    Ok(linker)
}

/// Whether a compiled component exports an interface starting with `prefix`.
fn exports(engine: &Engine, component: &Component, prefix: &str) -> bool {
    component.component_type().exports(engine).any(|(n, _)| n.starts_with(prefix))
}

/// A served component linked for serving: a `wasi:http/proxy` (0.2) or a
/// `wasi:http/service` (0.3), with WASI, async; `wasi_0_3`: the component
/// uses WASI 0.3 (its recipe's `component_async`), so a 0.2 proxy that
/// imports 0.3 interfaces gets them too.
/// `app`: a Spin application's component, which gets Spin's host
/// interfaces too (see [`crate::app_host`]).
fn link_proxy(
    engine: &Engine,
    component: &Component,
    plan: &Plan,
    wasi_0_3: bool,
    app: bool,
) -> Result<crate::serve::Linked> {
    let not_served = |world: &str, e: wasmtime::Error| Error::NotRunnable {
        path: plan.wasm.clone(),
        reason: format!("cannot be served as a {world}: {e:#}"),
    };
    let with_app = |linker: &mut wasmtime::component::Linker<crate::serve::HttpState>| -> Result<()> {
        if app {
            crate::app_host::add_to_linker(linker).map_err(|e| invalid(plan, WasmKind::Component, e))?;
        }
        Ok(())
    };
    if exports(engine, component, "wasi:http/handler@0.3") {
        let mut linker = async_linker(engine, plan, true)?;
        with_app(&mut linker)?;
        return linker
            .instantiate_pre(component)
            .and_then(wasmtime_wasi_http::p3::bindings::ServicePre::new)
            .map(crate::serve::Linked::Service0_3)
            .map_err(|e| not_served("wasi:http/service@0.3.0", e));
    }
    let mut linker = async_linker(engine, plan, wasi_0_3)?;
    with_app(&mut linker)?;
    linker
        .instantiate_pre(component)
        .and_then(wasmtime_wasi_http::p2::bindings::ProxyPre::new)
        .map(crate::serve::Linked::Proxy)
        .map_err(|e| not_served("wasi:http/proxy", e))
}

/// A WASI 0.3 command (`wasi:cli/run@0.3.x`) linked to run.
fn link_command_0_3(
    engine: &Engine,
    component: &Component,
    plan: &Plan,
) -> Result<wasmtime_wasi::p3::bindings::CommandPre<ComponentState>> {
    let linker = async_linker(engine, plan, true)?;
    linker.instantiate_pre(component).and_then(wasmtime_wasi::p3::bindings::CommandPre::new).map_err(|e| {
        Error::NotRunnable {
            path: plan.wasm.clone(),
            reason: format!("cannot be linked against WASI 0.3 (and 0.2) and wasi:http: {e:#}"),
        }
    })
}

/// Memory the instance process keeps for itself beside the guest's
/// memories, within the container's memory limit.
const INSTANCE_HEADROOM: u64 = 8 << 20;

fn invalid(plan: &Plan, kind: WasmKind, e: impl std::fmt::Display) -> Error {
    let what = if kind == WasmKind::Module { "module" } else { "component" };
    let mut reason = format!("{e:#}");
    // A proposal the workload turned off is the likely cause: say so.
    if let Some(hint) = Disabled::of(&plan.annotations).ok().and_then(|d| d.hint()) {
        reason.push_str(&format!(" ({hint})"));
    }
    Error::InvalidWasm { path: plan.wasm.clone(), what, reason }
}

/// Compiled code of either kind, as the cache handles it.
trait Artifact: Sized + Send {
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self>;
    fn precompile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Vec<u8>>;
    /// Maps a cache entry written by `precompile`, from the file that was
    /// verified (not reopened by its name).
    fn load_open(engine: &Engine, file: std::fs::File, path: &std::path::Path) -> wasmtime::Result<Self>;
}

impl Artifact for Module {
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        Module::new(engine, bytes)
    }
    fn precompile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        engine.precompile_module(bytes)
    }
    fn load_open(engine: &Engine, file: std::fs::File, _path: &std::path::Path) -> wasmtime::Result<Self> {
        // SAFETY: the file is a cache entry checked against the digest
        // recorded when `precompile` wrote it, in a directory only this
        // user can write; wasmtime checks its engine header.
        unsafe { Module::deserialize_open_file(engine, file) }
    }
}

impl Artifact for Component {
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        Component::new(engine, bytes)
    }
    fn precompile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        engine.precompile_component(bytes)
    }
    fn load_open(engine: &Engine, file: std::fs::File, path: &std::path::Path) -> wasmtime::Result<Self> {
        // wasmtime maps components by path only: the verified file's own
        // descriptor, so the name cannot be swapped in between.
        use std::os::fd::AsRawFd;
        let by_fd = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let at = if by_fd.exists() { by_fd.as_path() } else { path };
        // SAFETY: as for modules.
        let code = unsafe { Component::deserialize_file(engine, at) };
        drop(file);
        code
    }
}

/// A verified entry, loaded; `None` (with the reason in `notes`) when there
/// is none or it was discarded.
fn load_entry<T: Artifact>(
    engine: &Engine,
    cache: &Cache,
    entry: &std::path::Path,
    notes: &mut Vec<String>,
) -> Option<T> {
    match cache.open_verified(entry) {
        Ok(None) => None,
        Ok(Some(file)) => match T::load_open(engine, file, entry) {
            Ok(code) => {
                cache.touch(entry);
                Some(code)
            }
            Err(e) => {
                notes.push(cache.discard(entry, &format!("wasmtime refused it: {e:#}")));
                None
            }
        },
        Err(why) => {
            notes.push(why);
            None
        }
    }
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// When the instance's parent should start a background compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum When {
    /// At once: the guest starts on a lower tier meanwhile.
    Now,
    /// Only if the instance is killed (its prepare timeout) while it
    /// compiles: the compile then goes on in the background.
    IfKilled,
}

/// A request for the optimized tier's code of a workload, compiled into the
/// cache by a process of its own (see [`compile_background`]), from the
/// wasm's bytes (which its parent passes it as an open file: the
/// container's rootfs may be gone by then).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Background {
    /// Where the instance read the wasm (in its own mount namespace).
    pub wasm: std::path::PathBuf,
    /// The guest's name, for reports.
    pub name: String,
    pub cache: std::path::PathBuf,
    pub recipe: Recipe,
    pub component: bool,
    pub when: When,
}

/// Called by [`Prepared`] when code should be compiled in the background.
pub type OnBackground<'a> = &'a mut dyn FnMut(&Background);

/// Code of one tier, loaded or compiled, and how it was had.
struct Loaded<T> {
    engine: Engine,
    code: T,
    tier: Tier,
    hit: bool,
    report: String,
}

/// One tier's code from the cache, if a verified entry is there (after a
/// compile of the same entry in progress, if any).
fn cached<T: Artifact>(
    engine: &Engine,
    cache: &Cache,
    entry: &std::path::Path,
    notes: &mut Vec<String>,
) -> Option<(T, std::time::Duration)> {
    let t = std::time::Instant::now();
    cache
        .lock(entry, false)
        .and_then(|_held| load_entry::<T>(engine, cache, entry, notes))
        .map(|code| (code, t.elapsed()))
}

/// Compiles one tier's code (caching it where there is a cache), unless
/// whoever held the entry's lock meanwhile compiled it. `before` is called
/// once it is certain that this process compiles.
#[allow(clippy::too_many_arguments)]
fn compile_tier<T: Artifact>(
    engine: &Engine,
    threads: Threads,
    tier: Tier,
    name: &str,
    bytes: &[u8],
    cache: Option<(&Cache, &std::path::Path)>,
    before: &mut dyn FnMut(),
) -> std::result::Result<(T, bool, String), wasmtime::Error> {
    let Some((cache, entry)) = cache else {
        before();
        let t = std::time::Instant::now();
        let code = threads.run(|| T::compile(engine, bytes)).map_err(wasmtime::Error::msg)??;
        return Ok((code, false, format!("{name}: compiled in {} ({})", ms(t.elapsed()), tier.name())));
    };
    let _compiling = cache.lock(entry, true);
    let mut notes = Vec::new();
    let t = std::time::Instant::now();
    if let Some(code) = load_entry::<T>(engine, cache, entry, &mut notes) {
        let how = format!(
            "{name}: code from cache entry {}, compiled by another container meanwhile ({}; verified and mapped in {})",
            entry.display(),
            tier.name(),
            ms(t.elapsed())
        );
        return Ok((code, true, how));
    }
    before();
    let compiled = threads.run(|| T::precompile(engine, bytes)).map_err(wasmtime::Error::msg)??;
    let took = t.elapsed();
    cache.store(entry, &compiled).map_err(wasmtime::Error::msg)?;
    let file = std::fs::File::open(entry)?;
    let code = T::load_open(engine, file, entry)?;
    let mut report = format!("{name}: compiled in {} ({}); cached as {}", ms(took), tier.name(), entry.display());
    for n in &notes {
        report.push_str(&format!("; {n}"));
    }
    Ok((code, false, report))
}

/// The cache entry of `tier`'s code for the wasm whose digest is given.
fn entry_of(cache: &Cache, digest: &str, tier: Tier, engine: &Engine) -> std::path::PathBuf {
    cache.entry_for(digest, &(tier.name(), engine.precompile_compatibility_hash()))
}

/// Loads compiled code for `bytes`: the optimized tier's from the cache,
/// or (see [`crate::tier`]) a lower tier's while the optimized code is
/// compiled in the background, or the chosen compiler's, compiled and
/// cached. `background` is where background compiles are asked for; with
/// none, nothing is compiled in the background.
#[allow(clippy::too_many_arguments)]
fn load<T: Artifact>(
    recipe: &Recipe,
    threads: Threads,
    plan: &Plan,
    kind: WasmKind,
    bytes: &[u8],
    cache: Option<&Cache>,
    mut background: Option<OnBackground<'_>>,
) -> Result<Loaded<T>> {
    let name = plan.args.first().map(String::as_str).unwrap_or("the wasm").to_string();
    let (cache, no_cache) = match plan.annotations.get(COMPILE_CACHE).map(|v| v.trim()) {
        None | Some("on") => (cache, "no compile cache"),
        Some("off") => (None, "annotation wasmbox.io/compile-cache=off"),
        Some(v) => {
            return Err(Error::InvalidArgument {
                what: format!("annotation {}={v:?}", COMPILE_CACHE),
                reason: "expected on or off".into(),
            })
        }
    };
    let digest = cache.map(|_| Cache::digest(bytes));
    let mut notes = Vec::new();
    let request = |when: When| Background {
        wasm: plan.wasm.clone(),
        name: name.clone(),
        cache: cache.map(|c| c.dir().to_path_buf()).unwrap_or_default(),
        recipe: recipe.clone(),
        component: kind != WasmKind::Module,
        when,
    };
    // The tiers to try, in order, and whether a miss asks for the
    // optimized code in the background.
    let settings = recipe.settings;
    let tiered = settings.compiler == Compiler::Auto && cache.is_some() && background.is_some();
    let tiers: &[Tier] =
        if tiered || settings.compiler != Compiler::Auto { settings.first_tiers() } else { &[Tier::Optimized] };
    let mut ask_now = false;
    if let (true, Some(cache), Some(digest)) = (tiered, cache, &digest) {
        // Most starts: the optimized code, cached. An entry another process
        // is compiling (its lock held exclusively) is not waited for.
        let engine = recipe.engine(Tier::Optimized, threads.parallel())?;
        let entry = entry_of(cache, digest, Tier::Optimized, &engine);
        match cache.try_lock(&entry, false) {
            None => notes.push(format!("the {} code is being compiled by another process", Tier::Optimized.name())),
            Some(held) => {
                let t = std::time::Instant::now();
                if let Some(code) = load_entry::<T>(&engine, cache, &entry, &mut notes) {
                    let mut report = format!(
                        "{name}: code from cache entry {} ({}; verified and mapped in {})",
                        entry.display(),
                        Tier::Optimized.name(),
                        ms(t.elapsed())
                    );
                    for n in &notes {
                        report.push_str(&format!("; {n}"));
                    }
                    return Ok(Loaded { engine, code, tier: Tier::Optimized, hit: true, report });
                }
                drop(held);
                // Asked for once the lower tier's code is had, so the two
                // compiles do not share the CPUs (a low priority does not
                // hold across cgroups); asked for now should the prepare
                // timeout kill this one first.
                if let Some(bg) = background.as_mut() {
                    bg(&request(When::IfKilled));
                }
                ask_now = true;
                notes.push(format!("the {} code is being compiled in the background", Tier::Optimized.name()));
            }
        }
    }
    // A lower tier (or the chosen compiler's) from the cache, ...
    let mut engines = Vec::new();
    for &tier in tiers {
        let engine = recipe.engine(tier, threads.parallel())?;
        if let (Some(cache), Some(digest)) = (cache, &digest) {
            let entry = entry_of(cache, digest, tier, &engine);
            if let Some((code, took)) = cached::<T>(&engine, cache, &entry, &mut notes) {
                let mut report = format!(
                    "{name}: code from cache entry {} ({}; verified and mapped in {})",
                    entry.display(),
                    tier.name(),
                    ms(took)
                );
                for n in &notes {
                    report.push_str(&format!("; {n}"));
                }
                if let (true, Some(bg)) = (ask_now, background.as_mut()) {
                    bg(&request(When::Now));
                }
                return Ok(Loaded { engine, code, tier, hit: true, report });
            }
            engines.push((tier, engine, Some(entry)));
        } else {
            engines.push((tier, engine, None));
        }
    }
    // ... or compiled, falling back to the next tier where a compiler
    // refuses the module.
    let mut refused: Option<(Tier, wasmtime::Error)> = None;
    for (tier, engine, entry) in engines {
        // A compile of the optimized code that outlives the prepare
        // timeout goes on in the background.
        let mut before = || {
            if let (Tier::Optimized, Some(bg), Some(_)) = (tier, background.as_mut(), cache) {
                bg(&request(When::IfKilled));
            }
        };
        let at = cache.zip(entry.as_deref());
        match compile_tier::<T>(&engine, threads, tier, &name, bytes, at, &mut before) {
            Ok((code, hit, mut report)) => {
                if cache.is_none() {
                    report.push_str(&format!("; {no_cache}"));
                }
                if let Some((t, e)) = &refused {
                    report.push_str(&format!("; the {} compiler refused it: {e:#}", t.name()));
                }
                for n in &notes {
                    report.push_str(&format!("; {n}"));
                }
                if let (true, Some(bg)) = (ask_now, background.as_mut()) {
                    bg(&request(When::Now));
                }
                return Ok(Loaded { engine, code, tier, hit, report });
            }
            Err(e) => refused = Some((tier, e)),
        }
    }
    let (tier, e) = refused.expect("at least one tier was tried");
    let e = match settings.compiler {
        Compiler::Auto => e,
        c => e.context(format!(
            "the {} tier (annotation {}={})",
            tier.name(),
            wasmbox_spec::annotations::COMPILER,
            c.name()
        )),
    };
    Err(invalid(plan, kind, e))
}

/// Compiles the optimized tier's code of `job` from `bytes` into its cache,
/// unless it is there already or another process is compiling it (a
/// request made [`When::Now`] does not wait for that one); waits for the
/// node's compile slot first. How it went, for the log, and the entry
/// once the code is in the cache.
pub fn compile_background(job: &Background, bytes: &[u8]) -> Result<(String, Option<std::path::PathBuf>)> {
    let cache = Cache::new(&job.cache)?;
    let engine = job.recipe.engine(Tier::Optimized, true)?;
    let entry = entry_of(&cache, &Cache::digest(bytes), Tier::Optimized, &engine);
    let name = &job.name;
    let held = match job.when {
        When::Now => cache.try_lock(&entry, true),
        When::IfKilled => cache.lock(&entry, true),
    };
    let Some(_held) = held else { return Ok((format!("{name}: already being compiled by another process"), None)) };
    if let Ok(Some(_)) = cache.open_verified(&entry) {
        return Ok((
            format!("{name}: {} code already cached as {}", Tier::Optimized.name(), entry.display()),
            Some(entry),
        ));
    }
    let waited = std::time::Instant::now();
    let _slot = cache.compile_slot();
    let waited = waited.elapsed();
    let t = std::time::Instant::now();
    let compiled = if job.component { engine.precompile_component(bytes) } else { engine.precompile_module(bytes) };
    let compiled = compiled.map_err(|e| Error::InvalidWasm {
        path: job.wasm.clone(),
        what: if job.component { "component" } else { "module" },
        reason: format!("{e:#}"),
    })?;
    let took = t.elapsed();
    cache.store(&entry, &compiled)?;
    let report = format!(
        "{name}: {} code compiled in the background in {} (after {} waiting for the node's compile slot); cached as {}",
        Tier::Optimized.name(),
        ms(took),
        ms(waited),
        entry.display()
    );
    Ok((report, Some(entry)))
}

/// Compiles the wasm at `path` into `cache` as a container's instance
/// would load it: the command engine, or the serving engine for a
/// `wasi:http/proxy` component, with the proposals `annotations` turn off
/// (and no CPU deadline, whose code differs). How the code was had: cached
/// already, or compiled.
pub fn warm(
    path: &std::path::Path,
    cache: &Cache,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<String> {
    let mut plan = Plan::for_file(&path.to_string_lossy(), &[], &[], &[])?;
    plan.annotations = annotations.clone();
    let bytes = std::fs::read(&plan.wasm).map_err(|e| Error::io(format!("reading {}", plan.wasm.display()), e))?;
    let kind = detect(&plan.wasm, &bytes)?;
    let mut recipe = Recipe::of(&plan, false)?;
    let report = match kind {
        WasmKind::Module => load::<Module>(&recipe, Threads::Global, &plan, kind, &bytes, Some(cache), None)?.report,
        WasmKind::Component => {
            let shape = Shape::of(&plan.wasm, &bytes)?;
            recipe.component_async = shape.wasi_0_3;
            if shape.serves_http {
                recipe.serve_concurrency = Some(crate::serve::ServeOptions::take(&mut plan.clone())?.max_concurrency);
            }
            load::<Component>(&recipe, Threads::Global, &plan, kind, &bytes, Some(cache), None)?.report
        }
    };
    Ok(report)
}

impl Prepared {
    /// Reads, compiles (or loads from `cache`) and links the plan's wasm,
    /// and opens what the guest is granted.
    /// With no container, the limits are the annotations' (memory limit,
    /// CPU deadline).
    pub fn new(plan: Plan, cache: Option<&Cache>) -> Result<Prepared> {
        let limits = Limits::from_annotations(&plan.annotations)?;
        Prepared::with(plan, cache, limits, Threads::Global, None)
    }

    /// The same in an instance process: compiled on threads made for the
    /// compile and joined before it returns (see [`crate::threads`]), with
    /// the limits the engine enforces; `background` is asked to compile
    /// the optimized code where the guest starts on a lower tier (see
    /// [`crate::tier`]).
    pub fn new_isolated(
        plan: Plan,
        cache: Option<&Cache>,
        limits: Limits,
        background: Option<OnBackground<'_>>,
    ) -> Result<Prepared> {
        Prepared::with(plan, cache, limits, Threads::scoped(), background)
    }

    fn with(
        plan: Plan,
        cache: Option<&Cache>,
        limits: Limits,
        threads: Threads,
        background: Option<OnBackground<'_>>,
    ) -> Result<Prepared> {
        if plan.app.is_some() {
            return Prepared::app(plan, cache, limits, threads);
        }
        let bytes = std::fs::read(&plan.wasm).map_err(|e| Error::io(format!("reading {}", plan.wasm.display()), e))?;
        let kind = detect(&plan.wasm, &bytes)?;
        let shape = if kind == WasmKind::Component { Shape::of(&plan.wasm, &bytes)? } else { Shape::default() };
        if shape.serves_http {
            return Prepared::proxy(plan, cache, limits, (&bytes, shape), threads, background);
        }
        let net = Policy::of(&plan.annotations)?;
        let mut recipe = Recipe::of(&plan, limits.cpu_deadline.is_some())?;
        recipe.component_async = shape.wasi_0_3;
        let (engine, code, cache_hit, code_report) = match kind {
            WasmKind::Module => {
                let Loaded { engine, code: module, hit, report, .. } =
                    load::<Module>(&recipe, threads, &plan, kind, &bytes, cache, background)?;
                let name = plan.export.as_deref().unwrap_or("_start");
                match module.get_export(name) {
                    Some(ExternType::Func(ty)) if ty.params().len() == 0 => {}
                    Some(ExternType::Func(ty)) => {
                        return Err(Error::NotRunnable {
                            path: plan.wasm.clone(),
                            reason: format!("exported function {name:?} takes {} parameter(s); only functions without parameters can be called", ty.params().len()),
                        })
                    }
                    _ => {
                        let available: Vec<String> = module
                            .exports()
                            .filter(|e| matches!(e.ty(), ExternType::Func(_)))
                            .map(|e| e.name().to_string())
                            .collect();
                        return Err(Error::ExportNotFound {
                            path: plan.wasm.clone(),
                            name: name.to_string(),
                            available: if available.is_empty() { "none".into() } else { available.join(", ") },
                        });
                    }
                }
                let mut linker: Linker<ModuleState> = Linker::new(&engine);
                wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut ModuleState| &mut s.ctx)
                    .map_err(|e| invalid(&plan, kind, e))?;
                // wasmtime-wasi turns proc_exit(N >= 126) into an error (a
                // trap, so 134); a container's exit status is the guest's N,
                // as `exit(127)` or `exit(255)` means in any other container.
                linker.allow_shadowing(true);
                linker
                    .func_wrap("wasi_snapshot_preview1", "proc_exit", |code: i32| -> wasmtime::Result<()> {
                        Err(I32Exit(code).into())
                    })
                    .map_err(|e| invalid(&plan, kind, e))?;
                let pre = linker.instantiate_pre(&module).map_err(|e| Error::NotRunnable {
                    path: plan.wasm.clone(),
                    reason: format!("cannot be linked against WASI preview 1: {e:#}"),
                })?;
                // Preview 1 has no sockets: the policy has nothing to police.
                (engine, Code::Module(pre, wasi(&plan, &net)?.build_p1()), hit, report)
            }
            WasmKind::Component => {
                if let Some(name) = &plan.export {
                    return Err(Error::Unsupported(format!(
                        "{}#{name}: calling a component's export by name (only core modules support #name; components run wasi:cli/run)",
                        plan.wasm.display()
                    )));
                }
                let Loaded { engine, code: component, hit, report, .. } =
                    load::<Component>(&recipe, threads, &plan, kind, &bytes, cache, background)?;
                let exports: Vec<String> =
                    component.component_type().exports(&engine).map(|(n, _)| n.to_string()).collect();
                if exports.iter().any(|n| n.starts_with("wasi:cli/run@0.3")) {
                    let pre = link_command_0_3(&engine, &component, &plan)?;
                    let ctx = wasi(&plan, &net)?.build();
                    return Ok(Prepared {
                        plan,
                        engine,
                        code: Code::Component0_3(pre, ctx, net),
                        limits,
                        cache_hit: hit,
                        code_report: report,
                        fuel: recipe.tuning.fuel,
                        upgrade: None,
                    });
                }
                if !exports.iter().any(|n| n.starts_with("wasi:cli/run@0.2")) {
                    return Err(Error::NotRunnable {
                        path: plan.wasm.clone(),
                        reason: format!(
                            "component is neither a command nor an HTTP handler: it exports none of wasi:cli/run (0.2.x, 0.3.x), wasi:http/incoming-handler@0.2.x, wasi:http/handler@0.3.x (exports: {})",
                            if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
                        ),
                    });
                }
                let mut linker = wasmtime::component::Linker::<ComponentState>::new(&engine);
                wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| invalid(&plan, kind, e))?;
                // Outbound HTTP, for commands that import it.
                wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
                    .map_err(|e| invalid(&plan, kind, e))?;
                let pre =
                    linker.instantiate_pre(&component).and_then(CommandPre::new).map_err(|e| Error::NotRunnable {
                        path: plan.wasm.clone(),
                        reason: format!("cannot be linked against WASI preview 2 and wasi:http: {e:#}"),
                    })?;
                let ctx = wasi(&plan, &net)?.build();
                (engine, Code::Component(pre, ctx, net), hit, report)
            }
        };
        Ok(Prepared { plan, engine, code, limits, cache_hit, code_report, fuel: recipe.tuning.fuel, upgrade: None })
    }

    /// A served component (`wasi:http/proxy`, or WASI 0.3's
    /// `wasi:http/service`): linked for serving, its socket bound (so a busy
    /// port or a bad address fails here, at Create).
    fn proxy(
        mut plan: Plan,
        cache: Option<&Cache>,
        limits: Limits,
        (bytes, shape): (&[u8], Shape),
        threads: Threads,
        background: Option<OnBackground<'_>>,
    ) -> Result<Prepared> {
        let kind = WasmKind::Component;
        let net = Policy::of(&plan.annotations)?;
        let opts = crate::serve::ServeOptions::take(&mut plan)?;
        if opts.addr.port() < 1024 && opts.addr.port() != 0 && !limits.bind_privileged {
            return Err(Error::InvalidArgument {
                what: format!("listen address {} ({})", opts.addr, opts.addr_source),
                reason: "a port below 1024 needs CAP_NET_BIND_SERVICE, which the container's process lacks".into(),
            });
        }
        // The guest's grants, opened once here so a bad one fails Create
        // (each request opens its own).
        wasi(&plan, &net)?;
        let mut recipe = Recipe::of(&plan, true)?;
        recipe.serve_concurrency = Some(opts.max_concurrency);
        recipe.component_async = shape.wasi_0_3;
        let Loaded { engine, code: component, tier, hit, report: code_report } =
            load::<Component>(&recipe, threads, &plan, kind, bytes, cache, background)?;
        let pre = link_proxy(&engine, &component, &plan, recipe.component_async, false)?;
        // On a lower tier, the optimized code compiled in the background
        // replaces it while the server runs.
        let upgrade = (tier != Tier::Optimized && recipe.settings.compiler == Compiler::Auto && cache.is_some())
            .then(|| (recipe.clone(), plan.clone()));
        let listener = crate::serve::bind(&opts)?;
        let code =
            crate::serve::CodeSlot::new(crate::serve::Generation { engine: engine.clone(), pre, tier: tier.name() });
        let upgrade = upgrade.map(|(recipe, plan)| Upgrader { recipe, plan, slot: code.clone() });
        let server = crate::serve::Server {
            served: vec![crate::serve::Served {
                code,
                plan: plan.clone(),
                net,
                id: String::new(),
                variables: Default::default(),
            }],
            routes: None,
            listener,
            opts,
            limiter: GuestLimiter::default(),
            cpu_deadline: limits.cpu_deadline,
            fuel: recipe.tuning.fuel,
        };
        Ok(Prepared {
            plan,
            engine,
            code: Code::Proxy(Box::new(server)),
            limits,
            cache_hit: hit,
            code_report,
            fuel: recipe.tuning.fuel,
            upgrade,
        })
    }

    /// A Spin application: each component its HTTP trigger routes to,
    /// read, compiled (or loaded from `cache`; the optimized tier, as apps
    /// do not start on a lower one yet) and linked for serving with its own
    /// plan (see [`wasmbox_spin::component_plans`]); one listening socket,
    /// bound here, routes requests to them.
    fn app(mut plan: Plan, cache: Option<&Cache>, limits: Limits, threads: Threads) -> Result<Prepared> {
        let (app, rootfs) = wasmbox_spin::load(&plan)?;
        let opts =
            crate::serve::ServeOptions::take_for(&mut plan, wasmbox_spin::LISTEN_ENV, wasmbox_spin::DEFAULT_LISTEN)?;
        if opts.addr.port() < 1024 && opts.addr.port() != 0 && !limits.bind_privileged {
            return Err(Error::InvalidArgument {
                what: format!("listen address {} ({})", opts.addr, opts.addr_source),
                reason: format!(
                    "a port below 1024 needs CAP_NET_BIND_SERVICE, which the container's process lacks (set {} or annotation {})",
                    wasmbox_spin::LISTEN_ENV,
                    wasmbox_spec::annotations::HTTP_LISTEN
                ),
            });
        }
        let router = wasmbox_spin::Router::new(&app.http).map_err(|reason| Error::InvalidArgument {
            what: format!("{} trigger.http", app.manifest_guest),
            reason,
        })?;
        let denied = std::sync::Arc::<std::sync::atomic::AtomicU64>::default();
        let mut served = Vec::new();
        let mut reports = Vec::new();
        let (mut hits, mut first_engine, mut fuel) = (true, None, None);
        for c in wasmbox_spin::component_plans(&app, &plan, &rootfs)? {
            if !router.serves(&c.id) {
                continue;
            }
            let cplan = c.plan;
            let bytes =
                std::fs::read(&cplan.wasm).map_err(|e| Error::io(format!("reading {}", cplan.wasm.display()), e))?;
            let kind = detect(&cplan.wasm, &bytes)?;
            let what = format!("{} component {} ({})", app.manifest_guest, c.id, cplan.args[0]);
            if kind == WasmKind::Module {
                return Err(Error::Unsupported(format!(
                    "{what}: a core module (Spin's wasm32-wasip1 build); turning core modules into components with the preview-1 adapter is not supported yet: build it for wasm32-wasip2"
                )));
            }
            let shape = Shape::of(&cplan.wasm, &bytes)?;
            if !shape.serves_http {
                return Err(Error::NotRunnable {
                    path: cplan.wasm.clone(),
                    reason: format!("{what}: the HTTP trigger runs components that export wasi:http/incoming-handler"),
                });
            }
            let mut net = Policy::of(&cplan.annotations)?;
            net.denied = std::sync::Arc::clone(&denied);
            wasi(&cplan, &net)?;
            let mut recipe = Recipe::of(&cplan, true)?;
            recipe.serve_concurrency = Some(opts.max_concurrency);
            recipe.component_async = shape.wasi_0_3;
            let Loaded { engine, code: component, tier, hit, report } =
                load::<Component>(&recipe, threads, &cplan, kind, &bytes, cache, None)?;
            let pre = link_proxy(&engine, &component, &cplan, recipe.component_async, true)?;
            hits &= hit;
            reports.push(format!("{}: {report}", c.id));
            fuel = recipe.tuning.fuel;
            first_engine.get_or_insert_with(|| engine.clone());
            let code = crate::serve::CodeSlot::new(crate::serve::Generation { engine, pre, tier: tier.name() });
            let variables = std::sync::Arc::new(c.variables);
            served.push(crate::serve::Served { code, plan: cplan, net, id: c.id, variables });
        }
        let engine = first_engine.ok_or_else(|| Error::InvalidArgument {
            what: format!("{} trigger.http", app.manifest_guest),
            reason: "no public route runs a component".into(),
        })?;
        let listener = crate::serve::bind(&opts)?;
        let server = crate::serve::Server {
            served,
            routes: Some(crate::serve::AppRoutes { name: app.name.clone(), router }),
            listener,
            opts,
            limiter: GuestLimiter::default(),
            cpu_deadline: limits.cpu_deadline,
            fuel,
        };
        Ok(Prepared {
            plan,
            engine,
            code: Code::Proxy(Box::new(server)),
            limits,
            cache_hit: hits,
            code_report: reports.join("; "),
            fuel,
            upgrade: None,
        })
    }

    /// The guest's memory limiter: the annotation's cap, and within the
    /// container's memory limit what the instance does not hold itself.
    fn limiter(&self) -> GuestLimiter {
        let from_container = self.limits.container_memory.map(|l| {
            let own = crate::guest::own_rss().unwrap_or(0) + INSTANCE_HEADROOM;
            (
                l.saturating_sub(own).max(1 << 20),
                format!("the container's memory limit of {} MiB less the runtime's own use", l >> 20),
            )
        });
        let from_annotation = self.limits.guest_memory.map(|g| (g, format!("annotation {}", MEMORY_LIMIT)));
        // The lower of the two, where both are given.
        match [from_container, from_annotation].into_iter().flatten().min_by_key(|(limit, _)| *limit) {
            Some((limit, source)) => GuestLimiter::new(limit as usize, source),
            None => GuestLimiter::default(),
        }
    }

    /// Ends the guest once the process has used `deadline` of CPU time
    /// from now (what compiling it took before does not count): a thread
    /// sleeps for the time left and checks, so it wakes a few times in
    /// all, not periodically. Past the deadline it bumps the epoch every
    /// 10 ms until the process ends: a bump made before the store set its
    /// epoch deadline would otherwise be lost, and the loop run forever.
    fn watch_cpu(&self, deadline: std::time::Duration) {
        let engine = self.engine.clone();
        let start = process_cpu_time();
        let _ = std::thread::Builder::new().name("cpu-deadline".into()).spawn(move || loop {
            let used = process_cpu_time().saturating_sub(start);
            if used >= deadline {
                engine.increment_epoch();
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            std::thread::sleep(deadline - used);
        });
    }

    /// For a served component that started on a lower tier: what loads
    /// the optimized code into it once it is compiled.
    pub fn take_upgrader(&mut self) -> Option<Upgrader> {
        self.upgrade.take()
    }

    /// Runs the guest to completion and returns its exit status: the guest's
    /// exit code, 0 when its entry returns, [`TRAP_EXIT`] on a trap (written
    /// to stderr with its wasm backtrace), [`OUT_OF_MEMORY_EXIT`] at its
    /// memory limit.
    pub fn run(self) -> Result<i32> {
        self.run_to_outcome().map(|o| o.code)
    }

    /// [`Prepared::run`], telling also whether the memory limit ended it.
    pub fn run_to_outcome(self) -> Result<Outcome> {
        let limiter = self.limiter();
        // A served component's deadline is each request's (see serve).
        if let (Some(d), false) = (self.limits.cpu_deadline, matches!(self.code, Code::Proxy(_))) {
            self.watch_cpu(d);
        }
        let deadline = self.limits.cpu_deadline;
        let fuel = self.fuel;
        let outcome = match self.code {
            Code::Module(pre, ctx) => {
                let mut store = new_store(&self.engine, ModuleState { ctx, limiter }, deadline, fuel);
                let name = self.plan.export.as_deref().unwrap_or("_start");
                pre.instantiate(&mut store).and_then(|instance| {
                    let func = instance.get_func(&mut store, name).expect("export checked at prepare time");
                    let mut results = vec![wasmtime::Val::I32(0); func.ty(&store).results().len()];
                    func.call(&mut store, &[], &mut results)
                })
            }
            Code::Proxy(mut server) => {
                // Each request's instance gets the guest's limit.
                server.limiter = limiter;
                return server.run().map(|code| Outcome { code, out_of_memory: false });
            }
            Code::Component0_3(pre, ctx, net) => {
                let mut store = new_store(&self.engine, ComponentState::new(ctx, limiter, &net), deadline, fuel);
                run_command_0_3(&pre, &mut store)
            }
            Code::Component(pre, ctx, net) => {
                let mut store = new_store(&self.engine, ComponentState::new(ctx, limiter, &net), deadline, fuel);
                pre.instantiate(&mut store).and_then(|cmd| cmd.wasi_cli_run().call_run(&mut store)).and_then(
                    |r| match r {
                        Ok(()) => Ok(()),
                        Err(()) => Err(I32Exit(1).into()),
                    },
                )
            }
        };
        let exited = |code| Outcome { code, out_of_memory: false };
        Ok(match outcome {
            Ok(()) => exited(0),
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => exited(exit.0),
                None => {
                    let _ = std::io::stderr().write_all(trap_report(&self.plan, &e, deadline).as_bytes());
                    if e.chain().any(|c| c.is::<MemoryLimitReached>()) {
                        Outcome { code: OUT_OF_MEMORY_EXIT, out_of_memory: true }
                    } else {
                        exited(TRAP_EXIT)
                    }
                }
            },
        })
    }
}

/// Runs a WASI 0.3 command's `wasi:cli/run` to its end on a runtime of
/// the calling thread: the guest's tasks, streams and futures are driven
/// by the store's event loop (`run_concurrent`) until `run` returns.
fn run_command_0_3(
    pre: &wasmtime_wasi::p3::bindings::CommandPre<ComponentState>,
    store: &mut Store<ComponentState>,
) -> wasmtime::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let run = runtime.block_on(async {
        let command = pre.instantiate_async(&mut *store).await?;
        store.run_concurrent(async move |store| command.wasi_cli_run().call_run(store).await).await?
    })?;
    // `run` returned `err`: the command failed, status 1 (as 0.2's).
    run.map_err(|()| I32Exit(1).into())
}

/// Store data that carries the guest's memory limiter.
trait Limited: 'static {
    fn limiter(&mut self) -> &mut GuestLimiter;
}

impl Limited for ModuleState {
    fn limiter(&mut self) -> &mut GuestLimiter {
        &mut self.limiter
    }
}

impl Limited for ComponentState {
    fn limiter(&mut self) -> &mut GuestLimiter {
        &mut self.limiter
    }
}

/// A store for one run of the guest: its memory limiter in force and, with
/// a CPU deadline, interrupted at the first epoch tick.
fn new_store<T: Limited>(
    engine: &Engine,
    data: T,
    deadline: Option<std::time::Duration>,
    fuel: Option<u64>,
) -> Store<T> {
    let mut store = Store::new(engine, data);
    store.limiter(|s| s.limiter());
    if let Some(fuel) = fuel {
        // The engine meters fuel: setting it cannot fail.
        let _ = store.set_fuel(fuel);
    }
    if deadline.is_some() {
        store.set_epoch_deadline(1);
    }
    store
}

/// What a trap looks like on the guest's stderr: the wasm (as the guest
/// names it) and the cause first, then the wasm backtrace.
fn trap_report(plan: &Plan, e: &wasmtime::Error, deadline: Option<std::time::Duration>) -> String {
    let file = plan.args.first().map(String::as_str).unwrap_or("guest");
    let trap = e.downcast_ref::<wasmtime::Trap>();
    let cause = match (trap, deadline) {
        (Some(wasmtime::Trap::Interrupt), Some(d)) => {
            format!("CPU deadline reached: the guest used {:?} of CPU time (annotation {})", d, CPU_DEADLINE)
        }
        (Some(wasmtime::Trap::OutOfFuel), _) => {
            format!("{} (annotation {})", wasmtime::Trap::OutOfFuel, wasmbox_spec::annotations::FUEL)
        }
        (Some(trap), _) => trap.to_string(),
        // An error of the host's (the memory limit): its own words.
        (None, _) => format!("{}", e.root_cause()),
    };
    match e.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(bt) => format!("wasmbox: {file}: {cause}\n{bt}\n"),
        None => format!("wasmbox: {file}: {cause}\n"),
    }
}

/// CPU time this process has used.
fn process_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
