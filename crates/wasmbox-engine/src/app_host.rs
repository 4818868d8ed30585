//! The host interfaces a Spin application's components import, over the
//! component's resolved variables (see `wasmbox_spin::vars`):
//! `fermyon:spin/variables@2.0.0` (what spin-sdk's `variables::get`
//! calls) and `wasi:config/store` at `0.2.0-draft-2024-09-27` (Spin 3's)
//! and `0.2.0-rc.1` (wasmCloud's and `wasmtime-wasi-config`'s). The WIT of
//! each is written out below as its published package declares it.
//! wasmtime-wasi-config serves only `rc.1` (and from a map of its own), so
//! the three share one implementation here instead.

use crate::serve::HttpState;
use wasmtime::component::{HasSelf, Linker};

mod spin_variables {
    wasmtime::component::bindgen!({
        inline: "
            package fermyon:spin@2.0.0;
            interface variables {
                get: func(name: string) -> result<string, error>;
                variant error {
                    invalid-name(string),
                    undefined(string),
                    provider(string),
                    other(string),
                }
            }
            world host { import variables; }
        ",
    });
}

/// `wasi:config/store` at one version: its bindings and their
/// implementation over the component's variables.
macro_rules! config_store {
    ($module:ident, $wit:literal) => {
        mod $module {
            wasmtime::component::bindgen!({ inline: $wit });

            impl wasi::config::store::Host for crate::serve::HttpState {
                fn get(&mut self, key: String) -> Result<Option<String>, wasi::config::store::Error> {
                    Ok(self.variables.get(&key).map(|v| v.value.clone()))
                }

                fn get_all(&mut self) -> Result<Vec<(String, String)>, wasi::config::store::Error> {
                    Ok(self.variables.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect())
                }
            }
        }
    };
}

config_store!(
    config_draft,
    "package wasi:config@0.2.0-draft-2024-09-27;
    interface store {
        variant error { upstream(string), io(string) }
        get: func(key: string) -> result<option<string>, error>;
        get-all: func() -> result<list<tuple<string, string>>, error>;
    }
    world host { import store; }"
);
config_store!(
    config_rc1,
    "package wasi:config@0.2.0-rc.1;
    interface store {
        variant error { upstream(string), io(string) }
        get: func(key: string) -> result<option<string>, error>;
        get-all: func() -> result<list<tuple<string, string>>, error>;
    }
    world host { import store; }"
);

/// A variable name as Spin accepts one: lowercase letters, digits and
/// underscores, starting with a letter.
fn valid_name(name: &str) -> bool {
    let mut c = name.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase())
        && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
}

impl spin_variables::fermyon::spin::variables::Host for HttpState {
    fn get(&mut self, name: String) -> Result<String, spin_variables::fermyon::spin::variables::Error> {
        use spin_variables::fermyon::spin::variables::Error;
        if !valid_name(&name) {
            return Err(Error::InvalidName(format!(
                "{name:?}: a variable name is lowercase letters, digits and underscores, starting with a letter"
            )));
        }
        match self.variables.get(&name) {
            Some(v) => Ok(v.value.clone()),
            None => Err(Error::Undefined(format!("no variable {name:?} in this component's [component.ID.variables]"))),
        }
    }
}

/// Adds the interfaces above to a served app component's linker.
pub fn add_to_linker(linker: &mut Linker<HttpState>) -> wasmtime::Result<()> {
    spin_variables::fermyon::spin::variables::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    config_draft::wasi::config::store::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    config_rc1::wasi::config::store::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    Ok(())
}
