//! wasmbox-node's integration tests: install and uninstall over real
//! configuration files of each layout (tests/fixtures).

mod layouts;
