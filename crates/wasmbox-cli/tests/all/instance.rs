//! The instance-process protocol: prepare errors come back with their kind,
//! the guest runs only after start, and its exit status is the process's.
use crate::{tmpdir, Scratch, WASMBOX};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::path::Path;
use wasmbox_instance::{spawn, SpawnOptions};
use wasmbox_spec::ErrorKind;

fn bundle(name: &str, args: &[&str]) -> Scratch {
    let b = tmpdir(name);
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::copy(test_guests::P1, b.join("rootfs/app.wasm")).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/", "env": ["A=b"]},
        "linux": {"namespaces": [{"type": "mount"}]},
    });
    std::fs::write(b.join("config.json"), config.to_string()).unwrap();
    b
}

fn opts<'a>(b: &'a Path, out: Option<OwnedFd>) -> SpawnOptions<'a> {
    SpawnOptions {
        exe: Path::new(WASMBOX),
        bundle: b,
        cache_dir: Some(b),
        stdin: None,
        stdout: out,
        stderr: None,
        cgroup_procs: Vec::new(),
        exec: None,
    }
}

#[test]
fn runs_after_start_with_its_exit_status() {
    let b = bundle("inst-ok", &["/app.wasm", "exit", "7"]);
    let mut inst = spawn(opts(&b, None)).unwrap();
    inst.start().unwrap();
    assert_eq!(
        waitpid(Pid::from_raw(inst.pid as i32), None).unwrap(),
        WaitStatus::Exited(Pid::from_raw(inst.pid as i32), 7)
    );
}

#[test]
fn output_goes_to_the_given_fd() {
    let b = bundle("inst-out", &["/app.wasm", "hello"]);
    let out = std::fs::File::create(b.join("out.txt")).unwrap();
    let mut inst = spawn(opts(&b, Some(out.into()))).unwrap();
    inst.start().unwrap();
    waitpid(Pid::from_raw(inst.pid as i32), None).unwrap();
    assert!(std::fs::read_to_string(b.join("out.txt")).unwrap().starts_with("hello from wasm\n"));
}

#[test]
fn never_started_exits_quietly_when_dropped() {
    let b = bundle("inst-drop", &["/app.wasm", "hello"]);
    let inst = spawn(opts(&b, None)).unwrap();
    let pid = Pid::from_raw(inst.pid as i32);
    drop(inst);
    assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 0));
}

#[test]
fn prepare_errors_keep_their_kind() {
    let b = bundle("inst-missing", &["/nope.wasm"]);
    let e = spawn(opts(&b, None)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("/nope.wasm"), "{}", e.message);
    let b = bundle("inst-export", &["/app.wasm#nope"]);
    let e = spawn(opts(&b, None)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("nope"));
}

#[test]
fn inherits_nothing_of_its_parents_environment() {
    let b = bundle("inst-env", &["/app.wasm", "hello"]);
    let inst = spawn(opts(&b, None)).unwrap();
    let pid = Pid::from_raw(inst.pid as i32);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    drop(inst);
    waitpid(pid, None).unwrap();
    let vars: Vec<String> =
        environ.split(|&c| c == 0).filter(|v| !v.is_empty()).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    // This test process has PATH, HOME and the rest; the instance has none of them.
    assert!(std::env::var_os("PATH").is_some());
    for v in &vars {
        let key = v.split('=').next().unwrap();
        assert!(
            key == "TOKIO_WORKER_THREADS" || wasmbox_instance::INHERITED_ENV.contains(&key),
            "instance inherited {v:?}: {vars:?}"
        );
    }
    assert!(vars.contains(&format!("WASMBOX_CACHE_DIR={}", b.display())), "{vars:?}");
}
