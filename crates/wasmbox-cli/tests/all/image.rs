use crate::{text, tmpdir, WASMBOX};
use std::process::Command;

#[test]
fn image_build_writes_an_oci_layout() {
    let d = tmpdir("image");
    let out = d.join("img.tar");
    let o = Command::new(WASMBOX)
        .args(["image", "build", "-t", "example.com/x/y:v2", "-o", out.to_str().unwrap(), test_guests::P1, "hello"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let listing = Command::new("tar").arg("tf").arg(&out).output().unwrap();
    let names = text(&listing.stdout);
    assert!(names.contains("oci-layout") && names.contains("index.json") && names.contains("blobs/sha256/"), "{names}");
    // Refuses a file that is not wasm, naming it.
    let bad = d.join("bad.wasm");
    std::fs::write(&bad, "nope").unwrap();
    let o = Command::new(WASMBOX)
        .args(["image", "build", "-t", "x:y", "-o"])
        .arg(d.join("b.tar"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o.stderr).contains("bad.wasm"));
}

#[test]
fn image_inspect_tells_layouts_apart_and_checks_digests() {
    let d = tmpdir("inspect");
    let wasmbox = |args: &[&str]| Command::new(WASMBOX).args(args).output().unwrap();
    let (rootfs, artifact) = (d.join("rootfs.tar"), d.join("artifact.tar"));
    let (r, a) = (rootfs.to_str().unwrap(), artifact.to_str().unwrap());
    assert!(wasmbox(&["image", "build", "-t", "x/p2:v1", "-o", r, test_guests::P2, "hello"]).status.success());
    let o = wasmbox(&["image", "inspect", r]);
    let t = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(t.contains("layout: rootfs image") && t.contains("component, wasi:cli/command"), "{t}");
    assert!(t.contains("imports (") && t.contains("wasi:cli/"), "{t}");
    let o = wasmbox(&["image", "build", "--artifact", "-t", "x/http:v1", "-o", a, test_guests::HTTP]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let t = text(&wasmbox(&["image", "inspect", a]).stdout);
    assert!(
        t.contains("OCI wasm artifact") && t.contains("wasi:http/proxy") && t.contains("platform wasip2/wasm"),
        "{t}"
    );
    assert!(t.contains("runs on wasmbox: once `wasmbox image pull`"), "{t}");
    let t = text(&wasmbox(&["image", "inspect", test_guests::P1]).stdout);
    assert!(t.contains("core module, WASI preview 1 command") && t.contains("greet"), "{t}");
    // WASI 0.3 components by what they export.
    let t = text(&wasmbox(&["image", "inspect", test_guests::P3_CLI]).stdout);
    assert!(t.contains("component, wasi:cli/command@0.3") && t.contains("exports (1): wasi:cli/run@0.3.0"), "{t}");
    let t = text(&wasmbox(&["image", "inspect", test_guests::P3_HTTP]).stdout);
    assert!(t.contains("component, wasi:http/service@0.3") && t.contains("wasi:http/handler@0.3.0"), "{t}");
    // An artifact holds the wasm alone.
    let o = wasmbox(&["image", "build", "--artifact", "-t", "x:y", "-o", a, test_guests::P1, "hello"]);
    assert!(!o.status.success() && text(&o.stderr).contains("--artifact"), "{}", text(&o.stderr));
    // A blob changed after the fact no longer matches its digest.
    let un = d.join("un");
    std::fs::create_dir_all(&un).unwrap();
    assert!(Command::new("tar").arg("xf").arg(&rootfs).arg("-C").arg(&un).status().unwrap().success());
    let wasm_len = std::fs::metadata(test_guests::P2).unwrap().len();
    let layer = std::fs::read_dir(un.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > wasm_len)
        .unwrap();
    let mut b = std::fs::read(&layer).unwrap();
    let n = b.len() / 2;
    b[n] ^= 1;
    std::fs::write(&layer, b).unwrap();
    let bad = d.join("bad.tar");
    assert!(Command::new("tar").arg("cf").arg(&bad).arg("-C").arg(&un).arg(".").status().unwrap().success());
    let o = wasmbox(&["image", "inspect", bad.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o.stderr).contains("does not match its digest"), "{}", text(&o.stderr));
}

#[test]
fn image_build_packages_a_spin_app() {
    let d = tmpdir("spin");
    let app = d.join("app");
    std::fs::create_dir_all(app.join("static/css")).unwrap();
    std::fs::copy(test_guests::SPIN_APP, app.join("sdk.wasm")).unwrap();
    std::fs::write(app.join("static/index.html"), "<h1>hi</h1>\n").unwrap();
    std::fs::write(app.join("static/css/site.css"), "h1 {}\n").unwrap();
    let manifest = "spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = \"sdk.wasm\"\nfiles = [\"static\"]\n";
    std::fs::write(app.join("spin.toml"), manifest).unwrap();
    let out = d.join("spin.tar");
    let build = |extra: &[&str], out: &std::path::Path| {
        Command::new(WASMBOX)
            .args(["image", "build", "-t", "example.com/spin/app:v1", "-o"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = build(&["--spin", app.join("spin.toml").to_str().unwrap(), "-e", "SPIN_VARIABLE_X=1"], &out);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let listed = text(&o.stdout);
    for f in ["/spin.toml", "/sdk.wasm", "/static/index.html", "/static/css/site.css"] {
        assert!(listed.contains(f), "{f} not packaged: {listed}");
    }
    // The layer holds them, and the image runs `/` with the variable.
    let inspect = Command::new(WASMBOX).args(["image", "inspect"]).arg(&out).output().unwrap();
    let t = text(&inspect.stdout);
    assert!(inspect.status.success() && t.contains("runs [\"/\"]"), "{t}{}", text(&inspect.stderr));
    assert!(t.contains("/spin.toml: Spin application \"a\", components: c"), "{t}");
    // A manifest we cannot honour, a symbolic link and a core module are
    // refused, naming them, and leave no output behind.
    std::fs::write(app.join("bad.toml"), manifest.replace("files = [\"static\"]", "key_value_stores = [\"default\"]"))
        .unwrap();
    let bad_out = d.join("bad.tar");
    let o = build(&["--spin", app.join("bad.toml").to_str().unwrap()], &bad_out);
    assert!(!o.status.success() && text(&o.stderr).contains("component.c.key_value_stores"), "{}", text(&o.stderr));
    assert!(!bad_out.exists(), "a refused build left {}", bad_out.display());
    std::os::unix::fs::symlink("/etc/passwd", app.join("static/passwd")).unwrap();
    let o = build(&["--spin", app.join("spin.toml").to_str().unwrap()], &bad_out);
    assert!(!o.status.success() && text(&o.stderr).contains("static/passwd"), "{}", text(&o.stderr));
    std::fs::remove_file(app.join("static/passwd")).unwrap();
    std::fs::copy(test_guests::P1, app.join("sdk.wasm")).unwrap();
    let o = build(&["--spin", app.join("spin.toml").to_str().unwrap()], &bad_out);
    assert!(!o.status.success() && text(&o.stderr).contains("core module"), "{}", text(&o.stderr));
}
