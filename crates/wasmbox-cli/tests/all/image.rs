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
