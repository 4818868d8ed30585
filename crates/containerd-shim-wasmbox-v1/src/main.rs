//! containerd-shim-wasmbox-v1: see the `wasmbox-shim` crate.
fn main() {
    wasmbox_shim::main()
}
