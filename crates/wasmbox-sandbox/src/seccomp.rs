//! The OCI spec's `linux.seccomp` profile, compiled with libseccomp and
//! loaded into the instance process before the guest runs, as runc loads it
//! before exec. Syscall names this libseccomp does not know are skipped, as
//! runc skips them (profiles list syscalls of newer kernels).

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};
use std::str::FromStr;
use wasmbox_spec::{Error, Result};

fn field(what: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument { what: format!("OCI spec field {what}"), reason: reason.into() }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, what: &str) -> Result<ScmpAction> {
    let eperm = libc::EPERM as u32;
    if errno.is_some_and(|e| e > u16::MAX as u32) {
        return Err(field(what, format!("errnoRet {} is above 65535", errno.unwrap_or(0))));
    }
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(eperm) as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(eperm) as u16),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Unsupported(format!(
                "OCI spec field {what}: SCMP_ACT_NOTIFY needs a seccomp agent, which wasmbox does not run"
            )))
        }
    })
}

fn op(o: LinuxSeccompOperator, value: u64) -> ScmpCompareOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI (as libseccomp-golang): value is the mask, valueTwo the datum.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value),
    }
}

/// Checks what can be checked without loading: the actions and the
/// architectures. Run at create time so a bad profile fails there.
pub fn check(s: &LinuxSeccomp) -> Result<()> {
    build(s).map(|_| ())
}

fn build(s: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let sc_err = |what: &str| {
        let what = what.to_string();
        move |e: libseccomp::error::SeccompError| field(&what, e.to_string())
    };
    let default = action(s.default_action(), s.default_errno_ret(), "linux.seccomp.defaultAction")?;
    let mut ctx = ScmpFilterContext::new(default).map_err(sc_err("linux.seccomp.defaultAction"))?;
    // We set no_new_privs ourselves when the spec asks; libseccomp would
    // set it always.
    ctx.set_ctl_nnp(false).map_err(sc_err("linux.seccomp"))?;
    for arch in s.architectures().iter().flatten() {
        let name = serde_json::to_value(arch).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let a = ScmpArch::from_str(&name).map_err(sc_err("linux.seccomp.architectures"))?;
        if !ctx.is_arch_present(a).unwrap_or(false) {
            ctx.add_arch(a).map_err(sc_err("linux.seccomp.architectures"))?;
        }
    }
    for flag in s.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                ctx.set_ctl_log(true).map_err(sc_err("linux.seccomp.flags"))?;
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                ctx.set_ctl_ssb(true).map_err(sc_err("linux.seccomp.flags"))?;
            }
            // Set below for every profile: all threads get the filter.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {}
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(Error::Unsupported(
                    "OCI spec field linux.seccomp.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs libseccomp 2.6"
                        .into(),
                ))
            }
        }
    }
    ctx.set_ctl_tsync(true).map_err(sc_err("linux.seccomp"))?;
    if s.syscalls().as_ref().map_or(0, |v| v.len()) > 32 {
        // A binary tree of rules, as runc asks for long profiles.
        let _ = ctx.set_ctl_optimize(2);
    }
    if s.listener_path().as_ref().is_some_and(|p| !p.as_os_str().is_empty()) {
        return Err(Error::Unsupported(
            "OCI spec field linux.seccomp.listenerPath: seccomp agents are not supported".into(),
        ));
    }
    for (i, rule) in s.syscalls().iter().flatten().enumerate() {
        let what = format!("linux.seccomp.syscalls[{i}]");
        let act = action(rule.action(), rule.errno_ret(), &what)?;
        if act == default {
            continue;
        }
        let args = rule.args().clone().unwrap_or_default();
        let conds: Vec<ScmpArgCompare> = args
            .iter()
            .map(|a| {
                ScmpArgCompare::new(
                    a.index() as u32,
                    op(a.op(), a.value()),
                    a.value_two().unwrap_or(if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                        0
                    } else {
                        a.value()
                    }),
                )
            })
            .collect();
        for a in &args {
            if a.index() > 5 {
                return Err(field(&what, format!("argument index {} (a syscall has 6)", a.index())));
            }
        }
        // Conditions on one argument listed twice are alternatives: one rule each (as runc).
        let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
        indexes.sort();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(sys) = ScmpSyscall::from_name(name) else {
                log::debug!("seccomp: skipping syscall {name:?}, unknown to libseccomp");
                continue;
            };
            let added = if conds.is_empty() {
                ctx.add_rule(act, sys)
            } else if repeated {
                conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, sys, std::slice::from_ref(c)).map(|_| ()))
                    .map(|_| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, sys, &conds)
            };
            added.map_err(sc_err(&format!("{what} ({name})")))?;
        }
    }
    Ok(ctx)
}

/// Compiles and loads the profile for this process (and, with
/// `SECCOMP_FILTER_FLAG_TSYNC`, all its threads).
pub fn load(s: &LinuxSeccomp) -> Result<()> {
    let ctx = build(s)?;
    ctx.load()
        .map_err(|e| Error::io("loading the seccomp profile (linux.seccomp)", std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn builds_a_default_style_profile() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "no_such_syscall_at_all"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }));
        check(&p).unwrap();
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(check(&p).unwrap_err().to_string().contains("SCMP_ACT_NOTIFY"));
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]}));
        assert!(check(&p).unwrap_err().to_string().contains("syscalls[0]"));
    }
}
