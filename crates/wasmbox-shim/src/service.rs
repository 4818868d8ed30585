//! The containerd Task service: one shim process serves any number of
//! containers, keyed by id. A backend (see [`crate::backend`]) runs each
//! container's process; this file keeps their state, answers containerd,
//! and publishes the task events.

use crate::backend::{Backend, CreateRequest, ExecProcess, ExecRequest, Process};
use crate::error::ShimError;
use crate::events::EventSink;
use crate::state::TaskState;
use crate::stdio::Stdio;
use containerd_shim::api::{self, Status};
use containerd_shim::monitor::{Subject, Subscription};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM as TaskOom, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// File in the bundle holding the instance's pid, for `shim delete` after a crash.
pub const PID_FILE: &str = "init.pid";

struct Container {
    bundle: PathBuf,
    pid: u32,
    state: TaskState,
    exit_status: u32,
    exited_at: Option<Timestamp>,
    process: Box<dyn Process>,
    stdio: Stdio,
    /// Processes added by Exec, by exec id.
    execs: HashMap<String, Exec>,
}

/// A process added to a container by Exec.
struct Exec {
    process: Box<dyn ExecProcess>,
    /// Created, Running or Stopped.
    state: TaskState,
    /// 0 until started.
    pid: u32,
    exit_status: u32,
    exited_at: Option<Timestamp>,
    stdio: Stdio,
}

impl Container {
    fn exec_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Exec, ShimError> {
        self.execs.get_mut(exec_id).ok_or_else(|| ShimError::NotFound(format!("{id}/exec {exec_id}")))
    }

    /// Records the instance process's exit; its stdin pump ends.
    fn stopped(&mut self, code: i32, at: Timestamp) {
        self.state = TaskState::Stopped;
        self.exit_status = code as u32;
        self.exited_at = Some(at);
        self.stdio.close_stdin();
    }
}

#[derive(Default)]
struct Table {
    containers: HashMap<String, Container>,
    /// Ids whose Create is under way, so a second Create of the same id fails.
    creating: std::collections::HashSet<String>,
    /// Ids whose Delete is cleaning up (out of `containers`, not yet
    /// answered): the daemon may not go before it has answered.
    deleting: std::collections::HashSet<String>,
    /// Instance processes spawned by a Create still under way, with their
    /// exit status if they already exited. Exits of other children (mount
    /// helpers) are not kept: their pids may be reused by later instances.
    launching: HashMap<u32, Option<i32>>,
    /// Containers announced by a starting shim of the same group (see
    /// [`Service::connect`]) whose Create has not arrived yet.
    expected: HashMap<String, Instant>,
    /// containerd asked to shut down while only expected containers or
    /// deletes under way kept us up.
    shutdown_asked: bool,
    /// Shutdown was accepted: the daemon is going away and takes no new container.
    closing: bool,
}

/// How long an announced container keeps its shim up waiting for Create.
const EXPECT_FOR: Duration = Duration::from_secs(30);

impl Table {
    fn get(&self, id: &str) -> Result<&Container, ShimError> {
        self.containers.get(id).ok_or_else(|| ShimError::NotFound(id.to_string()))
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Container, ShimError> {
        self.containers.get_mut(id).ok_or_else(|| ShimError::NotFound(id.to_string()))
    }

    /// No container, none being created, none announced: the daemon may go.
    fn idle(&mut self) -> bool {
        self.expected.retain(|_, at| at.elapsed() < EXPECT_FOR);
        self.containers.is_empty() && self.creating.is_empty() && self.deleting.is_empty() && self.expected.is_empty()
    }
}

/// The Task service, generic over where its events go.
pub struct Service<E: EventSink> {
    backend: Box<dyn Backend>,
    table: Mutex<Table>,
    changed: Condvar,
    events: Arc<E>,
    exit: Arc<ExitSignal>,
}

fn not_supported(what: &str) -> TtrpcError {
    ShimError::Unimplemented(what.to_string()).into()
}
type TtrpcError = containerd_shim::protos::ttrpc::Error;

impl<E: EventSink> Service<E> {
    /// `exe` is the binary run as each container's instance process.
    pub fn new(exe: PathBuf, events: E, exit: Arc<ExitSignal>) -> Arc<Self> {
        Self::with_backend(
            Box::new(crate::backend::Dispatch {
                wasm: Box::new(crate::wasm::WasmBackend::new(exe)),
                linux: Box::new(crate::linux::LinuxBackend::new("runc".into())),
            }),
            events,
            exit,
        )
    }

    pub fn with_backend(backend: Box<dyn Backend>, events: E, exit: Arc<ExitSignal>) -> Arc<Self> {
        Arc::new(Service { backend, table: Mutex::default(), changed: Condvar::new(), events: Arc::new(events), exit })
    }

    /// Feeds process exits (from the reaper's monitor) into container state.
    /// It blocks with no timeout (an idle shim never wakes up) unless a
    /// Shutdown waits on announced containers, whose expiry it then awaits.
    pub fn watch_exits(self: &Arc<Self>, exits: Subscription) {
        use std::sync::mpsc::RecvTimeoutError;
        let svc = Arc::clone(self);
        std::thread::Builder::new()
            .name("exits".into())
            .spawn(move || loop {
                let ev = match svc.close_deadline() {
                    None => exits.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(at) => exits.rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                };
                match ev {
                    Ok(ev) => {
                        if let Subject::Pid(pid) = ev.subject {
                            // pid 0 only nudges: a Shutdown set a deadline.
                            if pid > 0 {
                                svc.on_exit(pid as u32, ev.exit_code);
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => svc.maybe_close(),
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            })
            .expect("spawn exit watcher");
    }

    /// When a pending Shutdown should be looked at again: the expiry of the
    /// last announced container (none while a delete is under way: its end
    /// looks again).
    fn close_deadline(&self) -> Option<Instant> {
        let t = self.lock();
        if !t.shutdown_asked || t.closing || !t.deleting.is_empty() {
            return None;
        }
        Some(t.expected.values().max().map(|at| *at + EXPECT_FOR).unwrap_or_else(Instant::now))
    }

    /// Completes a Shutdown that waited on announced containers which never
    /// came, or on deletes that have now answered.
    fn maybe_close(&self) {
        let mut t = self.lock();
        if t.shutdown_asked && !t.closing && t.idle() {
            t.closing = true;
            log::info!("shutdown: nothing left to wait for");
            self.exit.signal();
        }
    }

    fn publish(&self, topic: &'static str, event: &impl containerd_shim::protos::protobuf::Message) {
        self.events.publish(topic, crate::events::encode(event));
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_exit(&self, pid: u32, code: i32) {
        let mut t = self.lock();
        let Some((id, c)) = t.containers.iter_mut().find(|(_, c)| c.pid == pid && c.state != TaskState::Stopped) else {
            if let Some(slot) = t.launching.get_mut(&pid) {
                *slot = Some(code);
            } else {
                self.on_exec_exit(&mut t, pid, code);
            }
            return;
        };
        if c.process.ended_out_of_memory() {
            // Before the exit, as the kernel's OOM event comes: CRI then
            // gives the container the reason OOMKilled.
            log::info!("container {id}: the guest was ended at its memory limit");
            self.publish(topics::TASK_OOM_EVENT_TOPIC, &TaskOom { container_id: id.clone(), ..Default::default() });
        }
        let now = Timestamp::now();
        c.stopped(code, now.clone());
        log::info!("container {id}: pid {pid} exited with status {code}");
        self.publish_exit(id, pid, code, now);
        drop(t);
        self.changed.notify_all();
    }

    /// An exec'd process exited: record it and tell containerd.
    fn on_exec_exit(&self, t: &mut Table, pid: u32, code: i32) {
        for (id, c) in t.containers.iter_mut() {
            let Some((exec_id, e)) = c.execs.iter_mut().find(|(_, e)| e.pid == pid && e.state == TaskState::Running)
            else {
                continue;
            };
            let now = Timestamp::now();
            e.state = TaskState::Stopped;
            e.exit_status = code as u32;
            e.exited_at = Some(now.clone());
            e.stdio.close_stdin();
            log::info!("container {id}: exec {exec_id} (pid {pid}) exited with status {code}");
            self.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                &(TaskExit {
                    container_id: id.clone(),
                    id: exec_id.clone(),
                    pid,
                    exit_status: code as u32,
                    exited_at: MessageField::some(now),
                    ..Default::default()
                }),
            );
            self.changed.notify_all();
            return;
        }
    }

    fn publish_exit(&self, id: &str, pid: u32, code: i32, at: Timestamp) {
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            &(TaskExit {
                container_id: id.to_string(),
                id: id.to_string(),
                pid,
                exit_status: code as u32,
                exited_at: MessageField::some(at),
                ..Default::default()
            }),
        );
    }

    /// Creates the container; also returns its exit when the instance
    /// process already died while it was being created.
    fn create_inner(&self, req: &api::CreateTaskRequest) -> Result<(u32, Option<(i32, Timestamp)>), ShimError> {
        let id = req.id.clone();
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(format!("container {id:?}: restoring from a checkpoint")));
        }
        {
            let mut t = self.lock();
            if t.closing {
                return Err(ShimError::FailedPrecondition { id, reason: "this shim is shutting down; retry".into() });
            }
            if t.containers.contains_key(&id) || !t.creating.insert(id.clone()) {
                return Err(ShimError::AlreadyExists(id));
            }
            t.expected.remove(&id);
        }
        let watched = Mutex::new(Vec::new());
        let result = self.create_unregistered(req, &watched);
        let mut t = self.lock();
        t.creating.remove(&id);
        let watched = watched.into_inner().unwrap_or_else(|p| p.into_inner());
        let early = result.as_ref().ok().and_then(|c| t.launching.get(&c.pid).copied().flatten());
        for pid in watched {
            t.launching.remove(&pid);
        }
        let mut c = result?;
        let early = early.map(|code| {
            let now = Timestamp::now();
            c.stopped(code, now.clone());
            (code, now)
        });
        let pid = c.pid;
        t.containers.insert(id, c);
        Ok((pid, early))
    }

    /// Opens stdio and asks the backend for the container; undoes all of
    /// it when any step fails. Every pid the backend asks to watch is
    /// noted in `launching` (and in `watched`, for the caller to forget).
    fn create_unregistered(
        &self,
        req: &api::CreateTaskRequest,
        watched: &Mutex<Vec<u32>>,
    ) -> Result<Container, ShimError> {
        let id = &req.id;
        let bundle = PathBuf::from(&req.bundle);
        let (stdio, fds) = Stdio::open(id, &req.stdin, &req.stdout, &req.stderr)?;
        let watch = |pid: u32| {
            self.lock().launching.insert(pid, None);
            watched.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
        };
        let created = self.backend.create(CreateRequest {
            id,
            bundle: &bundle,
            rootfs: &req.rootfs,
            mounted_rootfs: None,
            stdio: fds,
            terminal: req.terminal,
            watch: &watch,
        });
        let process = match created {
            Ok(p) => p,
            Err(e) => {
                stdio.close_stdin();
                return Err(e);
            }
        };
        let pid = process.pid();
        let _ = std::fs::write(bundle.join(PID_FILE), pid.to_string());
        let (events, container_id) = (Arc::clone(&self.events), id.clone());
        process.watch_oom(Box::new(move || {
            log::info!("container {container_id}: OOM killer acted");
            let ev = TaskOom { container_id: container_id.clone(), ..Default::default() };
            events.publish(topics::TASK_OOM_EVENT_TOPIC, crate::events::encode(&ev));
        }));
        Ok(Container {
            bundle,
            pid,
            state: TaskState::Created,
            exit_status: 0,
            exited_at: None,
            process,
            stdio,
            execs: HashMap::new(),
        })
    }

    /// Waits (bounded) until the container's process has been reaped.
    fn wait_stopped<'a>(
        &'a self,
        mut t: MutexGuard<'a, Table>,
        id: &str,
        limit: Option<Duration>,
    ) -> Result<MutexGuard<'a, Table>, ShimError> {
        let deadline = limit.map(|l| std::time::Instant::now() + l);
        loop {
            let c = t.get(id)?;
            if c.state == TaskState::Stopped {
                return Ok(t);
            }
            t = match deadline {
                None => self.changed.wait(t).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(ShimError::FailedPrecondition {
                            id: id.to_string(),
                            reason: "process did not exit after SIGKILL".into(),
                        });
                    }
                    self.changed.wait_timeout(t, left).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        }
    }
}

/// Execs go only into a running task: `cannot VERB a task that is ...`.
fn running(c: &Container, id: &str, verb: &str) -> Result<(), ShimError> {
    if c.state == TaskState::Running {
        Ok(())
    } else {
        Err(ShimError::FailedPrecondition {
            id: id.to_string(),
            reason: format!("cannot {verb} a task that is {:?}", c.state),
        })
    }
}

fn status_of(state: TaskState) -> Status {
    match state {
        TaskState::Created => Status::CREATED,
        TaskState::Running => Status::RUNNING,
        TaskState::Paused => Status::PAUSED,
        TaskState::Stopped => Status::STOPPED,
    }
}

impl<E: EventSink> Service<E> {
    /// Exec: the backend adds a process to the running container (not
    /// started until Start with its exec id).
    fn exec_inner(&self, req: &api::ExecProcessRequest) -> Result<(), ShimError> {
        let (id, exec_id) = (&req.id, &req.exec_id);
        let spec = req.spec.as_ref().map(|a| a.value.clone()).ok_or_else(|| {
            ShimError::InvalidArgument(format!("container {id:?}: exec {exec_id:?} without a process spec"))
        })?;
        let (stdio, fds) = Stdio::open(exec_id, &req.stdin, &req.stdout, &req.stderr)?;
        // One look at the table: checked and added under the same lock.
        let mut t = self.lock();
        let added = t.get_mut(id).and_then(|c| {
            running(c, id, "exec in")?;
            if c.execs.contains_key(exec_id) {
                return Err(ShimError::AlreadyExists(format!("{id}/exec {exec_id}")));
            }
            c.process.exec(ExecRequest { exec_id, spec: &spec, stdio: fds, terminal: req.terminal }).map(|p| (c, p))
        });
        match added {
            Ok((c, process)) => {
                let exec = Exec { process, state: TaskState::Created, pid: 0, exit_status: 0, exited_at: None, stdio };
                c.execs.insert(exec_id.clone(), exec);
                Ok(())
            }
            Err(e) => {
                stdio.close_stdin();
                Err(e)
            }
        }
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<api::StartResponse, ShimError> {
        let mut t = self.lock();
        let c = t.get_mut(id)?;
        running(c, id, &format!("start exec {exec_id} in"))?;
        let e = c.exec_mut(id, exec_id)?;
        e.state.check_start(&format!("{id}/exec {exec_id}"))?;
        // The table stays locked until the pid is recorded: an exit reaped
        // meanwhile waits for it (see `on_exec_exit`).
        let pid = e.process.start()?;
        e.pid = pid;
        e.state = TaskState::Running;
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            &(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    fn delete_exec(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        let mut t = self.lock();
        let c = t.get_mut(id)?;
        let e = c.exec_mut(id, exec_id)?;
        if e.state == TaskState::Running {
            return Err(ShimError::FailedPrecondition {
                id: id.to_string(),
                reason: format!("cannot delete exec {exec_id}: it is running"),
            });
        }
        let mut e = c.execs.remove(exec_id).expect("checked above");
        drop(t);
        e.stdio.close_stdin();
        e.process.cleanup();
        Ok(api::DeleteResponse {
            pid: e.pid,
            exit_status: e.exit_status,
            exited_at: timestamp(&e.exited_at),
            ..Default::default()
        })
    }
}

fn timestamp(t: &Option<Timestamp>) -> MessageField<Timestamp> {
    MessageField::from_option(t.clone())
}

impl<E: EventSink> Task for Service<E> {
    fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} bundle {}", req.id, req.bundle);
        let (pid, early_exit) = self.create_inner(&req)?;
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            &(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
        if let Some((code, at)) = early_exit {
            log::info!("container {}: pid {pid} exited with status {code} before it was started", req.id);
            self.publish_exit(&req.id, pid, code, at);
        }
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.start_exec(&req.id, &req.exec_id)?);
        }
        let mut t = self.lock();
        let c = t.get_mut(&req.id)?;
        c.state.check_start(&req.id)?;
        c.process.start()?;
        c.state = TaskState::Running;
        let pid = c.pid;
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            &(TaskStart { container_id: req.id.clone(), pid, ..Default::default() }),
        );
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let mut t = self.lock();
        if !req.exec_id.is_empty() {
            let e = t.get_mut(&req.id)?.exec_mut(&req.id, &req.exec_id)?;
            return Ok(api::StateResponse {
                id: req.exec_id.clone(),
                exec_id: req.exec_id.clone(),
                pid: e.pid,
                status: status_of(e.state).into(),
                stdin: e.stdio.paths.0.clone(),
                stdout: e.stdio.paths.1.clone(),
                stderr: e.stdio.paths.2.clone(),
                exit_status: e.exit_status,
                exited_at: timestamp(&e.exited_at),
                ..Default::default()
            });
        }
        let c = t.get(&req.id)?;
        let status = status_of(c.state);
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: c.pid,
            status: status.into(),
            stdin: c.stdio.paths.0.clone(),
            stdout: c.stdio.paths.1.clone(),
            stderr: c.stdio.paths.2.clone(),
            exit_status: c.exit_status,
            exited_at: timestamp(&c.exited_at),
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        if !req.exec_id.is_empty() {
            let mut t = self.lock();
            loop {
                let e = t.get_mut(&req.id)?.exec_mut(&req.id, &req.exec_id)?;
                if e.state == TaskState::Stopped {
                    return Ok(api::WaitResponse {
                        exit_status: e.exit_status,
                        exited_at: timestamp(&e.exited_at),
                        ..Default::default()
                    });
                }
                t = self.changed.wait(t).unwrap_or_else(|p| p.into_inner());
            }
        }
        let t = self.wait_stopped(self.lock(), &req.id, None)?;
        let c = &t.containers[&req.id];
        Ok(api::WaitResponse { exit_status: c.exit_status, exited_at: timestamp(&c.exited_at), ..Default::default() })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        // Any signal number, real-time ones included (a common STOPSIGNAL is
        // SIGRTMIN+3), as runc delivers them.
        let signal = req.signal as i32;
        if !(1..=libc::SIGRTMAX()).contains(&signal) {
            return Err(
                ShimError::InvalidArgument(format!("container {:?}: invalid signal {}", req.id, req.signal)).into()
            );
        }
        let mut t = self.lock();
        let c = t.get_mut(&req.id)?;
        if !req.exec_id.is_empty() {
            let e = c.exec_mut(&req.id, &req.exec_id)?;
            if e.state != TaskState::Running {
                let what = if e.state == TaskState::Created { "not started" } else { "already finished" };
                return Err(ShimError::NotFound(format!("{}/exec {}: process {what}", req.id, req.exec_id)).into());
            }
            e.process.kill(signal)?;
            return Ok(api::Empty::new());
        }
        if !c.state.can_kill() {
            return Err(ShimError::NotFound(format!("{}: process already finished", req.id)).into());
        }
        c.process.kill(signal, req.all)?;
        if signal == libc::SIGKILL && c.state == TaskState::Paused {
            // The backend thawed it so that it dies.
            c.state = TaskState::Running;
        }
        Ok(api::Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.delete_exec(&req.id, &req.exec_id)?);
        }
        let mut t = self.lock();
        let c = t.get(&req.id)?;
        c.state.check_delete(&req.id)?;
        if c.state == TaskState::Created {
            // Never started: end the waiting process and reap it.
            let id = req.id.clone();
            if let Some(c) = t.containers.get_mut(&id) {
                let _ = c.process.kill(libc::SIGKILL, true);
            }
            t = self.wait_stopped(t, &req.id, Some(Duration::from_secs(10)))?;
        }
        let mut c = t.containers.remove(&req.id).expect("checked above");
        t.deleting.insert(req.id.clone());
        drop(t);
        c.stdio.close_stdin();
        for e in c.execs.values_mut() {
            e.stdio.close_stdin();
            e.process.cleanup();
        }
        c.process.cleanup();
        let _ = std::fs::remove_file(c.bundle.join(PID_FILE));
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            &(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: c.pid,
                exit_status: c.exit_status,
                exited_at: timestamp(&c.exited_at),
                ..Default::default()
            }),
        );
        let resp = api::DeleteResponse {
            pid: c.pid,
            exit_status: c.exit_status,
            exited_at: timestamp(&c.exited_at),
            ..Default::default()
        };
        self.lock().deleting.remove(&req.id);
        // A Shutdown that came in meanwhile waited for this delete: the exit
        // watcher completes it, on its own thread, so this answer is on its
        // way first (ttrpc's sync server cuts connections on shutdown, and
        // has no graceful drain to wait for it).
        let _ = containerd_shim::monitor::monitor_notify_by_pid(0, 0);
        Ok(resp)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let t = self.lock();
        let c = t.get(&req.id)?;
        let processes = if c.state == TaskState::Stopped {
            vec![]
        } else {
            c.process
                .pids()
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo { pid, ..Default::default() })
                .collect()
        };
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let t = self.lock();
        let c = t.get(&req.id)?;
        let stats = c.process.stats()?;
        Ok(api::StatsResponse { stats: MessageField::some(stats), ..Default::default() })
    }

    /// containerd connects with the id of a container it knows. A starting
    /// shim of the same group connects with the id of a container about to be
    /// created here: this daemon then stays up until that Create arrives (or
    /// refuses, when it is already closing, so the newcomer serves instead).
    fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let mut t = self.lock();
        let task_pid = t.containers.get(&req.id).map(|c| c.pid).unwrap_or(0);
        if task_pid == 0 && !req.id.is_empty() && !t.creating.contains(&req.id) {
            if t.closing {
                return Err(ShimError::FailedPrecondition {
                    id: req.id.clone(),
                    reason: "this shim is shutting down".into(),
                }
                .into());
            }
            t.expected.insert(req.id.clone(), Instant::now());
        }
        drop(t);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let mut t = self.lock();
        if t.idle() {
            t.closing = true;
            log::info!("shutdown: no containers left");
            self.exit.signal();
        } else if t.containers.is_empty() && t.creating.is_empty() {
            // Only announced containers (close when they expire) or deletes
            // still answering (close when they have) keep us.
            t.shutdown_asked = true;
            drop(t);
            // Wake the exit watcher, which then waits for that expiry.
            let _ = containerd_shim::monitor::monitor_notify_by_pid(0, 0);
        }
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        log::debug!("close_io {} exec {:?} stdin={}", req.id, req.exec_id, req.stdin);
        let mut t = self.lock();
        let c = t.get_mut(&req.id)?;
        let stdio = if req.exec_id.is_empty() { &c.stdio } else { &c.exec_mut(&req.id, &req.exec_id)?.stdio };
        if req.stdin {
            stdio.close_stdin();
        }
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.exec_inner(&req)?;
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            &(TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() }),
        );
        Ok(api::Empty::new())
    }
    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let mut t = self.lock();
        let c = t.get_mut(&req.id)?;
        c.state.check_pause(&req.id)?;
        c.process.pause()?;
        c.state = TaskState::Paused;
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            &(TaskPaused { container_id: req.id.clone(), ..Default::default() }),
        );
        Ok(api::Empty::new())
    }
    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let mut t = self.lock();
        let c = t.get_mut(&req.id)?;
        c.state.check_resume(&req.id)?;
        c.process.resume()?;
        c.state = TaskState::Running;
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            &(TaskResumed { container_id: req.id.clone(), ..Default::default() }),
        );
        Ok(api::Empty::new())
    }
    fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        Err(not_supported("checkpoint"))
    }
    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let mut t = self.lock();
        let c = t.get_mut(&req.id)?;
        if req.exec_id.is_empty() {
            c.process.resize_pty(req.width, req.height)?;
        } else {
            c.exec_mut(&req.id, &req.exec_id)?.process.resize_pty(req.width, req.height)?;
        }
        Ok(api::Empty::new())
    }
    /// CRI's UpdateContainerResources and `ctr task update`: the new
    /// `LinuxResources` (JSON in an Any) applied to the running container.
    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources: oci_spec::runtime::LinuxResources = match req.resources.as_ref() {
            Some(any) => serde_json::from_slice(&any.value).map_err(|e| {
                ShimError::InvalidArgument(format!(
                    "container {:?}: update: resources are not LinuxResources JSON: {e}",
                    req.id
                ))
            })?,
            None => return Ok(api::Empty::new()),
        };
        let mut t = self.lock();
        let c = t.get_mut(&req.id)?;
        if c.state == TaskState::Stopped {
            return Err(ShimError::FailedPrecondition {
                id: req.id.clone(),
                reason: "cannot update a stopped task".into(),
            }
            .into());
        }
        c.process.update(&resources)?;
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_containers_keep_the_shim_up_until_they_expire() {
        let mut t = Table::default();
        assert!(t.idle());
        t.expected.insert("c1".into(), Instant::now());
        assert!(!t.idle(), "an announced container must keep the daemon up");
        t.expected.insert("c1".into(), Instant::now() - EXPECT_FOR - Duration::from_secs(1));
        assert!(t.idle(), "an announcement that never led to a Create expires");
        t.creating.insert("c2".into());
        assert!(!t.idle());
        t.creating.clear();
        t.deleting.insert("c3".into());
        assert!(!t.idle(), "a delete still cleaning up must keep the daemon up");
    }
}
