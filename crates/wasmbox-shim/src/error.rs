//! The shim's errors and their one mapping to ttrpc status codes.

use containerd_shim::protos::ttrpc::{self, Code};
use wasmbox_instance::InstanceError;
use wasmbox_spec::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("container {id:?}: {reason}")]
    FailedPrecondition { id: String, reason: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("not supported by wasmbox: {0}")]
    Unimplemented(String),
    /// A failure reported by the core while preparing an instance.
    #[error("container {id:?}: {source}")]
    Instance {
        id: String,
        #[source]
        source: InstanceError,
    },
    /// The core refused the bundle (read by the shim itself).
    #[error("container {id:?}: {source}")]
    Core {
        id: String,
        #[source]
        source: wasmbox_spec::Error,
    },
    #[error("container {id:?}: {context}: {source}")]
    Io {
        id: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition { .. } => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Instance { source, .. } => kind_code(source.kind),
            ShimError::Core { source, .. } => kind_code(source.kind()),
            ShimError::Io { .. } => Code::INTERNAL,
        }
    }
}

fn kind_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::Unsupported => Code::UNIMPLEMENTED,
        ErrorKind::Internal => Code::INTERNAL,
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        log::warn!("{e}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_precise_code() {
        let inst = |kind| ShimError::Instance { id: "c".into(), source: InstanceError { kind, message: "m".into() } };
        let table = [
            (ShimError::NotFound("c".into()), Code::NOT_FOUND),
            (ShimError::AlreadyExists("c".into()), Code::ALREADY_EXISTS),
            (ShimError::FailedPrecondition { id: "c".into(), reason: "r".into() }, Code::FAILED_PRECONDITION),
            (ShimError::InvalidArgument("x".into()), Code::INVALID_ARGUMENT),
            (ShimError::Unimplemented("exec".into()), Code::UNIMPLEMENTED),
            (inst(ErrorKind::InvalidArgument), Code::INVALID_ARGUMENT),
            (inst(ErrorKind::NotFound), Code::NOT_FOUND),
            (inst(ErrorKind::Unsupported), Code::UNIMPLEMENTED),
            (inst(ErrorKind::Internal), Code::INTERNAL),
            (
                ShimError::Core {
                    id: "c".into(),
                    source: wasmbox_spec::Error::MountSourceMissing {
                        destination: "/d".into(),
                        source_path: "/s".into(),
                    },
                },
                Code::NOT_FOUND,
            ),
            (
                ShimError::Core { id: "c".into(), source: wasmbox_spec::Error::Unsupported("x".into()) },
                Code::UNIMPLEMENTED,
            ),
            (ShimError::Io { id: "c".into(), context: "x".into(), source: std::io::Error::other("e") }, Code::INTERNAL),
        ];
        for (err, code) in table {
            let msg = err.to_string();
            assert_eq!(err.code(), code, "{msg}");
            match ttrpc::Error::from(err) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code);
                    assert_eq!(s.message(), msg);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
