//! Each fixture installed, installed again (nothing changes), uninstalled
//! (every file as it was, byte for byte); refusals name the file and
//! change nothing; the shim is replaced atomically and put back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmbox_node::handler::{self, Found, Version};
use wasmbox_node::{install, uninstall, InstallOptions, Report, Restart, UninstallOptions};

const SHIM: &[u8] = b"\x7fELF wasmbox shim, test build 1\n";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A node in a temporary directory: a fixture's files in `dir` (what named
/// /etc/containerd names `dir`), a bin dir, a state file, a shim to
/// install and a containerd that reports a version.
struct Node {
    root: tempfile::TempDir,
    dir: PathBuf,
}

fn copy_tree(from: &Path, to: &Path, rewrite: &dyn Fn(&str) -> String) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest, rewrite);
        } else {
            std::fs::write(&dest, rewrite(&std::fs::read_to_string(e.path()).unwrap())).unwrap();
        }
    }
}

fn files_under(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            files_under(&e.path(), out);
        } else {
            out.insert(e.path(), std::fs::read(e.path()).unwrap());
        }
    }
}

impl Node {
    /// `fixture` staged under its own name; `version` is what `containerd
    /// --version` says.
    fn new(fixture: Option<&str>, version: &str) -> Node {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(fixture.unwrap_or("etc-containerd"));
        match fixture {
            Some(f) => {
                let d = dir.display().to_string();
                copy_tree(&fixtures().join(f), &dir, &|t| t.replace("/etc/containerd", &d));
            }
            None => std::fs::create_dir_all(&dir).unwrap(),
        }
        let tools = root.path().join("tools");
        std::fs::create_dir_all(&tools).unwrap();
        let module = if version.starts_with('1') { "" } else { "/v2" };
        let containerd = tools.join("containerd");
        std::fs::write(
            &containerd,
            format!("#!/bin/sh\necho 'containerd github.com/containerd/containerd{module} {version} test'\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&containerd, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(tools.join("containerd-shim-wasmbox-v1"), SHIM).unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        Node { root, dir }
    }

    fn bin(&self) -> PathBuf {
        self.root.path().join("bin")
    }

    fn state(&self) -> PathBuf {
        self.root.path().join("var/install.json")
    }

    fn opts(&self, config: &str) -> InstallOptions {
        InstallOptions {
            config: Some(self.dir.join(config)),
            bin_dir: Some(self.bin()),
            shim: self.root.path().join("tools/containerd-shim-wasmbox-v1"),
            containerd: self.root.path().join("tools/containerd"),
            state: self.state(),
            restart: None,
            restart_timeout: Duration::from_secs(5),
            restart_context: Default::default(),
            dry_run: false,
        }
    }

    fn uopts(&self) -> UninstallOptions {
        UninstallOptions {
            config: None,
            containerd: self.root.path().join("tools/containerd"),
            state: self.state(),
            restart: None,
            restart_timeout: Duration::from_secs(5),
            restart_context: Default::default(),
            dry_run: false,
            force: false,
        }
    }

    /// Every file of the node (configuration, bin dir, state).
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for d in [self.dir.clone(), self.bin(), self.root.path().join("var")] {
            files_under(&d, &mut out);
        }
        out
    }
}

fn assert_same(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let keys = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(before), keys(after), "{what}: other files");
    for (path, bytes) in before {
        assert!(
            after[path] == *bytes,
            "{what}: {} differs:\n--- before\n{}\n--- after\n{}",
            path.display(),
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&after[path])
        );
    }
}

/// Whether the runtime is registered in `text` (a template: after its
/// first line), and in which form.
fn registered(text: &str, path: &Path) -> Option<Version> {
    let body = if text.starts_with("{{") { text.split_once('\n').map_or("", |(_, b)| b) } else { text };
    let doc = handler::parse(body, path).unwrap();
    [Version::V2, Version::V3].into_iter().find(|v| handler::find(doc.as_item(), *v) == Found::Ours)
}

/// Every line of `old` is in `new`, in order.
fn keeps_lines(old: &str, new: &str) -> bool {
    let mut rest = new.lines();
    old.lines().all(|l| rest.any(|n| n == l))
}

fn said(r: &Report) -> String {
    r.lines.join("\n")
}

/// Installs into `fixture`'s `config` on a node whose containerd is
/// `version`: the runtime lands in `lands_in` in form `form`, with a runc
/// of ours or not; installing again changes nothing; uninstalling restores
/// every file byte for byte.
fn round_trip(fixture: &str, config: &str, version: &str, lands_in: &str, form: Version, runc: bool) {
    let node = Node::new(Some(fixture), version);
    let before = node.snapshot();
    let target = node.dir.join(lands_in);
    let report = install(&node.opts(config)).unwrap_or_else(|e| panic!("{fixture}: {e}"));
    assert!(report.changed, "{fixture}: {}", said(&report));
    let text = std::fs::read_to_string(&target)
        .unwrap_or_else(|e| panic!("{fixture}: {}: {e}\n{}", target.display(), said(&report)));
    assert_eq!(registered(&text, &target), Some(form), "{fixture}: {}:\n{text}", target.display());
    assert_eq!(said(&report).contains("and runc"), runc, "{fixture}: runc?\n{}", said(&report));
    if let Some(old) = before.get(&target) {
        let old = String::from_utf8_lossy(old);
        assert!(keeps_lines(&old, &text), "{fixture}: lines of {} lost:\n{text}", target.display());
    }
    assert_eq!(std::fs::read(node.bin().join("containerd-shim-wasmbox-v1")).unwrap(), SHIM);
    let installed = node.snapshot();

    let again = install(&node.opts(config)).unwrap_or_else(|e| panic!("{fixture}, again: {e}"));
    assert!(!again.changed && said(&again).contains("already"), "{fixture}: {}", said(&again));
    assert_same(&installed, &node.snapshot(), &format!("{fixture} installed twice"));

    let undone = uninstall(&node.uopts()).unwrap_or_else(|e| panic!("{fixture}, uninstall: {e}"));
    assert!(undone.changed, "{fixture}: {}", said(&undone));
    assert_same(&before, &node.snapshot(), &format!("{fixture} uninstalled"));
    let nothing = uninstall(&node.uopts()).unwrap();
    assert!(!nothing.changed && said(&nothing).contains("nothing to undo"), "{}", said(&nothing));
}

#[test]
fn containerd_1_6_default() {
    round_trip("containerd-1.6.20", "config.toml", "1.6.20~ds1", "config.toml", Version::V2, false);
}

#[test]
fn containerd_1_7_default() {
    round_trip("containerd-1.7.24", "config.toml", "1.7.24~ds1", "config.toml", Version::V2, false);
}

#[test]
fn containerd_2_1_default() {
    round_trip("containerd-2.1.9", "config.toml", "2.1.9+unknown", "config.toml", Version::V3, false);
}

#[test]
fn debian_package_config_gets_runc_listed_too() {
    round_trip("debian-12-package", "config.toml", "1.6.20~ds1", "config.toml", Version::V2, true);
}

#[test]
fn a_commented_config_keeps_its_comments() {
    round_trip("commented-v2", "config.toml", "1.7.24~ds1", "config.toml", Version::V2, true);
    let node = Node::new(Some("commented-v2"), "1.7.24~ds1");
    install(&node.opts("config.toml")).unwrap();
    let text = std::fs::read_to_string(node.dir.join("config.toml")).unwrap();
    for comment in
        ["# Owned by the platform team", "# on the data disk", "# mirrored internally", "# Image pulls go through"]
    {
        assert!(text.contains(comment), "{comment:?} lost:\n{text}");
    }
}

#[test]
fn imports_on_containerd_1_get_a_drop_in_with_runc() {
    round_trip("imports-v2", "config.toml", "1.6.20~ds1", "conf.d/wasmbox.toml", Version::V2, true);
}

#[test]
fn imports_on_containerd_2_get_a_drop_in() {
    round_trip("imports-v2", "config.toml", "2.1.9+unknown", "conf.d/wasmbox.toml", Version::V2, false);
    round_trip("imports-v3", "config.toml", "2.1.9+unknown", "conf.d/wasmbox.toml", Version::V3, false);
}

#[test]
fn imports_on_containerd_1_where_the_main_file_configures_cri_edit_it() {
    round_trip("imports-v2-cri", "config.toml", "1.7.24~ds1", "config.toml", Version::V2, false);
    round_trip("imports-v2-cri", "config.toml", "2.1.9+unknown", "conf.d/wasmbox.toml", Version::V2, false);
}

#[test]
fn k3s_on_containerd_1_7_gets_a_template() {
    let dir = "agent/etc/containerd";
    round_trip(
        "k3s-containerd-1.7",
        &format!("{dir}/config.toml"),
        "1.7.24~ds1",
        &format!("{dir}/config.toml.tmpl"),
        Version::V2,
        false,
    );
    let node = Node::new(Some("k3s-containerd-1.7"), "1.7.24~ds1");
    install(&node.opts(&format!("{dir}/config.toml"))).unwrap();
    let text = std::fs::read_to_string(node.dir.join(dir).join("config.toml.tmpl")).unwrap();
    assert!(text.starts_with("{{ template \"base\" . }}\n"), "{text}");
}

#[test]
fn k3s_on_containerd_2_edits_the_users_template() {
    let dir = "agent/etc/containerd";
    round_trip(
        "k3s-containerd-2.0",
        &format!("{dir}/config.toml"),
        "2.1.9+unknown",
        &format!("{dir}/config-v3.toml.tmpl"),
        Version::V3,
        false,
    );
}

#[test]
fn rke2_gets_a_version_3_template() {
    let dir = "agent/etc/containerd";
    round_trip(
        "rke2",
        &format!("{dir}/config.toml"),
        "2.1.9+unknown",
        &format!("{dir}/config-v3.toml.tmpl"),
        Version::V3,
        false,
    );
}

#[test]
fn microk8s_template() {
    round_trip("microk8s", "containerd-template.toml", "1.7.24~ds1", "containerd-template.toml", Version::V2, false);
}

#[test]
fn k0s_gets_a_drop_in() {
    round_trip("k0s", "containerd.toml", "1.7.24~ds1", "containerd.d/wasmbox.toml", Version::V2, false);
}

#[test]
fn a_missing_config_is_created_in_containerds_form() {
    for (version, form, first) in
        [("1.6.20~ds1", Version::V2, "version = 2\n"), ("2.1.9+unknown", Version::V3, "version = 3\n")]
    {
        let node = Node::new(None, version);
        let report = install(&node.opts("config.toml")).unwrap();
        let text = std::fs::read_to_string(node.dir.join("config.toml")).unwrap();
        assert!(text.starts_with(first), "{text}");
        assert_eq!(registered(&text, Path::new("config.toml")), Some(form));
        assert_eq!(text.contains("runtimes.runc]"), form == Version::V2, "{text}");
        assert!(said(&report).contains("created"), "{}", said(&report));
        uninstall(&node.uopts()).unwrap();
        assert!(!node.dir.join("config.toml").exists() && node.snapshot().is_empty(), "{:?}", node.snapshot().keys());
    }
}

#[test]
fn refusals_name_the_file_and_change_nothing() {
    let cases = [
        ("refused", "unparsable.toml", &["unparsable.toml", "not valid TOML"][..]),
        (
            "refused",
            "conflict.toml",
            &["conflict.toml", "already has a runtime named \"wasmbox\"", "io.containerd.runc.v2"][..],
        ),
        ("refused", "version-1.toml", &["version-1.toml", "version-1 configuration"][..]),
        (
            "refused",
            "template/agent/etc/containerd/config.toml",
            &["config.toml.tmpl", "does not understand", "line 3"][..],
        ),
        ("refused-in-drop-in", "config.toml", &["50-wasm.toml", "io.containerd.spin.v2"][..]),
    ];
    for (fixture, config, needles) in cases {
        let node = Node::new(Some(fixture), "2.1.9+unknown");
        let before = node.snapshot();
        let err = install(&node.opts(config)).expect_err(config).to_string();
        for n in needles {
            assert!(err.contains(n), "{config}: {n:?} not in: {err}");
        }
        assert!(err.contains("nothing was changed"), "{err}");
        assert_same(&before, &node.snapshot(), config);
    }
}

#[test]
fn an_older_shim_is_replaced_atomically_and_put_back_on_uninstall() {
    use std::os::unix::fs::MetadataExt;
    let node = Node::new(Some("containerd-2.1.9"), "2.1.9+unknown");
    let shim = node.bin().join("containerd-shim-wasmbox-v1");
    let older = b"\x7fELF wasmbox shim, an older build\n";
    std::fs::write(&shim, older).unwrap();
    let before = node.snapshot();
    let inode = std::fs::metadata(&shim).unwrap().ino();
    let running = std::fs::File::open(&shim).unwrap();
    let report = install(&node.opts("config.toml")).unwrap();
    assert!(said(&report).contains("checked after copying"), "{}", said(&report));
    assert_eq!(std::fs::read(&shim).unwrap(), SHIM);
    assert_ne!(std::fs::metadata(&shim).unwrap().ino(), inode, "the shim was rewritten in place");
    // What a running shim has open is still the older program.
    use std::io::Read;
    let mut old = Vec::new();
    (&running).read_to_end(&mut old).unwrap();
    assert_eq!(old, older);
    uninstall(&node.uopts()).unwrap();
    assert_same(&before, &node.snapshot(), "uninstalled over an older shim");
}

#[test]
fn a_shim_that_was_there_already_is_left_there() {
    let node = Node::new(Some("containerd-2.1.9"), "2.1.9+unknown");
    let shim = node.bin().join("containerd-shim-wasmbox-v1");
    std::fs::write(&shim, SHIM).unwrap();
    let report = install(&node.opts("config.toml")).unwrap();
    assert!(said(&report).contains("is this shim already"), "{}", said(&report));
    uninstall(&node.uopts()).unwrap();
    assert_eq!(std::fs::read(&shim).unwrap(), SHIM);
}

#[test]
fn dry_run_shows_the_diff_and_changes_nothing() {
    let node = Node::new(Some("commented-v2"), "1.7.24~ds1");
    let before = node.snapshot();
    let report = install(&InstallOptions { dry_run: true, ..node.opts("config.toml") }).unwrap();
    let text = said(&report);
    assert!(text.contains("would write") && text.contains("would copy"), "{text}");
    let header = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmbox]";
    let added = |text: &str, line: &str| text.lines().any(|l| l.starts_with('+') && l[1..].trim() == line);
    assert!(added(&text, header), "{text}");
    assert!(added(&text, "runtime_type = \"io.containerd.wasmbox.v1\""), "{text}");
    assert!(text.contains("--- ") && text.contains("@@ -"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with('-') && !l.starts_with("---")), "a line would go:\n{text}");
    assert_same(&before, &node.snapshot(), "dry run");
    // Uninstall's dry run too.
    install(&node.opts("config.toml")).unwrap();
    let installed = node.snapshot();
    let report = uninstall(&UninstallOptions { dry_run: true, ..node.uopts() }).unwrap();
    assert!(said(&report).contains("would have restored"), "{}", said(&report));
    let gone = said(&report).lines().any(|l| l.starts_with('-') && l[1..].trim() == header);
    assert!(gone, "{}", said(&report));
    assert_same(&installed, &node.snapshot(), "uninstall's dry run");
}

#[test]
fn a_config_changed_after_the_install_keeps_the_change() {
    let node = Node::new(Some("containerd-1.7.24"), "1.7.24~ds1");
    let config = node.dir.join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    install(&node.opts("config.toml")).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += "\n# added by the admin after the install\n[proxy_plugins.stargz]\n  type = \"snapshot\"\n  address = \"/run/stargz.sock\"\n";
    std::fs::write(&config, &text).unwrap();
    let report = uninstall(&node.uopts()).unwrap();
    assert!(
        said(&report).contains("changed after the install") && said(&report).contains("kept at"),
        "{}",
        said(&report)
    );
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(now.contains("# added by the admin after the install") && registered(&now, &config).is_none(), "{now}");
    assert!(keeps_lines(&original, &now), "{now}");
}

#[test]
fn a_restart_still_owed_is_done_when_asked() {
    let node = Node::new(Some("containerd-2.1.9"), "2.1.9+unknown");
    let report = install(&node.opts("config.toml")).unwrap();
    assert!(said(&report).contains("restart it"), "{}", said(&report));
    // Nothing changes now, but containerd has not been restarted since.
    let err = install(&InstallOptions {
        restart: Some(Restart::Command("echo cannot >&2; exit 7".into())),
        ..node.opts("config.toml")
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("exit 7") && err.contains("cannot"), "{err}");
}

#[test]
fn the_shim_must_be_a_program() {
    let node = Node::new(Some("containerd-2.1.9"), "2.1.9+unknown");
    let before = node.snapshot();
    std::fs::write(node.root.path().join("tools/containerd-shim-wasmbox-v1"), "#!/bin/sh\n").unwrap();
    let err = install(&node.opts("config.toml")).unwrap_err().to_string();
    assert!(err.contains("containerd-shim-wasmbox-v1") && err.contains("not a program"), "{err}");
    assert_same(&before, &node.snapshot(), "refused shim");
}

#[test]
fn a_shim_that_runs_is_not_removed_unless_forced() {
    let node = Node::new(Some("containerd-2.1.9"), "2.1.9+unknown");
    // A real program stands in for the shim.
    let shim = node.root.path().join("tools/containerd-shim-wasmbox-v1");
    std::fs::copy("/bin/sleep", &shim).unwrap();
    install(&node.opts("config.toml")).unwrap();
    let installed = node.snapshot();
    let mut running =
        std::process::Command::new(node.bin().join("containerd-shim-wasmbox-v1")).arg("30").spawn().unwrap();
    let err = uninstall(&node.uopts()).unwrap_err().to_string();
    assert!(
        err.contains(&running.id().to_string()) && err.contains("--force") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_same(&installed, &node.snapshot(), "refused uninstall");
    let report = uninstall(&UninstallOptions { force: true, ..node.uopts() }).unwrap();
    assert!(said(&report).contains("cannot take their containers back"), "{}", said(&report));
    assert!(!node.bin().join("containerd-shim-wasmbox-v1").exists());
    let _ = running.kill();
    let _ = running.wait();
}
